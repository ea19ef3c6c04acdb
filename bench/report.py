"""Benchmark results as a printed table, JSON files, a PNG plot and a README section."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parent / "README.md"
README_START = "<!-- bench:latest:start -->"
README_END = "<!-- bench:latest:end -->"

_COLUMNS = "  {:<16} {:>10} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def rate_of(run: dict[str, Any]) -> str:
    return f"{run['rate']} (half max)" if run.get("half_max") else str(run["rate"])


def _short(outcome: str) -> str:
    return outcome.removeprefix("ORDER_")


def outcome_mix(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{_short(name)} {count}" for name, count in sorted(outcomes.items())) or "-"


def cpu_line(cpu: dict[str, float | None]) -> str:
    return "  ".join(f"{name} {'-' if pct is None else f'{pct:.0f}'}" for name, pct in cpu.items())


def machine_line(run: dict[str, Any], cpus: int | None = None) -> str:
    """How busy the whole machine was, and how much of that the measured processes took:
    the rest is other work on the machine (it skews the figures)."""
    ours = sum(pct for pct in run.get("cpu_percent", {}).values() if pct is not None)
    busy = run["machine_cpu_percent"]
    cores = cpus or os.cpu_count() or 1
    return (
        f"machine busy {busy:.0f}% of {cores * 100}%: these processes {ours:.0f}%, "
        f"other work {max(0.0, busy - ours):.0f}%"
    )


def table(title: str, runs: list[dict[str, Any]]) -> str:
    unit = "saga" if title == "saga" else "chain"
    header = _COLUMNS.format(
        "rate", "offered/s", "shed", "done/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "unfinished"
    )
    lines = [title, header]
    for run in runs:
        latency = run["latency_ms"]
        cells = [rate_of(run), f"{run['offered_per_s']:.1f}", run["shed"]]
        cells += [f"{run['completed_per_s']:.1f}"]
        cells += [_ms(latency[q]) for q in ("p50", "p95", "p99", "max")]
        lines.append(_COLUMNS.format(*cells, run["unfinished"]))
        lines.append(f"      outcomes: {outcome_mix(run['outcomes'])}{_disturbed(run)}")
        lines.append(f"      cpu % of one core: {cpu_line(run.get('cpu_percent', {}))}")
        if run.get("machine_cpu_percent") is not None:
            lines.append(f"      {machine_line(run)}")
        if run.get("per_saga"):
            lines.append(f"      per {unit}: {per_saga_line(run['per_saga'])}")
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3f}"


def per_saga_line(per: dict[str, float | None]) -> str:
    """Worker CPU, records consumed and produced, bytes written, per completed request."""
    written = per.get("bytes_written")
    return (
        f"worker CPU {_figure(per.get('worker_cpu_ms'))} ms (broker "
        f"{_figure(per.get('broker_cpu_ms'))} ms), consumed {_figure(per.get('consumed'))}, "
        f"produced {_figure(per.get('produced'))} records (changelogs "
        f"{_figure(per.get('produced_changelog'))}), "
        f"{'-' if written is None else f'{written / 1024:.2f} KiB'} written"
    )


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")  # git-ignored: bench/results/*.tmp
    temporary.write_text(text)
    os.replace(temporary, path)


def write_json(results: dict[str, Any], directory: Path, stamp: str) -> Path:
    """<stamp>.json (kept as history) and latest.json; returns the first."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2) + "\n"
    path = directory / f"{stamp}.json"
    _write_atomically(path, text)
    _write_atomically(directory / "latest.json", text)
    return path


