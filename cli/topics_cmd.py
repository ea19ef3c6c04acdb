"""`saga topics ...`: make the cluster match topics.yaml."""

from __future__ import annotations

from pathlib import Path

import click

from messaging import topics as topics_file

_ENV_HELP = (
    "environment of topics.yaml whose replication applies (default: SAGA_ENV, else "
    "'cluster' on the local three-broker cluster or an external one, else 'single')"
)


def _load(path: Path | None, env: str | None) -> topics_file.TopicsFile:
    environment = topics_file.Environment(env, f"--env {env}") if env else None
    spec = topics_file.load(path, environment)
    if env and not spec.environments:
        raise topics_file.TopicsFileError(
            f"{path or topics_file.TOPICS_FILE} declares no environments: --env does not apply"
        )
    return spec


def _describe_replication(spec: topics_file.TopicsFile) -> str | None:
    replication, environment = spec.replication, spec.environment
    if replication is None or environment is None:
        return None
    return (
        f"environment {environment.name}: replication factor {replication.replication_factor}, "
        f"min.insync.replicas {replication.min_insync_replicas} ({environment.reason})"
    )


@click.group()
def topics() -> None:
    """Create and check the topics declared in topics.yaml."""


@topics.command()
@click.option(
    "--file", "path", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="topics file (default: the repository's topics.yaml)",
)  # fmt: skip
@click.option("--env", default=None, help=_ENV_HELP)
def apply(path: Path | None, env: str | None) -> None:
    """Create missing topics, set changed configs; report other drift (exit 1)."""
    try:
        spec = _load(path, env)
        if (line := _describe_replication(spec)) is not None:
            click.echo(line)
        report = topics_file.apply(spec)
    except topics_file.TopicsFileError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise click.ClickException(f"cannot apply topics: {exc}") from exc
    for name in report.created:
        click.echo(f"created  {name}")
    for line in report.updated:
        click.echo(f"updated  {line}")
    click.echo(f"{len(report.unchanged)} topic(s) already as declared")
    for line in report.drift:
        click.echo(f"DRIFT    {line}", err=True)
    if not report.ok:
        raise click.ClickException(
            f"{len(report.drift)} topic(s) differ from topics.yaml; fix them by hand "
            "(partition counts re-key sagas, replication factors change only by "
            "partition reassignment and a cleanup.policy changes what a topic keeps, "
            "so none is changed automatically)"
        )


@topics.command("list")
@click.option("--env", default=None, help=_ENV_HELP)
def list_topics(env: str | None) -> None:
    """Print the declared topics with partitions, replication and purpose."""
    try:
        spec = _load(None, env)
    except topics_file.TopicsFileError as exc:
        raise click.ClickException(str(exc)) from exc
    if (line := _describe_replication(spec)) is not None:
        click.echo(line)
    for t in spec.topics.values():
        click.echo(f"{t.name:40} p={t.partitions:<3} rf={t.replication_factor}  {t.doc}")
