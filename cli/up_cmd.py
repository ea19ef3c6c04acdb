"""`saga up`: the broker, the topics, the example catalog and all four workers."""

from __future__ import annotations

import signal
import sys
import time
from types import FrameType

import click

from cli.orders_cmd import describe
from cli.processes import SERVICE_NAMES, Workers
from messaging import catalog, client, local_broker, topics

# (what it shows, customer, items) against examples/catalog.yaml
SAMPLE_ORDERS = [
    ("approved", "alice", [("widget", 1), ("gizmo", 2)]),
    ("out of stock", "bob", [("rare-gem", 2)]),
    ("insufficient funds", "carol", [("widget", 1)]),
]
MAX_RESTARTS = 3


def place_sample_orders(timeout: float = 120.0) -> dict[str, str]:
    """Place the three sample orders and print their timelines; return order id -> outcome."""
    producer = client.producer()
    requests = [
        (label, client.order_requested(customer, items)) for label, customer, items in SAMPLE_ORDERS
    ]
    for label, request in requests:
        client.send(producer, client.REQUEST_TOPIC, request.order_id, request)
        click.echo(f"placed {label!r} sample order {request.order_id} ({request.customer_id})")
    client.flush(producer)
    since = min(r.requested_at for _, r in requests)
    outcomes: dict[str, str] = {}
    for event in client.follow_sagas([r.order_id for _, r in requests], since, timeout):
        click.echo(f"{event.saga_id[:8]} {describe(event, since.timestamp())}")
        if event.terminal:
            outcomes[event.saga_id] = event.to_state + (
                f" ({event.reason})" if event.reason else ""
            )
    click.echo("\noutcomes:")
    for label, request in requests:
        click.echo(
            f"  {label:20} {request.order_id}  {outcomes.get(request.order_id, 'NOT FINISHED')}"
        )
    return outcomes


@click.command()
@click.option("--demo", is_flag=True, help="Place three sample orders and print their outcomes.")
@click.option("--exit", "exit_after", is_flag=True, help="Stop everything after the demo orders.")
@click.option("--seed/--no-seed", default=True, show_default=True, help="Seed the example catalog.")
@click.option("--loglevel", default="warning", show_default=True, help="Workers' log level.")
@click.option(
    "--web-port-base", type=click.IntRange(1024, 65000), default=6066, show_default=True,
    help="Web port of the orchestrator; order, product, payment use the next three.",
)  # fmt: skip
def up(demo: bool, exit_after: bool, seed: bool, loglevel: str, web_port_base: int) -> None:
    """Start the local broker if needed, apply topics, seed the example catalog, run the workers.

    Ctrl-C (or SIGTERM) stops every worker gracefully. A worker that dies is reported and
    restarted (at most 3 times).
    """
    try:
        local_broker.start(log=click.echo)
        report = topics.apply(topics.load())
        for line in report.drift:
            click.echo(f"topic drift: {line}", err=True)
        if seed:
            catalog.publish(catalog.load(catalog.EXAMPLE_CATALOG))
            click.echo(f"example catalog seeded from {catalog.EXAMPLE_CATALOG} (idempotent)")
    except (
        local_broker.BrokerError,
        topics.TopicsFileError,
        catalog.CatalogError,
        client.ClientError,
    ) as exc:
        raise click.ClickException(str(exc)) from exc

    ports = {name: web_port_base + i for i, name in enumerate(SERVICE_NAMES)}
    workers = Workers(ports=ports, echo=click.echo, loglevel=loglevel)
    stopping = False

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    workers.start()
    exit_code = 0
    try:
        workers.wait_ready()
        urls = ", ".join(
            f"{w.name} http://127.0.0.1:{w.web_port}/" for w in workers.workers.values()
        )
        click.echo(f"workers ready: {urls}")
        if demo:
            outcomes = place_sample_orders()
            if len(outcomes) < len(SAMPLE_ORDERS):
                exit_code = 1
            if exit_after:
                return
        click.echo("running; Ctrl-C stops every worker")
        while not stopping:
            for worker in workers.dead():
                code = worker.process.returncode if worker.process else None
                click.echo(f"worker {worker.name} died (exit code {code})", err=True)
                if worker.restarts >= MAX_RESTARTS:
                    raise click.ClickException(f"worker {worker.name} keeps dying; giving up")
                workers.restart(worker.name)
            time.sleep(0.5)
    except (TimeoutError, RuntimeError) as exc:
        exit_code = 1
        click.echo(str(exc), err=True)
    finally:
        click.echo("stopping workers ...")
        codes = workers.stop()
        click.echo("stopped: " + ", ".join(f"{n} (exit {c})" for n, c in codes.items()))
    sys.exit(exit_code)