def _tick_label(value: float, _position: int) -> str:
    """Plain numbers (200, not 2 x 10^2), and only at 1, 2 and 5 times a power of ten."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if round(mantissa, 6) in (1, 2, 5) else ""


def plot(results: dict[str, Any], path: Path) -> None:
    """Latency (p50 solid, p99 dashed; log scale) against completed/s, saga and baseline."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, color in (("saga", "tab:blue"), ("baseline", "tab:orange")):
        runs = [r for r in (results.get(name) or {}).get("runs", []) if r["completed"]]
        runs.sort(key=lambda r: float(r["completed_per_s"]))
        if not runs:
            continue
        x = [r["completed_per_s"] for r in runs]
        for quantile, style in (("p50", "-"), ("p99", "--")):
            y = [r["latency_ms"][quantile] for r in runs]
            axes.plot(x, y, style, marker="o", color=color, label=f"{name} {quantile}")
        for run, x_value in zip(runs, x, strict=True):
            axes.annotate(
                rate_of(run), (x_value, run["latency_ms"]["p50"]),
                textcoords="offset points", xytext=(4, -12), fontsize=8, color=color,
            )  # fmt: skip
    axes.set_xscale("log")
    axes.set_yscale("log")
    plain = FuncFormatter(_tick_label)
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    axes.set_xlabel("completed per second (log)")
    axes.set_ylabel("latency, request to terminal record, ms (log)")
    machine = results["machine"]
    axes.set_title(
        f"CreateOrderSaga vs relay baseline ({machine['cpus']} CPUs, {results['finished_at'][:10]})"
    )
    axes.grid(True, which="both", alpha=0.3)
    if axes.lines:  # nothing completed: an empty plot, without an empty legend
        axes.legend()
    figure.tight_layout()
    temporary = path.with_name(path.name + ".tmp")
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def _markdown_rows(name: str, runs: list[dict[str, Any]]) -> list[str]:
    rows = []
    for run in runs:
        latency, per = run["latency_ms"], run.get("per_saga") or {}
        written = per.get("bytes_written")
        rows.append(
            f"| {name} | {rate_of(run)} | {run['offered_per_s']:.0f} | {run['shed']}"
            f" | {run['completed_per_s']:.0f} | {_ms(latency['p50'])} | {_ms(latency['p99'])}"
            f" | {_figure(per.get('worker_cpu_ms'))} | {_figure(per.get('consumed'))}"
            f" | {_figure(per.get('produced'))} ({_figure(per.get('produced_changelog'))})"
            f" | {'-' if written is None else f'{written / 1024:.2f}'}"
            f" | {outcome_mix(run['outcomes'])}{_disturbed(run)} |"
        )
    return rows


def _disturbed(run: dict[str, Any]) -> str:
    return " (**disturbed**: other workers ran)" if run.get("disturbed_by") else ""


def readme_section(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"Run of {results['finished_at']} (`{results['command']}`) on {machine['cpus']} x "
        f"{machine['cpu_model']}, {machine['memory_gb']} GB RAM, {machine['os']}, "
        f"Python {machine['python']}, Kafka {machine['kafka']}; "
        f"load average at start {machine.get('load_average_at_start', '?')}.",
        "",
        "| pipeline | rate | offered/s | shed | completed/s | p50 ms | p99 ms"
        " | worker CPU ms | consumed | produced (changelogs) | KiB written | outcomes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("saga", "baseline"):
        lines += _markdown_rows(name, (results.get(name) or {}).get("runs", []))
    lines += [
        "",
        "Worker CPU, records and KiB are per completed saga (per chain for the baseline), "
        "records and bytes counted from every topic's offsets and sizes before and after "
        "the rate, changelogs included.",
    ]
    ratio = results.get("ratio_at_max")
    if ratio is not None:
        lines += ["", f"Saga throughput at max load: **{ratio:.3f} x** the relay baseline."]
    if (results.get("saga") or {}).get("error"):
        lines += ["", f"Saga runs failed: {results['saga']['error']}"]
    lines += ["", "![latency vs throughput](results/latest.png)"]
    return "\n".join(lines)


def update_readme(results: dict[str, Any], readme: Path = README) -> bool:
    """Replace the marked section of the README with these results; False if no markers."""
    try:
        text = readme.read_text()
    except OSError:
        return False
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    section = f"{README_START}\n{readme_section(results)}\n{README_END}"
    readme.write_text(text[:start] + section + text[end + len(README_END) :])
    return True
