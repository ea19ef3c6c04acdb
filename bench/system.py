"""The machine a benchmark ran on, and the CPU its processes used."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

import confluent_kafka
import psutil

from messaging import local_broker, settings
from messaging.local_workers import SERVICE_NAMES, worker_name


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def kafka_version() -> str:
    if settings.external_bootstrap():
        return f"external cluster at {settings.bootstrap_servers()}"
    jars = sorted(local_broker.paths().lib.glob("kafka_*-*.jar"))
    if not jars:
        return "unknown"
    scala, _, version = jars[0].stem.removeprefix("kafka_").partition("-")
    return f"{version} (Scala {scala}, local single-node KRaft broker)"


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "kafka": kafka_version(),
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "faust_streaming": _version("faust-streaming"),
        # Other work on the machine skews every figure: this shows whether there was any.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def worker_processes() -> list[tuple[str, int]]:
    """(NAME, pid) of every `saga worker NAME` process running on this machine against
    this cluster (workers of other brokers share no consumer group with ours)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = process.info.get("cmdline") or []
        for name in SERVICE_NAMES:
            if _is_worker_command(cmdline, name) and _on_this_cluster(process):
                found.append((name, process.info["pid"]))
    return found


def running_workers() -> dict[str, int]:
    """Pids of the running workers by name: a service's first as the service, the next
    ones as product-2, product-3 ... (in the order of their pids)."""
    named: dict[str, int] = {}
    for service, pid in sorted(worker_processes(), key=lambda found: found[1]):
        number = 1
        while worker_name(service, number) in named:
            number += 1
        named[worker_name(service, number)] = pid
    return named


def _on_this_cluster(process: psutil.Process) -> bool:
    """Does the worker use the cluster this process uses? Told from its environment, as
    `messaging.settings` reads it; a process whose environment cannot be read counts."""
    try:
        env = process.environ()
    except psutil.Error:
        return True
    return settings.bootstrap_servers(env) == settings.bootstrap_servers()


def _is_worker_command(cmdline: list[str], name: str) -> bool:
    # `python -m cli.main worker NAME ...` (Workers, saga up) or `saga worker NAME ...`
    for i in range(len(cmdline) - 1):
        if cmdline[i] == "worker" and cmdline[i + 1] == name and i > 0:
            launcher = cmdline[i - 1]
            return launcher == "cli.main" or Path(launcher).name == "saga"
    return False


def _cpu_seconds(process: psutil.Process) -> float | None:
    # Only the process itself (all its threads): the relays and workers this process
    # starts are its children and are metered on their own.
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


class CpuMeter:
    """CPU used by named processes over a span of wall time, in % of one core; and how
    busy the whole machine was meanwhile (`machine_percent`, also in % of one core:
    up to 100 x the number of CPUs), which shows what other work took."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.processes: dict[str, psutil.Process | None] = {}
        for name, pid in pids.items():
            try:
                self.processes[name] = psutil.Process(pid) if pid else None
            except psutil.Error:
                self.processes[name] = None
        self._begin: dict[str, float | None] = {}
        self._started = 0.0
        self.seconds: dict[str, float | None] = {}  # CPU seconds used, after stop()
        self.machine_percent = 0.0  # after stop()

    def start(self) -> None:
        self._started = time.monotonic()
        self._begin = {name: _cpu(p) for name, p in self.processes.items()}
        self._machine_begin = psutil.cpu_times()

    def stop(self) -> dict[str, float | None]:
        wall = time.monotonic() - self._started
        self.machine_percent = _busy_percent(self._machine_begin, psutil.cpu_times())
        used = {}
        for name, process in self.processes.items():
            end, begin = _cpu(process), self._begin.get(name)
            seconds = None if end is None or begin is None else end - begin
            self.seconds[name] = seconds
            used[name] = None if seconds is None or wall <= 0 else round(seconds / wall * 100, 1)
        return used


def _busy_percent(before: Any, after: Any) -> float:
    """The machine's CPU time not idle between two psutil.cpu_times(), in % of one core."""
    idle = ("idle", "iowait")
    total = sum(after) - sum(before)
    waiting = sum(getattr(after, f, 0.0) - getattr(before, f, 0.0) for f in idle)
    cpus = os.cpu_count() or 1
    return round((total - waiting) / total * 100 * cpus, 1) if total > 0 else 0.0


def _cpu(process: psutil.Process | None) -> float | None:
    return None if process is None else _cpu_seconds(process)
