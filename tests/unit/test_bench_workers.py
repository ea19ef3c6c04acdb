"""The bench with several workers per service (`saga bench --workers N`): CPU summed
over every worker, the machine's other work shown, and only this cluster's workers seen
as running. No broker."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench import report, runner, system


def test_worker_cpu_per_saga_sums_every_worker_but_not_broker_or_bench() -> None:
    seconds: dict[str, float | None] = {
        "orchestrator": 1.0, "orchestrator-2": 1.0, "order": 0.5, "product": 0.5,
        "product-2": 0.5, "payment": 0.5, "broker": 2.0, "bench": 3.0,
    }  # fmt: skip
    per_saga = runner.cpu_per_completion(seconds, completed=1000)
    assert per_saga == {"worker_cpu_ms": 4.0, "broker_cpu_ms": 2.0}
    seconds["product-2"] = None  # a worker that could not be metered
    assert runner.cpu_per_completion(seconds, 1000)["worker_cpu_ms"] is None


def test_the_machine_line_tells_these_processes_from_other_work() -> None:
    run: dict[str, Any] = {
        "cpu_percent": {"orchestrator": 60.0, "product-2": 30.0, "broker": None},
        "machine_cpu_percent": 150.0,
    }
    assert report.machine_line(run, cpus=2) == (
        "machine busy 150% of 200%: these processes 90%, other work 60%"
    )


CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait")


def test_busy_percent_counts_every_core_not_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system.os, "cpu_count", lambda: 2)
    before = CpuTimes(10.0, 0.0, 5.0, 100.0, 1.0)
    after = CpuTimes(40.0, 0.0, 15.0, 150.0, 1.0)  # 40 s busy of 90 s, on 2 cores
    assert system._busy_percent(before, after) == pytest.approx(88.9)


class Process:
    def __init__(self, pid: int, env: dict[str, str] | None) -> None:
        self.info = {"pid": pid, "cmdline": ["python", "-m", "cli.main", "worker", "product"]}
        self.env = env

    def environ(self) -> dict[str, str]:
        if self.env is None:
            raise psutil.AccessDenied(self.info["pid"])
        return self.env


def test_only_workers_of_this_cluster_count_as_running(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("SAGA_HOME", str(tmp_path / "ours"))
    monkeypatch.setattr(system.settings, "LOCAL_BROKER_PORT", 24680)
    cluster_home = tmp_path / "cluster"
    cluster_file = system.settings.local_cluster_file({"SAGA_HOME": str(cluster_home)})
    cluster_file.parent.mkdir(parents=True)
    cluster_file.write_text("127.0.0.1:25000,127.0.0.1:25002,127.0.0.1:25004")
    processes = [
        Process(30, {"SAGA_KAFKA_PORT": "24680"}),
        Process(10, {"SAGA_KAFKA_PORT": "24680"}),
        Process(20, {}),  # the default broker, 9092: another cluster
        Process(40, {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:24680"}),
        Process(50, None),  # unreadable: counted, to be safe
        Process(60, {"SAGA_HOME": str(cluster_home), "SAGA_KAFKA_PORT": "24680"}),  # its cluster
    ]
    monkeypatch.setattr(system.psutil, "process_iter", lambda _fields: processes)
    assert system.running_workers() == {
        "product": 10,
        "product-2": 30,
        "product-3": 40,
        "product-4": 50,
    }
