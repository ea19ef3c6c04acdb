"""`saga worker NAME`: run one service as a Faust worker process."""

from __future__ import annotations

import importlib
from typing import Any

import click

# Service name -> module whose `build(web_port=...)` returns an object with `.app`.
SERVICES = {
    "orchestrator": "orchestrator.app",
    "order": "participants.order.app",
    "product": "participants.product.app",
    "payment": "participants.payment.app",
}


def _topics_problem() -> str | None:
    """Why the cluster cannot run a worker: topics of topics.yaml it lacks (None if it
    has them all, or if it does not answer yet: the worker then waits for it as ever).

    Faust declares its tables' changelogs at start; on a cluster `saga topics apply` has
    not seen it would create them with its own configs (no compaction settings of ours,
    its replication), and the agents' topics would not exist at all."""
    from confluent_kafka import KafkaException

    from messaging import settings, topics

    try:
        missing = topics.missing_topics(topics.project_topics())
    except KafkaException:
        return None
    if not missing:
        return None
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return (
        f"the cluster at {settings.bootstrap_servers()} lacks topics of topics.yaml ({shown}); "
        "create them with `saga topics apply` (a changelog Faust created would have its "
        "configs, not topics.yaml's)"
    )


def build_service(name: str, web_port: int | None = None, **app_options: Any) -> Any:
    module = importlib.import_module(SERVICES[name])
    return module.build(web_port=web_port, **app_options)


@click.command()
@click.argument("name", type=click.Choice(sorted(SERVICES)))
@click.option("--web-port", type=int, default=None, help="Port of its web views.")
@click.option(
    "--web-bind", default=None,
    help="Address its web views listen on (default: SAGA_WEB_BIND, else 127.0.0.1; "
    "0.0.0.0 for every interface).",
)  # fmt: skip
@click.option(
    "--web-host", default=None,
    help="Host name or address the other workers reach it at (default: SAGA_WEB_HOST, "
    "else the --web-bind address, or the host name when bound to every interface).",
)  # fmt: skip
@click.option("--loglevel", default="info", show_default=True)
def worker(
    name: str, web_port: int | None, web_bind: str | None, web_host: str | None, loglevel: str
) -> None:
    """Run the NAME service (orchestrator, order, product, payment) until stopped.

    SIGTERM or Ctrl-C stop it gracefully: in-flight records finish and offsets commit.
    """

    from messaging import exit_codes, tracing
    from messaging.faust_app import web_address
    from messaging.faust_workarounds import (
        discard_tables_after_crash,
        exit_if_stop_hangs,
        mark_clean_shutdown,
        quiet_worker,
    )
    from schemas.state import StateRefused

    try:
        address = web_address(web_bind, web_host)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--web-host") from exc
    try:
        service = build_service(name, web_port, web_bind=address.bind, web_host=address.host)
    except ValueError as exc:  # its settings (SAGA_RETENTION, SAGA_SAGAS): nothing started
        click.echo(f"{name}: refusing to start: {exc}", err=True)
        raise SystemExit(exit_codes.STATE_REFUSED) from None
    if (problem := _topics_problem()) is not None:
        click.echo(f"{name}: refusing to start: {problem}", err=True)
        raise SystemExit(exit_codes.STATE_REFUSED)
    discard_tables_after_crash(service.app)
    exit_if_stop_hangs(service.app)
    try:
        try:
            quiet_worker(service.app, loglevel).execute_from_commandline()
        finally:
            tracing.shutdown(service.app)  # spans still buffered are exported
    except SystemExit as exit_:
        if isinstance(service.app.crash_reason, StateRefused):
            click.echo(f"{name}: refusing to run: {service.app.crash_reason}", err=True)
            raise SystemExit(exit_codes.STATE_REFUSED) from None
        # Stopped gracefully; clean only if every row and output reached Kafka.
        if exit_.code in (0, None) and not mark_clean_shutdown(service.app):
            raise SystemExit(exit_codes.UNCLEAN_STOP) from None
        raise
