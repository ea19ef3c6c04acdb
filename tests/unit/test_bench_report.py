"""Benchmark results on paper: table, JSON files, README section, plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import report, runner


def _run(rate: str, completed_per_s: float, p50: float | None) -> dict[str, Any]:
    return {
        "rate": rate,
        "offered_per_s": 100.0,
        "shed": 0,
        "completed": 0 if p50 is None else 500,
        "completed_per_s": completed_per_s,
        "unfinished": 0,
        "latency_ms": {"p50": p50, "p95": p50, "p99": p50, "max": p50, "mean": p50},
        "outcomes": {"ORDER_APPROVED": 450, "ORDER_REJECTED": 50},
        "cpu_percent": {"orchestrator": 40.0, "broker": None},
    }


PER_SAGA = {
    "worker_cpu_ms": 3.6,
    "broker_cpu_ms": 0.9,
    "consumed": 11.9,
    "produced": 22.7,
    "produced_changelog": 5.8,
    "bytes_written": 4608,
}


def _results() -> dict[str, Any]:
    results: dict[str, Any] = {
        "command": "saga bench",
        "finished_at": "2025-01-31T12:00:00+00:00",
        "machine": {
            "cpus": 2,
            "cpu_model": "Test CPU",
            "memory_gb": 8.0,
            "os": "Linux",
            "python": "3.11.7",
            "kafka": "4.1.1",
        },
        "saga": {
            "runs": [
                _run("100/s", 99.0, 80.0),
                {**_run("max", 250.0, 900.0), "per_saga": PER_SAGA},
                {**_run("125/s", 124.0, 60.0), "half_max": True},
            ]
        },
        "baseline": {"runs": [_run("100/s", 100.0, 20.0), _run("max", 5000.0, 150.0)]},
    }
    runner.add_ratios(results)
    return results


def test_ratios_to_the_baseline() -> None:
    results = _results()
    assert results["ratio_to_baseline"] == {"100/s": 0.99, "max": 0.05}
    assert results["ratio_at_max"] == 0.05


def test_half_max_is_half_the_saga_maximum() -> None:
    runs = _results()["saga"]["runs"]
    assert runner.half_max_rate(runs) == 125.0
    assert runner.half_max_rate(runs[:1]) is None  # no max run
    assert runner.half_max_rate([_run("max", 250.0, None)]) is None  # nothing completed


def test_table_lists_every_run() -> None:
    text = report.table("saga", _results()["saga"]["runs"])
    assert "100/s" in text and "max" in text
    assert "APPROVED 450, REJECTED 50" in text
    assert "orchestrator 40  broker -" in text
    assert "125/s (half max)" in text
    assert "per saga: worker CPU 3.6 ms (broker 0.900 ms), consumed 11.9, produced 22.7" in text


def test_readme_section_replaces_only_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold\n{report.README_END}\noutro\n")
    assert report.update_readme(_results(), readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "old" not in text
    assert "2 x Test CPU" in text
    assert "| saga | max | 100 | 0 | 250 | 900.0 | 900.0 | 3.6 | 11.9 | 22.7 (5.8) | 4.50 |" in text
    assert "| saga | 125/s (half max) | 100 | 0 | 124 | 60.0 | 60.0 |" in text
    assert "**0.050 x**" in text
    plain = tmp_path / "plain.md"
    plain.write_text("no markers")
    assert not report.update_readme(_results(), plain)


def test_json_and_plot_files(tmp_path: Path) -> None:
    results = _results()
    path = report.write_json(results, tmp_path, runner.stamp(results["finished_at"]))
    assert path.name == "20250131T120000Z.json"
    assert json.loads((tmp_path / "latest.json").read_text()) == results
    report.plot(results, tmp_path / "latest.png")
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob("*.tmp"))
