"""`saga up`: the broker, the topics, the example catalog and all four workers."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
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
RESTART_WINDOW = 600.0  # seconds
# The page each worker's web view starts at (README "Web views").
VIEW_PATHS = {
    "orchestrator": "/sagas",
    "order": "/orders/<order id>",
    "product": "/stock",
    "payment": "/accounts/<customer>",
}


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


class StopRequested(Exception):
    """Ctrl-C or SIGTERM: stop every worker, whatever `saga up` is doing."""


def ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_on_signals() -> None:
    """The first Ctrl-C/SIGTERM interrupts start-up, the demo or the watch loop; more are
    ignored while the workers stop (stop() SIGKILLs any that hang)."""

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        ignore_stop_signals()
        raise StopRequested

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def seed_example_catalog(seed: bool | None) -> None:
    """Publish examples/catalog.yaml: always with --seed, never with --no-seed, and by
    default only on a broker whose stock topic was never written (a fresh system)."""
    if seed is None and not client.topic_is_empty(catalog.STOCK_TOPIC):
        click.echo("stock exists: example catalog not seeded (--seed publishes it anyway)")
        return
    if seed is False:
        return
    catalog.publish(catalog.load(catalog.EXAMPLE_CATALOG))
    click.echo(f"example catalog seeded from {catalog.EXAMPLE_CATALOG}")


def prepare_system(seed: bool | None) -> None:
    """The local broker (unless KAFKA_BOOTSTRAP_SERVERS names one), topics, the catalog."""
    try:
        local_broker.start(log=click.echo)
        report = topics.apply(topics.load())
        for line in report.drift:
            click.echo(f"topic drift: {line}", err=True)
        seed_example_catalog(seed)
    except (
        local_broker.BrokerError,
        topics.TopicsFileError,
        catalog.CatalogError,
        client.ClientError,
    ) as exc:
        raise click.ClickException(str(exc)) from exc


def watch(workers: Workers, clock: Callable[[], float] = time.monotonic) -> None:
    """Report and restart workers that die, until Ctrl-C; give up on a worker that dies
    more than MAX_RESTARTS times within RESTART_WINDOW seconds (it would only crash-loop)."""
    click.echo("running; Ctrl-C stops every worker")
    deaths: dict[str, list[float]] = {}
    while True:
        for worker in workers.dead():
            code = worker.process.returncode if worker.process else None
            click.echo(f"worker {worker.name} died (exit code {code})", err=True)
            now = clock()
            recent = [t for t in deaths.get(worker.name, []) if now - t < RESTART_WINDOW]
            deaths[worker.name] = [*recent, now]
            if len(recent) >= MAX_RESTARTS:
                raise RuntimeError(
                    f"worker {worker.name} died {len(recent) + 1} times in "
                    f"{RESTART_WINDOW / 60:.0f} minutes; giving up"
                )
            workers.restart(worker.name)
        time.sleep(0.5)


@click.command()
@click.option("--demo", is_flag=True, help="Place three sample orders and print their outcomes.")
@click.option(
    "--exit", "exit_after", is_flag=True,
    help="With --demo: stop everything after the demo; exit 1 if a sample order did not finish.",
)  # fmt: skip
@click.option(
    "--seed/--no-seed", default=None,
    help="Publish the example catalog (default: only when the stock topic is empty).",
)  # fmt: skip
@click.option("--loglevel", default="warning", show_default=True, help="Workers' log level.")
@click.option(
    "--web-port-base", type=click.IntRange(1024, 65000), default=6066, show_default=True,
    help="Web port of the orchestrator; order, product, payment use the next three.",
)  # fmt: skip
def up(demo: bool, exit_after: bool, seed: bool | None, loglevel: str, web_port_base: int) -> None:
    """Start the local broker if needed, apply topics, seed the example catalog, run the workers.

    Ctrl-C (or SIGTERM) stops every worker gracefully, also during start-up or the demo.
    A worker that dies is reported and restarted (up to 3 times in 10 minutes).
    """
    if exit_after and not demo:
        raise click.UsageError("--exit stops after the demo orders: use it with --demo")
    ports = {name: web_port_base + i for i, name in enumerate(SERVICE_NAMES)}
    workers = Workers(ports=ports, echo=click.echo, loglevel=loglevel)
    exit_code = 0
    stop_on_signals()  # from here on Ctrl-C stops cleanly, whatever is running
    try:
        prepare_system(seed)
        workers.start()
        click.echo("workers started; waiting until each is ready ...")
        workers.wait_ready()
        click.echo("workers ready; web views:")
        for name, path in VIEW_PATHS.items():
            click.echo(f"  {name:12} http://127.0.0.1:{ports[name]}{path}")
        if demo:
            outcomes = place_sample_orders()
            if len(outcomes) < len(SAMPLE_ORDERS):
                exit_code = 1
        if not exit_after:
            watch(workers)
    except StopRequested:
        click.echo("\nCtrl-C: stopping")
    except (TimeoutError, RuntimeError) as exc:
        exit_code = 1
        click.echo(str(exc), err=True)
    finally:
        ignore_stop_signals()
        if any(w.process for w in workers.workers.values()):
            click.echo("stopping workers ...")
            codes = workers.stop()
            click.echo("stopped: " + ", ".join(f"{n} (exit {c})" for n, c in codes.items()))
    sys.exit(exit_code)
