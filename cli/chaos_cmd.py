"""`saga chaos`: orders and cancels under crashes, broker restarts or kills and bad
input; invariants checked.

The run gets a broker (or with --brokers 3 a cluster) and workers of its own
(SAGA_HOME=--home, SAGA_KAFKA_PORT=--port, web ports from --web-port-base): it wipes and
restarts them, so it must never touch the ones used for development or tests. Settings
read those variables when imported, so the command re-executes itself once with them set.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from chaos.plan import DEFAULT_CANCEL_SHARE
from messaging import local_broker, settings

DEFAULT_HOME = settings.PROJECT_ROOT / ".local" / "chaos"
DEFAULT_PORT = 19092  # its controller listens on 19093; a cluster's nodes take 19092-19097


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def share_jars(target_home: Path) -> None:
    """Reuse the Kafka jars already fetched for the usual home instead of running Maven."""
    source = local_broker.paths()
    target = local_broker.Paths(target_home / "kafka")
    if not source.lib_stamp.exists():
        return  # nothing to share: the run fetches them itself
    stamp = source.lib_stamp.read_text()
    if target.lib_stamp.exists() and target.lib_stamp.read_text() == stamp:
        return
    shutil.rmtree(target.lib, ignore_errors=True)
    target.home.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source.lib, target.lib, copy_function=_link_or_copy)


def isolate(home: Path, port: int) -> None:
    """Re-execute this command with SAGA_HOME / SAGA_KAFKA_PORT of the run (once)."""
    if settings.local_home() == home and port == settings.LOCAL_BROKER_PORT:
        return
    if home == (settings.PROJECT_ROOT / ".local").resolve():
        raise click.ClickException(f"--home must not be the usual home {home}")
    share_jars(home)
    env = {**os.environ, "SAGA_HOME": str(home), "SAGA_KAFKA_PORT": str(port)}
    os.execve(sys.executable, [sys.executable, "-m", "cli.main", *sys.argv[1:]], env)


@click.command()
@click.option("--orders", default=2000, show_default=True, help="Order requests to place.")
@click.option("--seed", type=int, default=None, help="Seed of the plan (random by default).")
@click.option("--kills", default=3, show_default=True, help="SIGKILL + restart per worker.")
@click.option("--terms", default=1, show_default=True, help="SIGTERM + restart per worker.")
@click.option("--rate", default=40.0, show_default=True, help="Orders placed per second.")
@click.option("--bad", type=int, default=None, help="Bad records to inject (default scaled).")
@click.option(
    "--broker-restart/--no-broker-restart", default=True, show_default=True,
    help="Stop and start the broker once (skipped with KAFKA_BOOTSTRAP_SERVERS).",
)  # fmt: skip
@click.option("--settle-timeout", default=600.0, show_default=True, help="Seconds to wait.")
@click.option(
    "--home", type=click.Path(path_type=Path), default=DEFAULT_HOME, show_default=True,
    help="SAGA_HOME of the run: its broker data, worker state and logs (wiped).",
)  # fmt: skip
@click.option(
    "--port", default=DEFAULT_PORT, show_default=True,
    help="Its broker's port (a cluster's nodes take this one and the next five).",
)  # fmt: skip
@click.option("--web-port-base", default=7066, show_default=True, help="Workers' web ports.")
@click.option("--keep-broker", is_flag=True, help="Leave the run's broker running.")
@click.option("--loglevel", default="warning", show_default=True, help="Workers' log level.")
@click.option(
    "--scale-to", type=click.IntRange(min=1), default=1, show_default=True,
    help="Workers per service at the peak: more are added while orders flow, then the "
    "extra ones stopped (the first of them by SIGTERM, the next by SIGKILL, ...).",
)  # fmt: skip
@click.option(
    "--watch-views", is_flag=True,
    help="Look up keys that exist on the workers' web views all along; a lookup without "
    "its row (after retrying 503s for 60 s) fails the run.",
)  # fmt: skip
@click.option(
    "--cancel-share", type=click.FloatRange(0.0, 1.0), default=DEFAULT_CANCEL_SHARE,
    show_default=True,
    help="Cancel requests per order: of approved orders, of orders still in flight, of "
    "rejected orders, of ids nobody ordered, second cancels of one order.",
)  # fmt: skip
@click.option(
    "--brokers", type=int, default=1, show_default=True,
    help="1: one broker, stopped and started once; 3: a local three-broker cluster "
    "(replication 3, min ISR 2) whose busiest saga.replies leader and later active "
    "controller are killed and restarted.",
)  # fmt: skip
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), default=None,
    help="Also write the result as JSON to this file.",
)  # fmt: skip
def chaos(
    orders: int,
    seed: int | None,
    kills: int,
    terms: int,
    rate: float,
    bad: int | None,
    broker_restart: bool,
    settle_timeout: float,
    home: Path,
    port: int,
    web_port_base: int,
    keep_broker: bool,
    loglevel: str,
    scale_to: int,
    watch_views: bool,
    cancel_share: float,
    brokers: int,
    json_path: Path | None,
) -> None:
    """Place ORDERS mixed orders and cancels of some of them while workers crash, the
    broker restarts (or, on three brokers, nodes are killed) and duplicate and bad
    records arrive; check every invariant and print what was injected and found.

    Exits 1 on FAIL. Worker output goes to HOME/workers.log.
    """
    try:
        local_broker.check_broker_count(brokers)
    except local_broker.BrokerError as exc:
        raise click.UsageError(str(exc)) from exc
    isolate(home.resolve(), port)
    from chaos import report as chaos_report
    from chaos.run import Options, run

    options = Options(
        orders=orders,
        seed=seed,
        kills=kills,
        terms=terms,
        broker_restart=broker_restart,
        rate=rate,
        bad=bad,
        web_port_base=web_port_base,
        settle_timeout=settle_timeout,
        keep_broker=keep_broker,
        loglevel=loglevel,
        scale_to=scale_to,
        watch_views=watch_views,
        cancel_share=cancel_share,
        brokers=brokers,
    )
    try:
        result = run(options, log=click.echo)
    except (local_broker.BrokerError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(chaos_report.render(result))
    if json_path is not None:
        json_path.write_text(json.dumps(result.summary(), indent=2) + "\n")
    sys.exit(0 if result.passed else 1)
