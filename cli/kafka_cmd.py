"""`saga kafka ...`: the local broker (or three-node cluster) and Kafka's own console tools."""

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
    """Run the local Kafka broker or cluster (or use KAFKA_BOOTSTRAP_SERVERS)."""


def _broker_count(_ctx: click.Context, _param: click.Parameter, value: int | None) -> int | None:
    if value is not None:
        try:
            local_broker.check_broker_count(value)
        except local_broker.BrokerError as exc:
            raise click.BadParameter(str(exc).partition(": ")[2]) from exc
    return value


@kafka.command()
@click.option(
    "--brokers", type=int, default=None, callback=_broker_count,
    help="1 (one broker) or 3 (a replicated cluster). Default: the cluster if one is "
    "started here, else one broker.",
)  # fmt: skip
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for it.")
def start(brokers: int | None, timeout: float) -> None:
    """Fetch the jars (once), format storage (once), start the broker(s) and wait for them."""
    try:
        local_broker.start(brokers, timeout=timeout, log=click.echo)
    except local_broker.BrokerError as exc:
        raise _fail(exc) from exc


@kafka.command()
def stop() -> None:
    """Stop the local broker, or every node of the cluster at once; data is kept."""
    if settings.external_bootstrap():
        raise click.ClickException(
            "KAFKA_BOOTSTRAP_SERVERS is set: not stopping an external cluster"
        )
    local_broker.stop(log=click.echo)


@kafka.command()
def status() -> None:
    """Say whether the broker (each node of a cluster) runs and answers; exit 0 only if all do."""
    if not settings.external_bootstrap() and local_broker.cluster_started():
        _cluster_status()
        return
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
        click.echo(f"local Kafka stopped (data in {local_broker.paths().single.data})")
    if not ok:
        sys.exit(1)


def _cluster_status() -> None:
    nodes = local_broker.cluster_nodes()
    answering = {node.id: local_broker.node_answers(node) for node in nodes}
    controller = local_broker.active_controller() if any(answering.values()) else None
    up = sum(answering.values())
    click.echo(
        f"local Kafka cluster of {len(nodes)} brokers at {local_broker.bootstrap_of(nodes)}: "
        f"{up} of {len(nodes)} answering"
    )
    for node in nodes:
        pid = local_broker.node_pid(node)
        process = f"pid {pid}" if pid is not None else "not running"
        state = "answering" if answering[node.id] else "NOT answering"
        role = ", active controller" if node.id == controller else ""
        click.echo(f"  node {node.id}  {node.address:<16} {process:<12} {state}{role}")
    if up < len(nodes):
        click.echo("start the missing nodes with `saga kafka start`; see `saga kafka logs`")
        sys.exit(1)


@kafka.command()
@click.option("-n", "--lines", default=50, show_default=True, help="How many lines (per node).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--node", "node_id", type=int, default=None, help="Only this node of a cluster.")
def logs(lines: int, follow: bool, node_id: int | None) -> None:
    """Print the local broker's log (every node's, prefixed, for a cluster)."""
    nodes = every_node = local_broker.recent_nodes()
    if node_id is not None:
        nodes = [node for node in every_node if node.id == node_id]
        if not nodes:
            raise click.BadParameter(
                f"no node {node_id}: the {local_broker.describe(every_node)} "
                f"has nodes 1-{len(every_node)}",
                param_hint="'--node'",
            )
    present = [node for node in nodes if node.files.log.exists()]
    if not present:
        raise click.ClickException(f"no broker log yet at {nodes[0].files.log}")
    prefixed = len(nodes) > 1

    def prefix(node: local_broker.Node) -> str:
        return f"node {node.id} | " if prefixed else ""

    for node in present:
        for line in local_broker.tail_log(node, lines).splitlines():
            click.echo(prefix(node) + line)
    if follow:
        files = {node: node.files.log.open() for node in present}
        for f in files.values():
            f.seek(0, os.SEEK_END)
        while True:
            quiet = True
            for node, f in files.items():
                line = f.readline()
                if line:
                    click.echo(prefix(node) + line, nl=False)
                    quiet = False
            if quiet:
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

    --bootstrap-server is added unless given (every node of a local cluster). Tools:
    kafka-topics, kafka-console-consumer, kafka-console-producer, kafka-consumer-groups,
    kafka-configs, kafka-get-offsets, kafka-log-dirs, kafka-metadata-quorum, kafka-storage.
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
