"""One benchmark: the relay baseline, then the saga, at the same rates; results as a dict."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import baseline, load, profiling, stats, system
from bench.driver import Pipeline, RunSettings, drive
from bench.progress import Progress
from bench.traffic import TrafficMeter
from messaging import catalog, local_broker, topics

Echo = Callable[[str], None]

# Warm-ups are not measured: they open connections, and for the saga they prove that the
# workers answer (after a start they may still be recovering their tables).
BASELINE_WARMUP = RunSettings(rate=100.0, duration=2.0, max_in_flight=1000, drain_timeout=30.0)
SAGA_WARMUP = RunSettings(rate=20.0, duration=3.0, max_in_flight=1000, drain_timeout=120.0)
WARMUP_ROUNDS = 5  # at most; warm-up ends with the first round whose sagas all finish...
BASELINE_MIN_IN_FLIGHT = 1000
WARM_P99_MS = 2000  # ... with p99 latency below this


@dataclass(frozen=True)
class Options:
    rates: list[stats.Rate]
    duration: float = 20.0
    max_in_flight: int = 200
    drain_timeout: float = 30.0
    run_baseline: bool = True
    run_saga: bool = True
    use_running: bool = False
    workers: int = 1  # per service, when the bench starts them
    web_port_base: int = 6066  # of the workers it starts (see saga up)
    profile: bool = False
    half_max: bool = True  # after "max", a run at half the saga's measured maximum
    results_dir: Path = Path("bench/results")

    def settings(self, rate: stats.Rate) -> RunSettings:
        return RunSettings(rate, self.duration, self.max_in_flight, self.drain_timeout)

    def describe(self) -> dict[str, Any]:
        return {
            "rates": [stats.rate_label(r) for r in self.rates],
            "duration_s": self.duration,
            "max_in_flight": self.max_in_flight,
            "drain_timeout_s": self.drain_timeout,
            "half_max": self.half_max,
            "workers_per_service": None if self.use_running else self.workers,
        }


def _common_pids() -> dict[str, int | None]:
    return {"broker": local_broker.running_pid(), "bench": os.getpid()}


def measure(
    pipeline: Pipeline,
    settings: RunSettings,
    pids: dict[str, int | None],
    echo: Echo,
    traffic: TrafficMeter | None = None,
) -> dict[str, Any]:
    """One run at one rate, with the CPU its processes used meanwhile and, given a
    meter, the records and bytes it moved."""
    meter = system.CpuMeter(pids)
    if traffic is not None:
        traffic.start()
    meter.start()
    run = drive(pipeline, settings, Progress(f"{pipeline.name} {stats.rate_label(settings.rate)}"))
    summary = run.summary()
    summary["cpu_percent"] = meter.stop()
    summary["machine_cpu_percent"] = meter.machine_percent
    summary["per_saga"] = cpu_per_completion(meter.seconds, summary["completed"])
    if traffic is not None:
        summary["traffic"] = traffic.stop(summary["completed"])
        summary["per_saga"].update(summary["traffic"].pop("per_saga"))
    echo(one_line(pipeline.name, summary))
    return summary


NOT_WORKERS = ("broker", "bench")  # the other metered processes


def cpu_per_completion(seconds: dict[str, float | None], completed: int) -> dict[str, Any]:
    """CPU milliseconds per completed request: the workers (or relays) together, and the
    broker."""

    def ms(names: list[str]) -> float | None:
        values = [seconds.get(name) for name in names]
        if not completed or any(v is None for v in values):
            return None
        return round(sum(v for v in values if v is not None) / completed * 1000, 4)

    workers = [name for name in seconds if name not in NOT_WORKERS]
    return {"worker_cpu_ms": ms(workers), "broker_cpu_ms": ms(["broker"])}


def one_line(name: str, run: dict[str, Any]) -> str:
    latency = run["latency_ms"]
    p50 = "-" if latency["p50"] is None else f"{latency['p50']:.1f}"
    p99 = "-" if latency["p99"] is None else f"{latency['p99']:.1f}"
    return (
        f"{name} {run['rate']}: offered {run['offered_per_s']:.1f}/s (shed {run['shed']}), "
        f"completed {run['completed_per_s']:.1f}/s, p50 {p50} ms, p99 {p99} ms, "
        f"unfinished {run['unfinished']}"
    )


def baseline_settings(options: Options, rate: stats.Rate) -> RunSettings:
    """The baseline keeps at least BASELINE_MIN_IN_FLIGHT outstanding: its latency is
    milliseconds, so a small window would cap it by Little's law rather than by Kafka."""
    settings = options.settings(rate)
    return replace(settings, max_in_flight=max(settings.max_in_flight, BASELINE_MIN_IN_FLIGHT))


