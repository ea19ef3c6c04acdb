"""`saga bench --baseline-only` end to end on the real broker: files and their shape.

No timing assertions: the benchmark's figures are goals, not test conditions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_baseline_smoke_run_writes_results(kafka: str, tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "cli.main", "bench", "--baseline-only", "--rates", "50",
        "--duration", "3", "--drain-timeout", "30", "--results-dir", str(tmp_path), "--no-readme",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr

    results = json.loads((tmp_path / "latest.json").read_text())
    assert {"command", "started_at", "finished_at", "machine", "settings"} <= set(results)
    assert {"cpus", "cpu_model", "memory_gb", "python", "kafka"} <= set(results["machine"])
    assert results["saga"] is None
    baseline = results["baseline"]
    assert baseline["hops"] == 9
    assert sorted(baseline["relays"]) == ["orchestrator", "order", "payment", "product"]
    [run] = baseline["runs"]
    assert run["rate"] == "50/s"
    assert run["offered"] > 0
    assert run["completed"] > 0
    assert set(run["latency_ms"]) == {"p50", "p95", "p99", "max", "mean"}
    assert {"orchestrator", "order", "product", "payment", "bench"} <= set(run["cpu_percent"])
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")
    assert len(list(tmp_path.glob("*.json"))) == 2  # <timestamp>.json and latest.json
    assert not list(tmp_path.glob("*.tmp"))
