"""`saga order`, `saga cancel`, `saga seed`, `saga status`: what a user of the sagas does."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from messaging import catalog, client, settings, tracing
from messaging.jsonable import to_jsonable
from schemas import limits
from schemas import messages as m

EXIT_REJECTED = 3
EXIT_TIMED_OUT = 4
EXIT_NO_ORCHESTRATOR = 5
START_WORKERS = "start the workers with `saga up`"


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
    if not 1 <= count <= limits.MAX_QUANTITY:
        raise click.BadParameter(
            f"quantity of {product!r} must be at least 1 and at most {limits.MAX_QUANTITY}, "
            f"got {count}"
        )
    return product, count


def _items(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, int]]:
    return [parse_item(v) for v in values]


def stopped_workers(step: str | None = None, saga: str | None = None) -> list[str]:
    """The workers a saga needs that run nowhere (their consumer group has no members):
    the orchestrator, and the participant whose reply the saga waits for at `step`."""
    from orchestrator.sagas import saga_named

    needed = ["orchestrator"]
    saga_type = saga_named(saga)
    awaited = saga_type.latest.step(step) if step and saga_type else None
    if awaited is not None:
        needed.append(str(awaited.participant))
    return [name for name in needed if client.group_members(settings.APP_IDS[name]) == 0]


def not_running(names: list[str]) -> str:
    workers = [name if name == "orchestrator" else f"{name} worker" for name in names]
    return f"no {' and no '.join(workers)} is running"


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
@click.option(
    "--keep-waiting", is_flag=True,
    help="With --wait: wait even when no orchestrator is running (for one about to start).",
)  # fmt: skip
def order(
    customer: str,
    items: list[tuple[str, int]],
    order_id: str | None,
    wait: bool,
    timeout: float,
    keep_waiting: bool,
) -> None:
    """Request an order: produce an OrderRequested event to orders.requested.

    With --wait, print the saga's timeline; exit 0 when approved, 3 when rejected,
    4 when it did not finish within --timeout, 5 at once when no orchestrator is running
    (unless --keep-waiting).
    """
    for name, value in (("--customer", customer), ("--order-id", order_id)):
        if value is None:
            continue
        problem = limits.id_problem("the id", value) if value.strip() else "must not be empty"
        if problem is not None:
            raise click.BadParameter(problem, param_hint=name)
    if len(items) > limits.MAX_ORDER_LINES:
        raise click.BadParameter(
            f"{len(items)} items, at most {limits.MAX_ORDER_LINES}", param_hint="--item"
        )
    request = client.order_requested(customer, items, order_id)
    problems = limits.items_problems(request.items)
    if problems:
        raise click.BadParameter("; ".join(problems), param_hint="--item")
    deadline = time.monotonic() + timeout  # --timeout counts from the request on
    try:
        client.require_broker()
        # A second request for an order id starts no saga: follow the first one instead,
        # unless that one ended more than the retention ago: it expired, and this request
        # starts a new saga (orchestrator/engine/retention.py).
        earlier = client.saga_events(order_id) if wait and order_id is not None else []
        if earlier and expired(earlier):
            earlier = []
        producer = client.producer()
        # A new trace: the saga's records all carry it (messaging/tracing.py).
        client.send(
            producer,
            client.REQUEST_TOPIC,
            request.order_id,
            request,
            headers=tracing.new_trace_headers(),
        )
        client.flush(producer)
        stopped = stopped_workers() if wait else []
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"order {request.order_id} requested")
    if not wait:
        return
    since = request.requested_at
    if earlier:
        since = earlier[0].at
        click.echo(f"order {request.order_id} already has a saga; a second request starts none")
    follow(request.order_id, since, deadline, timeout, stopped, keep_waiting, "ORDER_APPROVED")


def expired(events: list[m.SagaEvent]) -> bool:
    """Did the saga of `events` end more than the retention (SAGA_RETENTION, else 7 days)
    ago, so that the orchestrator forgot it?"""
    from orchestrator.engine.retention import RetentionError, configured_retention

    try:
        retention = configured_retention()
    except RetentionError as exc:
        raise click.ClickException(str(exc)) from exc
    ends = [event.at for event in events if event.terminal]
    return bool(ends) and max(ends) + retention < datetime.now(UTC)


def follow(
    saga_id: str,
    since: datetime,
    deadline: float,
    timeout: float,
    stopped: list[str],
    keep_waiting: bool,
    succeeded: str,
) -> None:
    """Print the saga's timeline until it ends; exit 0 if it ends in `succeeded`, 3 if in
    another terminal state, 4 if not in time, 5 at once when no orchestrator runs."""
    if stopped:
        click.echo(
            f"{not_running(stopped)}: {START_WORKERS} (the request waits in "
            f"{client.REQUEST_TOPIC} until one does)",
            err=True,
        )
        if not keep_waiting:
            sys.exit(EXIT_NO_ORCHESTRATOR)
    started = since.timestamp()
    final = last = None
    for event in client.follow_sagas([saga_id], since, deadline - time.monotonic()):
        click.echo(describe(event, started))
        last = event
        if event.terminal:
            final = event
    if final is None:
        click.echo(f"saga {saga_id} not finished after {timeout:g}s", err=True)
        stopped = stopped_workers(last.step, last.saga) if last else stopped_workers()
        if stopped:
            click.echo(f"{not_running(stopped)}: {START_WORKERS}", err=True)
        sys.exit(EXIT_TIMED_OUT)
    click.echo(f"{final.to_state}" + (f": {final.reason}" if final.reason else ""))
    if final.to_state != succeeded:
        sys.exit(EXIT_REJECTED)


@click.command()
@click.argument("order_id")
@click.option("--cancel-id", default=None, help="Cancel id (= saga id); a new UUID by default.")
@click.option("--wait", is_flag=True, help="Follow the cancel until it ends; exit 0 if cancelled.")
@click.option(
    "--timeout", default=120.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait with --wait.",
)  # fmt: skip
@click.option(
    "--keep-waiting", is_flag=True,
    help="With --wait: wait even when no orchestrator is running (for one about to start).",
)  # fmt: skip
def cancel(
    order_id: str, cancel_id: str | None, wait: bool, timeout: float, keep_waiting: bool
) -> None:
    """Cancel an approved order: produce a CancelOrderRequested to orders.requested, which
    starts a CancelOrderSaga of its own (refund, return the products, cancel the order).

    With --wait, print the saga's timeline; exit 0 when the order is cancelled, 3 when the
    cancel is rejected (e.g. the order is not approved yet), 4 when it did not finish
    within --timeout, 5 at once when no orchestrator is running (unless --keep-waiting).
    """
    for name, value in (("ORDER_ID", order_id), ("--cancel-id", cancel_id)):
        if value is None:
            continue
        problem = limits.id_problem("the id", value) if value.strip() else "must not be empty"
        if problem is not None:
            raise click.BadParameter(problem, param_hint=name)
    request = client.cancel_requested(order_id, cancel_id)
    deadline = time.monotonic() + timeout
    try:
        client.require_broker()
        producer = client.producer()
        client.send(
            producer,
            client.REQUEST_TOPIC,
            request.cancel_id,
            request,
            headers=tracing.new_trace_headers(),  # the cancel saga's own trace
        )
        client.flush(producer)
        stopped = stopped_workers() if wait else []
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"cancel {request.cancel_id} of order {order_id} requested")
    if wait:
        follow(
            request.cancel_id,
            request.requested_at,
            deadline,
            timeout,
            stopped,
            keep_waiting,
            "ORDER_CANCELLED",
        )


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
    """Show one saga: its timeline from saga.events, its current state and its trace."""
    from datetime import UTC

    try:
        client.require_broker()
        traced = client.traced_saga_events(saga_id)
        events = [event for event, _trace in traced]
        stopped = stopped_workers(events[-1].step, events[-1].saga) if events else stopped_workers()
        if events and events[-1].terminal:
            stopped = []
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    if not events:
        hint = f" ({not_running(stopped)}: {START_WORKERS})" if stopped else ""
        raise click.ClickException(f"no saga {saga_id!r} in saga.events{hint}")
    if as_json:
        for event, trace in traced:
            click.echo(json.dumps({**to_jsonable(event), "trace_id": trace}))
        return
    first = events[0]
    click.echo(f"saga {saga_id}: {events[-1].to_state}")
    for event in events:
        click.echo(describe(event, first.at.timestamp()))
    # One trace per saga; an id used again after its saga expired is a saga, and a
    # trace, of its own.
    traces = list(dict.fromkeys(trace for _event, trace in traced if trace is not None))
    click.echo(f"  trace {', '.join(traces)}" if traces else "  trace: none recorded")
    if not events[-1].terminal:
        age = datetime.now(UTC) - events[-1].at
        click.echo(
            f"  (waiting for {events[-1].step}, last change {age / timedelta(seconds=1):.1f}s ago)"
        )
        if stopped:
            click.echo(f"  {not_running(stopped)}: {START_WORKERS}")