def run_baseline(options: Options, echo: Echo) -> dict[str, Any]:
    baseline.ensure_topics()
    relays = baseline.Relays()
    try:
        pids: dict[str, int | None] = {**relays.start(), **_common_pids()}
        pipeline = baseline.BaselinePipeline()
        traffic = TrafficMeter(baseline.TOPICS, consumed_topics=baseline.TOPICS[:-1])
        try:
            drive(pipeline, BASELINE_WARMUP, Progress("baseline warm-up"))
            runs = [
                measure(pipeline, baseline_settings(options, r), pids, echo, traffic)
                for r in options.rates
            ]
        finally:
            traffic.close()
            pipeline.close()
    finally:
        relays.stop()
    return {
        "hops": baseline.HOPS,
        "relays": {
            role: [f"{baseline.TOPICS[h]}->{baseline.TOPICS[h + 1]}" for h in hops]
            for role, hops in baseline.RELAY_HOPS.items()
        },
        "payload_bytes": baseline.PAYLOAD_SIZE,
        "runs": runs,
    }


def run_saga(options: Options, echo: Echo) -> dict[str, Any]:
    bench_catalog = load.BenchCatalog(uuid.uuid4().hex[:8])
    result: dict[str, Any] = {"catalog": bench_catalog.describe(), "runs": []}
    try:
        with load.saga_workers(
            options.use_running, options.workers, options.web_port_base
        ) as workers:
            result["workers"] = "already running" if options.use_running else "started by bench"
            catalog.publish(bench_catalog.seed())
            pipeline = load.SagaPipeline(bench_catalog)
            try:
                _measure_saga(pipeline, workers, options, result, echo)
            finally:
                pipeline.close()
    except load.BenchError as exc:
        result["error"] = str(exc)
    return result


def _measure_saga(
    pipeline: load.SagaPipeline,
    workers: load.WorkerSet,
    options: Options,
    result: dict[str, Any],
    echo: Echo,
) -> None:
    """Fills `result` as it goes, so a failure half-way still reports the runs before it."""
    pids: dict[str, int | None] = {**workers.pids, **_common_pids()}
    if not _warm_up(pipeline, workers, pids, result, echo):
        return
    traffic = TrafficMeter(topics.project_topics().topics, groups=load.WORKER_GROUPS)

    def run_at(rate: stats.Rate) -> dict[str, Any]:
        run = measure(pipeline, options.settings(rate), pids, echo, traffic)
        result["runs"].append(run)
        workers.check_alive()
        _note_strangers(run, workers, echo)
        return run

    try:
        for rate in options.rates:
            run_at(rate)
        half = half_max_rate(result["runs"]) if options.half_max else None
        if half is not None:  # batching under load: latency at half of what it can do
            run_at(half)["half_max"] = True
    finally:
        traffic.close()
    if options.profile:
        result["profile"] = _profile(pipeline, workers, options, pids, echo)


