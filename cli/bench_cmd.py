"""`saga bench`: saga throughput and latency at fixed rates and at max, against a relay baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bench import load, report, runner, stats
from messaging import client


def _rates(_ctx: click.Context, _param: click.Parameter, value: str) -> list[stats.Rate]:
    try:
        return stats.parse_rates(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command()
@click.option(
    "--rates", default="20,50,100,500,max", show_default=True, callback=_rates,
    help="Offered orders per second, comma-separated; 'max' keeps --max-in-flight outstanding.",
)  # fmt: skip
@click.option(
    "--duration", type=click.FloatRange(min=1), default=20.0, show_default=True,
    help="Seconds of offering per rate.",
)  # fmt: skip
@click.option(
    "--max-in-flight", type=click.IntRange(min=1), default=200, show_default=True,
    help="Outstanding requests at most; beyond it due requests are shed.",
)  # fmt: skip
@click.option(
    "--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
    help="Seconds to wait for stragglers after offering; the rest count as unfinished.",
)  # fmt: skip
@click.option("--baseline-only", is_flag=True, help="Only the relay baseline (no workers needed).")
@click.option("--saga-only", is_flag=True, help="Only the saga (no baseline, so no ratio).")
@click.option(
    "--use-running", is_flag=True,
    help="Benchmark the workers already running instead of starting four.",
)  # fmt: skip
@click.option(
    "--workers", type=click.IntRange(min=1), default=1, show_default=True,
    help="Workers per service that the bench starts (not with --use-running).",
)  # fmt: skip
@click.option(
    "--web-port-base", type=click.IntRange(1024, 65000), default=6066, show_default=True,
    help="Web port of the first orchestrator the bench starts (as for saga up).",
)  # fmt: skip
@click.option(
    "--profile", is_flag=True, help="Add a max-load run with py-spy flame graphs of the workers."
)
@click.option(
    "--half-max/--no-half-max", default=True, show_default=True,
    help="After 'max', one more saga run at half the measured maximum.",
)  # fmt: skip
@click.option(
    "--results-dir", type=click.Path(path_type=Path, file_okay=False),
    default=report.RESULTS_DIR, show_default=True, help="Where the JSON and PNG go.",
)  # fmt: skip
@click.option(
    "--readme/--no-readme", default=True, show_default=True,
    help="Put the figures into bench/README.md.",
)  # fmt: skip
def bench(
    rates: list[stats.Rate],
    duration: float,
    max_in_flight: int,
    drain_timeout: float,
    baseline_only: bool,
    saga_only: bool,
    use_running: bool,
    workers: int,
    web_port_base: int,
    profile: bool,
    half_max: bool,
    results_dir: Path,
    readme: bool,
) -> None:
    """Measure the saga pipeline and a minimal relay chain over the same broker.

    For each rate: offered and completed per second, latency from request to terminal
    record (p50/p95/p99/max), the outcome mix and the CPU of every process. Results go to
    RESULTS_DIR/<UTC time>.json, latest.json and latest.png. See bench/README.md.
    """
    if baseline_only and saga_only:
        raise click.UsageError("--baseline-only and --saga-only exclude each other")
    if use_running and workers != 1:
        raise click.UsageError("--workers sets how many the bench starts: not with --use-running")
    options = runner.Options(
        rates=rates, duration=duration, max_in_flight=max_in_flight, drain_timeout=drain_timeout,
        run_baseline=not saga_only, run_saga=not baseline_only, use_running=use_running,
        workers=workers, web_port_base=web_port_base, profile=profile, half_max=half_max,
        results_dir=results_dir,
    )  # fmt: skip
    try:
        client.require_broker()
        if options.run_saga:  # fail now rather than after the baseline's minutes
            load.workers_to_use(use_running)
    except (client.ClientError, load.BenchError) as exc:
        raise click.ClickException(str(exc)) from exc
    command = " ".join(["saga", *sys.argv[1:]])
    results = runner.benchmark(options, command, click.echo)
    _publish(results, results_dir, readme)
    saga_error = (results.get("saga") or {}).get("error")
    if saga_error:
        raise click.ClickException(f"saga runs incomplete: {saga_error}")


def _publish(results: dict[str, object], results_dir: Path, readme: bool) -> None:
    click.echo("")
    for name in ("baseline", "saga"):
        part = results.get(name)
        if isinstance(part, dict) and part.get("runs"):
            click.echo(report.table(name, part["runs"]) + "\n")
    if results.get("ratio_at_max") is not None:
        click.echo(f"saga throughput at max = {results['ratio_at_max']} x baseline")
    path = report.write_json(results, results_dir, runner.stamp(str(results["finished_at"])))
    click.echo(f"results: {path} (and latest.json)")
    try:
        report.plot(results, results_dir / "latest.png")
        click.echo(f"plot: {results_dir / 'latest.png'}")
    except ImportError:
        click.echo("plot skipped: matplotlib is not installed", err=True)
    if readme and report.update_readme(results):
        click.echo(f"figures written into {report.README}")
