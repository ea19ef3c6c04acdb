"""Is CPU scarce on this machine? Batching (fetch waits, producer linger) buys CPU with
latency, so the workers batch only while it is.

A rate alone cannot tell: 500 records/s is a Payment Service near the saga's maximum,
but also an orchestrator at a fifth of it, where a wait per hop only adds latency. So a
worker reads how busy the machine's CPUs are (/proc/stat, every half second, smoothed)
and batches from BATCH_FROM_BUSY on, until it falls below BATCH_UNTIL_BUSY: the gap keeps
the CPU that batching saves from switching it off again at once. Without /proc/stat
(not Linux) CPU counts as scarce, so batching follows the rates alone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

PROC_STAT = Path("/proc/stat")
BATCH_FROM_BUSY = 0.80  # share of all CPUs busy from which the workers batch
BATCH_UNTIL_BUSY = 0.65  # and below which they stop again
SMOOTHING = 0.5  # weight of the newest measurement

CpuTimes = tuple[int, int]  # (busy, total) clock ticks since boot, all CPUs


def read_cpu_times(path: Path = PROC_STAT) -> CpuTimes | None:
    """Busy and total ticks of all CPUs; None where /proc/stat is not available."""
    try:
        with path.open() as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(value) for value in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return sum(ticks[:8]) - idle, sum(ticks[:8])  # guest time is counted in user


class CpuScarcity:
    """Follows how busy the CPUs are; `scarce` says whether batching pays now."""

    def __init__(self, read: Callable[[], CpuTimes | None] = read_cpu_times) -> None:
        self._read = read
        self._last = read()
        self.busy = 0.0  # smoothed share of CPU time busy, 0..1
        self.scarce = self._last is None

    def update(self) -> bool:
        """Fold in the CPU time since the last call; returns `scarce`."""
        now = self._read()
        if now is None or self._last is None:
            self.scarce = True
            return True
        busy, total = now[0] - self._last[0], now[1] - self._last[1]
        self._last = now
        if total <= 0:
            return self.scarce
        self.busy = SMOOTHING * (busy / total) + (1 - SMOOTHING) * self.busy
        threshold = BATCH_UNTIL_BUSY if self.scarce else BATCH_FROM_BUSY
        self.scarce = self.busy >= threshold
        return self.scarce