def half_max_rate(runs: list[dict[str, Any]]) -> float | None:
    """Half the completed/s of the max run (whole orders per second), if there was one."""
    label = stats.rate_label(stats.MAX)
    done = [r["completed_per_s"] for r in runs if r["rate"] == label and r["completed"]]
    return max(1.0, round(done[-1] / 2)) if done else None


def _warm_up(
    pipeline: load.SagaPipeline,
    workers: load.WorkerSet,
    pids: dict[str, int | None],
    result: dict[str, Any],
    echo: Echo,
) -> bool:
    """Unmeasured rounds until sagas finish promptly; False (and an error) if none finish.

    Workers that just started may still be restoring their tables from the changelogs
    while their web pages already answer: the first sagas then wait for that.
    """
    result["warmup"] = []
    for round_number in range(1, WARMUP_ROUNDS + 1):
        run = measure(pipeline, SAGA_WARMUP, pids, lambda line: echo(f"warm-up: {line}"))
        result["warmup"].append(run)
        _note_strangers(run, workers, echo)
        if run["completed"] == 0:
            result["error"] = (
                f"no saga finished during warm-up round {round_number} ({run['offered']} "
                f"requested, none terminal within {SAGA_WARMUP.drain_timeout:.0f}s): "
                "the measured runs were skipped"
            )
            return False
        if not run["unfinished"] and run["latency_ms"]["p99"] <= WARM_P99_MS:
            return True
    echo(f"warning: sagas still take over {WARM_P99_MS} ms after {WARMUP_ROUNDS} warm-up rounds")
    return True


def _note_strangers(run: dict[str, Any], workers: load.WorkerSet, echo: Echo) -> None:
    strangers = workers.strangers()
    if strangers:
        run["disturbed_by"] = strangers
        echo(f"  warning: other workers ran meanwhile, figures unreliable: {', '.join(strangers)}")


def _profile(
    pipeline: load.SagaPipeline,
    workers: load.WorkerSet,
    options: Options,
    pids: dict[str, int | None],
    echo: Echo,
) -> dict[str, Any]:
    """An extra run at max load with py-spy attached to each worker (not in the figures)."""
    if profiling.py_spy() is None:
        echo("--profile: py-spy is not installed (pip install py-spy); no flame graphs")
        return {"error": "py-spy not installed"}
    settings = replace(options.settings(stats.MAX), drain_timeout=min(options.drain_timeout, 10))
    with profiling.flame_graphs(workers.pids, options.duration, options.results_dir) as svgs:
        run = measure(pipeline, settings, pids, lambda line: echo(f"profiled: {line}"))
    return {"run": run, "flame_graphs": svgs}


def add_ratios(results: dict[str, Any]) -> None:
    """Saga completed/s as a share of the baseline's, per rate and at max."""
    saga_runs = (results.get("saga") or {}).get("runs", [])
    baseline_runs = {r["rate"]: r for r in (results.get("baseline") or {}).get("runs", [])}
    ratios = {}
    for run in saga_runs:
        reference = baseline_runs.get(run["rate"])
        if reference is not None:
            ratios[run["rate"]] = stats.ratio(run["completed_per_s"], reference["completed_per_s"])
    results["ratio_to_baseline"] = ratios
    results["ratio_at_max"] = ratios.get(stats.rate_label(stats.MAX))


def benchmark(options: Options, command: str, echo: Echo) -> dict[str, Any]:
    results: dict[str, Any] = {
        "command": command,
        "started_at": now_iso(),
        "machine": system.machine_info(),
        "settings": options.describe(),
        "baseline": run_baseline(options, echo) if options.run_baseline else None,
        "saga": run_saga(options, echo) if options.run_saga else None,
    }
    add_ratios(results)
    results["finished_at"] = now_iso()
    return results


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def stamp(iso: str) -> str:
    """A file-name-safe UTC timestamp: 2025-01-31T12:00:00+00:00 -> 20250131T120000Z."""
    return iso.removesuffix("+00:00").replace("-", "").replace(":", "") + "Z"
