"""`saga up`: the broker, the topics, the example catalog and all four workers."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from types import FrameType

import click

from cli import demo
from cli.orders_cmd import describe
from messaging import catalog, client, exit_codes, local_broker, settings, topics, tracing
from messaging.local_workers import SERVICE_NAMES, Workers, parse_worker_counts
from schemas import messages as m

MAX_PORT = 65535
MAX_RESTARTS = 3
RESTART_WINDOW = 600.0  # seconds
# The page each worker's web view starts at (README "Web views").
VIEW_PATHS = {
    "orchestrator": "/sagas",
    "order": "/orders/<order id>",
    "product": "/stock",
    "payment": "/accounts/<customer>",
}


def place_sample_orders(samples: list[demo.Sample], timeout: float = 120.0) -> list[str]:
    """Place the sample orders, print their timelines and outcomes; return the problems
    (a sample that did not end as its label says)."""
    producer = client.producer()
    requests = [
        (sample, client.order_requested(sample.customer, sample.items)) for sample in samples
    ]
    for sample, request in requests:
        client.send(
            producer,
            client.REQUEST_TOPIC,
            request.order_id,
            request,
            headers=tracing.new_trace_headers(),
        )
        items = ", ".join(f"{p}:{q}" for p, q in sample.items)
        click.echo(
            f"placed {sample.label!r} sample order {request.order_id} ({sample.customer}: {items})"
        )
    client.flush(producer)
    since = min(r.requested_at for _, r in requests)
    finals: dict[str, m.SagaEvent] = {}
    for event in client.follow_sagas([r.order_id for _, r in requests], since, timeout):
        click.echo(f"{event.saga_id[:8]} {describe(event, since.timestamp())}")
        if event.terminal:
            finals[event.saga_id] = event
    click.echo("\noutcomes:")
    problems = []
    for sample, request in requests:
        final = finals.get(request.order_id)
        outcome = (
            "NOT FINISHED" if final is None
            else final.to_state + (f" ({final.reason})" if final.reason else "")
        )  # fmt: skip
        click.echo(f"  {sample.label:20} {request.order_id}  {outcome}")
        problem = demo.outcome_problem(sample, final)
        if problem is not None:
            problems.append(problem)
    return problems


def prepare_catalog(seed: bool | None, ports: dict[str, int]) -> tuple[demo.Stock, demo.Balances]:
    """Publish the example catalog: with --seed all of it, never with --no-seed, and by
    default its products and customers that do not exist yet (existing ones, whatever a
    user or the tests did to them, are left alone). Returns the catalog's rows as they
    will be once the seed is applied."""
    example = catalog.load(catalog.EXAMPLE_CATALOG)
    # The views show what the workers applied: first let them apply what was sent before
    # (a restock published just before the last stop is processed after this start).
    for worker, commands in (("product", "product.commands"), ("payment", "payment.commands")):
        if not client.wait_until_processed(settings.APP_IDS[worker], commands):
            click.echo(f"demo: the {worker} worker is still behind on {commands}; its view may lag")
    stock, balances = demo.read_state(
        ports["product"], ports["payment"],
        sorted({r.product_id for r in example.restocks} | demo.SAMPLE_PRODUCTS),
        sorted({t.customer_id for t in example.top_ups} | demo.SAMPLE_CUSTOMERS),
    )  # fmt: skip
    missing = demo.seed_plan(example, stock, balances)
    if seed is False:
        return stock, balances
    if seed:
        catalog.publish(example)
        click.echo(f"example catalog published from {catalog.EXAMPLE_CATALOG}")
    elif missing.restocks or missing.top_ups:
        catalog.publish(missing)
        names = [r.product_id for r in missing.restocks] + [t.customer_id for t in missing.top_ups]
        click.echo(f"example catalog seeded ({', '.join(names)}) from {catalog.EXAMPLE_CATALOG}")
    else:
        click.echo(
            f"example catalog present: its {len(example.restocks)} products and "
            f"{len(example.top_ups)} customers exist (--seed publishes it anyway)"
        )
    return demo.after_seeding(missing, stock, balances)


def run_demo(seed: bool | None, stock: demo.Stock, balances: demo.Balances) -> list[str]:
    """Top up what the approved sample needs (unless --no-seed), place the three samples."""
    plan = demo.plan_samples(
        catalog.load(catalog.EXAMPLE_CATALOG), stock, balances, top_up=seed is not False
    )
    for note in plan.notes:
        click.echo(f"demo: {note}")
    if plan.restocks or plan.top_ups:
        catalog.publish(catalog.Catalog(plan.restocks, plan.top_ups))
    return place_sample_orders(plan.samples)


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


SETUP_ERRORS = (
    local_broker.BrokerError,
    topics.TopicsFileError,
    catalog.CatalogError,
    client.ClientError,
    demo.ViewError,
)


def prepare_system() -> None:
    """The local broker (unless KAFKA_BOOTSTRAP_SERVERS names one) and the topics."""
    try:
        local_broker.start(log=click.echo)
        report = topics.apply(topics.load())
        for line in report.updated:
            click.echo(f"topic updated: {line}")
        for line in report.drift:
            click.echo(f"topic drift: {line}", err=True)
    except SETUP_ERRORS as exc:
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
            if code == exit_codes.STATE_REFUSED:
                raise RuntimeError(
                    f"worker {worker.name} refuses to run (its log says why: state it "
                    "cannot read, or topics the cluster lacks); restarting it cannot help"
                )
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


def _worker_counts(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, int]:
    try:
        return parse_worker_counts(values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def idle_workers(counts: dict[str, int]) -> list[str]:
    """A note for each service with more workers than partitions: the extra ones idle
    (they take over when a worker stops, without a start-up)."""
    notes = []
    for service, count in counts.items():
        partitions = min(topics.partitions(t) for t in settings.INPUT_TOPICS[service])
        if count > partitions:
            notes.append(
                f"{service}: {count} workers for {partitions} partitions; "
                f"{count - partitions} will idle until another stops"
            )
    return notes


@click.command()
@click.option(
    "--demo", "with_demo", is_flag=True,
    help="Place three sample orders and print their outcomes.",
)  # fmt: skip
@click.option(
    "--exit", "exit_after", is_flag=True,
    help="With --demo: stop everything after the demo; exit 1 if a sample order did not end "
    "as its label says.",
)  # fmt: skip
@click.option(
    "--seed/--no-seed", default=None,
    help="Publish the example catalog (default: its products and customers that do not exist).",
)  # fmt: skip
@click.option("--loglevel", default="warning", show_default=True, help="Workers' log level.")
@click.option(
    "--web-port-base", type=click.IntRange(1024, 65000), default=6066, show_default=True,
    help="Web port of the orchestrator; order, product, payment use the next three, "
    "their second workers the four after, and so on.",
)  # fmt: skip
@click.option(
    "--workers", "worker_counts", multiple=True, metavar="N|SERVICE=N",
    callback=_worker_counts,
    help="Workers per service: N of each, or SERVICE=N for one service; repeatable "
    "(--workers 2 --workers product=3). Default: 1 of each.",
)  # fmt: skip
def up(
    with_demo: bool,
    exit_after: bool,
    seed: bool | None,
    loglevel: str,
    web_port_base: int,
    worker_counts: dict[str, int],
) -> None:
    """Start the local broker if needed, apply topics, seed the example catalog, run the workers.

    Ctrl-C (or SIGTERM) stops every worker gracefully, also during start-up or the demo.
    A worker that dies is reported and restarted (up to 3 times in 10 minutes).
    """
    if exit_after and not with_demo:
        raise click.UsageError("--exit stops after the demo orders: use it with --demo")
    last_port = web_port_base + len(SERVICE_NAMES) * max(worker_counts.values()) - 1
    if last_port > MAX_PORT:
        raise click.BadParameter(
            f"the last worker's web port would be {last_port}, above {MAX_PORT}: "
            "a lower --web-port-base or fewer workers",
            param_hint="--workers",
        )
    ports = {name: web_port_base + i for i, name in enumerate(SERVICE_NAMES)}
    workers = Workers(counts=worker_counts, ports=ports, echo=click.echo, loglevel=loglevel)
    exit_code = 0
    stop_on_signals()  # from here on Ctrl-C stops cleanly, whatever is running
    try:
        prepare_system()
        for note in idle_workers(worker_counts):
            click.echo(f"note: {note}")
        workers.start()
        click.echo("workers started; waiting until each is ready ...")
        workers.wait_ready()
        click.echo("workers ready; web views:")
        for worker in workers.workers.values():
            click.echo(
                f"  {worker.name:{workers.name_width}} {worker.url}{VIEW_PATHS[worker.service]}"
            )
        try:
            stock, balances = prepare_catalog(seed, ports)
            problems = run_demo(seed, stock, balances) if with_demo else []
        except SETUP_ERRORS as exc:
            raise RuntimeError(str(exc)) from exc
        for problem in problems:
            click.echo(f"demo: {problem}", err=True)
        if problems:
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
