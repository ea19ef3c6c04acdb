"""`saga topics ...`: make the cluster match topics.yaml."""

from __future__ import annotations

from pathlib import Path

import click

from messaging import topics as topics_file


@click.group()
def topics() -> None:
    """Create and check the topics declared in topics.yaml."""


@topics.command()
@click.option(
    "--file", "path", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="topics file (default: the repository's topics.yaml)",
)  # fmt: skip
def apply(path: Path | None) -> None:
    """Create missing topics; report drift (exit 1) without changing existing ones."""
    try:
        spec = topics_file.load(path)
        report = topics_file.apply(spec)
    except topics_file.TopicsFileError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:
        raise click.ClickException(f"cannot apply topics: {exc}") from exc
    for name in report.created:
        click.echo(f"created  {name}")
    click.echo(f"{len(report.unchanged)} topic(s) already as declared")
    for line in report.drift:
        click.echo(f"DRIFT    {line}", err=True)
    if not report.ok:
        raise click.ClickException(
            f"{len(report.drift)} topic(s) differ from topics.yaml; fix them by hand "
            "(partition counts re-key sagas, so they are never changed automatically)"
        )


@topics.command("list")
def list_topics() -> None:
    """Print the declared topics with partitions and purpose."""
    spec = topics_file.load()
    for t in spec.topics.values():
        click.echo(f"{t.name:40} p={t.partitions:<3} rf={t.replication_factor}  {t.doc}")
