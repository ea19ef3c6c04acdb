"""`saga order`, `saga seed`, `saga status`: what a user of the saga does."""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import click

from messaging import catalog, client
from messaging.jsonable import to_jsonable
from schemas import messages as m

EXIT_REJECTED = 3
EXIT_TIMED_OUT = 4
MAX_QUANTITY = 1_000_000  # far below Avro's long range; an order of more is a typo


def parse_item(value: str) -> tuple[str, int]:
    product, sep, quantity = value.rpartition(":")
    if not sep or not product:
        raise click.BadParameter(f"{value!r} is not PRODUCT:QTY (e.g. widget:2)")
    try:
        count = int(quantity)
    except ValueError:
        raise click.BadParameter(
            f"quantity {quantity!r} of {product!r} is not a whole number"
        ) from None
    if not 1 <= count <= MAX_QUANTITY:
        raise click.BadParameter(
            f"quantity of {product!r} must be at least 1 and at most {MAX_QUANTITY}, got {count}"
        )
    return product, count


def _items(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, int]]:
    return [parse_item(v) for v in values]


def describe(event: m.SagaEvent, started: float) -> str:
    offset = event.at.timestamp() - started
    sent = f"  -> {', '.join(event.commands)}" if event.commands else ""
    reason = f"  ({event.reason})" if event.reason else ""
    states = f"{event.from_state or 'START':20} => {event.to_state:20}"
    return f"  +{offset:7.3f}s  {states} on {event.trigger}{sent}{reason}"


@click.command()
@click.option("--customer", required=True, help="Customer id (must have an account).")
@click.option(
    "--item", "items", multiple=True, required=True, callback=_items,
    help="PRODUCT:QTY; repeat for several items.",
)  # fmt: skip
@click.option("--order-id", default=None, help="Order id (= saga id); a new UUID by default.")
@click.option("--wait", is_flag=True, help="Follow the saga until it ends; exit 0 if approved.")
@click.option(
    "--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait with --wait.",
)  # fmt: skip
def order(
    customer: str, items: list[tuple[str, int]], order_id: str | None, wait: bool, timeout: float
) -> None:
    """Request an order: produce an OrderRequested event to orders.requested.

    With --wait, print the saga's timeline; exit 0 when approved, 3 when rejected,
    4 when it did not finish within --timeout.
    """
    if not customer.strip():
        raise click.BadParameter("must not be empty", param_hint="--customer")
    if order_id is not None and not order_id.strip():
        raise click.BadParameter("must not be empty", param_hint="--order-id")
    deadline = time.monotonic() + timeout  # --timeout counts from the request on
    try:
        client.require_broker()
        # A second request for an order id starts no saga: follow the first one instead.
        earlier = client.saga_events(order_id) if wait and order_id is not None else []
        request = client.order_requested(customer, items, order_id)
        producer = client.producer()
        client.send(producer, client.REQUEST_TOPIC, request.order_id, request)
        client.flush(producer)
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"order {request.order_id} requested")
    if not wait:
        return
    since = request.requested_at
    if earlier:
        since = earlier[0].at
        click.echo(f"order {request.order_id} already has a saga; a second request starts none")
    started = since.timestamp()
    final = None
    for event in client.follow_sagas([request.order_id], since, deadline - time.monotonic()):
        click.echo(describe(event, started))
        if event.terminal:
            final = event
    if final is None:
        click.echo(f"saga {request.order_id} not finished after {timeout:g}s", err=True)
        sys.exit(EXIT_TIMED_OUT)
    click.echo(f"{final.to_state}" + (f": {final.reason}" if final.reason else ""))
    if final.to_state != "ORDER_APPROVED":
        sys.exit(EXIT_REJECTED)


@click.command()
@click.argument(
    "file", type=click.Path(path_type=Path, dir_okay=False), default=str(catalog.EXAMPLE_CATALOG)
)
def seed(file: Path) -> None:
    """Publish Restock and TopUp messages for the products and customers of FILE (YAML).

    Idempotent: seeding the same file again changes nothing.
    """
    try:
        parsed = catalog.load(file)
        client.require_broker()
        catalog.publish(parsed)
    except (catalog.CatalogError, client.ClientError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"seeded {len(parsed.restocks)} product(s), {len(parsed.top_ups)} customer(s) from {file}"
    )


@click.command()
@click.argument("saga_id")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON lines.")
def status(saga_id: str, as_json: bool) -> None:
    """Show one saga: its timeline from saga.events and its current state."""
    from datetime import UTC, datetime

    try:
        client.require_broker()
        events = client.saga_events(saga_id)
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    if not events:
        raise click.ClickException(f"no saga {saga_id!r} in saga.events")
    if as_json:
        for event in events:
            click.echo(json.dumps(to_jsonable(event)))
        return
    first = events[0]
    click.echo(f"saga {saga_id}: {events[-1].to_state}")
    for event in events:
        click.echo(describe(event, first.at.timestamp()))
    if not events[-1].terminal:
        age = datetime.now(UTC) - events[-1].at
        click.echo(
            f"  (waiting for {events[-1].step}, last change {age / timedelta(seconds=1):.1f}s ago)"
        )
