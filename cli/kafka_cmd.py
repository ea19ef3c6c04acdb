"""`saga kafka ...`: the local single-node broker and Kafka's own console tools."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import click

from messaging import client, local_broker, settings


def _fail(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group()
def kafka() -> None:
    """Run the local Kafka broker (or use KAFKA_BOOTSTRAP_SERVERS)."""


@kafka.command()
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for it.")
def start(timeout: float) -> None:
    """Fetch the jars (once), format storage (once), start the broker and wait for it."""
    try:
        local_broker.start(timeout=timeout, log=click.echo)
    except local_broker.BrokerError as exc:
        raise _fail(exc) from exc


@kafka.command()
def stop() -> None:
    """Stop the local broker cleanly; its data is kept."""
    if settings.external_bootstrap():
        raise click.ClickException(
            "KAFKA_BOOTSTRAP_SERVERS is set: not stopping an external cluster"
        )
    local_broker.stop(log=click.echo)


@kafka.command()
def status() -> None:
    """Say whether the broker runs and answers (exit 0 only if it answers)."""
    bootstrap = settings.bootstrap_servers()
    ok = local_broker.answers(bootstrap)
    answering = f"answering at {bootstrap}" if ok else f"NOT answering at {bootstrap}"
    if settings.external_bootstrap():
        click.echo(f"external cluster (KAFKA_BOOTSTRAP_SERVERS): {answering}")
    elif (pid := local_broker.running_pid()) is not None:
        hint = "" if ok else " (still starting? see `saga kafka logs`)"
        click.echo(f"local Kafka running (pid {pid}), {answering}{hint}")
    elif ok:
        click.echo(f"local Kafka not running, but another broker is {answering}")
    else:
        click.echo(f"local Kafka stopped (data in {local_broker.paths().data})")
    if not ok:
        sys.exit(1)


@kafka.command()
@click.option("-n", "--lines", default=50, show_default=True, help="How many lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
def logs(lines: int, follow: bool) -> None:
    """Print the local broker's log."""
    log_file = local_broker.paths().log
    if not log_file.exists():
        raise click.ClickException(f"no broker log yet at {log_file}")
    click.echo(local_broker.tail_log(lines))
    if follow:
        with log_file.open() as f:
            f.seek(0, os.SEEK_END)
            while True:
                line = f.readline()
                if line:
                    click.echo(line, nl=False)
                else:
                    time.sleep(0.3)


def _tool_needs_our_broker(name: str, args: tuple[str, ...]) -> bool:
    """Whether the tool will talk to the configured cluster (so it is probed first).

    Not for --help/--version, nor where the tool gets no --bootstrap-server from us
    (kafka-storage; one given explicitly may need a --command-config we cannot mirror).
    """
    asks_help = any(a in ("--help", "-h", "--version") for a in args)
    return not asks_help and local_broker.tool_uses_configured_cluster(name, args)


@kafka.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("name")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def tool(name: str, args: tuple[str, ...]) -> None:
    """Run a Kafka console tool from the same jars, e.g. `saga kafka tool kafka-topics --list`.

    --bootstrap-server is added unless given. Tools: kafka-topics, kafka-console-consumer,
    kafka-console-producer, kafka-consumer-groups, kafka-configs, kafka-get-offsets.
    """
    try:
        local_broker.check_tool(name)
        if _tool_needs_our_broker(name, args):
            # The Java tools retry an unreachable broker forever, printing WARN lines.
            client.require_broker()
        command = local_broker.tool_command(name, args)
    except (local_broker.BrokerError, client.ClientError) as exc:
        raise _fail(exc) from exc
    sys.stdout.flush()
    sys.exit(subprocess.call(command))
