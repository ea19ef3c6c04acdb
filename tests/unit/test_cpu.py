"""CPU scarcity (messaging.cpu): batching only while the machine's CPUs are busy."""

from __future__ import annotations

from pathlib import Path

from messaging.cpu import BATCH_FROM_BUSY, BATCH_UNTIL_BUSY, CpuScarcity, read_cpu_times


class Ticks:
    """A fake /proc/stat: each step adds `busy` busy ticks out of 100."""

    def __init__(self) -> None:
        self.busy = self.total = 0

    def __call__(self) -> tuple[int, int]:
        return self.busy, self.total

    def step(self, busy: int) -> None:
        self.busy += busy
        self.total += 100


def settle(scarcity: CpuScarcity, ticks: Ticks, busy: int, steps: int = 20) -> bool:
    for _ in range(steps):
        ticks.step(busy)
        scarcity.update()
    return scarcity.scarce


def test_batching_starts_when_busy_and_stops_only_well_below() -> None:
    ticks = Ticks()
    scarcity = CpuScarcity(ticks)
    assert not settle(scarcity, ticks, 50)
    assert not settle(scarcity, ticks, round(100 * BATCH_FROM_BUSY) - 3)
    assert settle(scarcity, ticks, 95)
    # Batching saved CPU: between the two thresholds it stays on.
    assert settle(scarcity, ticks, round(100 * (BATCH_FROM_BUSY + BATCH_UNTIL_BUSY) / 2))
    assert not settle(scarcity, ticks, round(100 * BATCH_UNTIL_BUSY) - 5)


def test_a_short_spike_is_smoothed() -> None:
    ticks = Ticks()
    scarcity = CpuScarcity(ticks)
    settle(scarcity, ticks, 30)
    ticks.step(100)
    assert not scarcity.update()  # one busy half second among quiet ones


def test_without_proc_stat_cpu_counts_as_scarce(tmp_path: Path) -> None:
    assert read_cpu_times(tmp_path / "missing") is None
    scarcity = CpuScarcity(lambda: None)
    assert scarcity.scarce and scarcity.update()


def test_proc_stat_is_read_as_busy_and_total_ticks(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 5 50 800 20 3 2 0 40 0\ncpu0 1 2 3 4\n")
    assert read_cpu_times(stat) == (160, 980)
    stat.write_text("intr 1 2 3\n")
    assert read_cpu_times(stat) is None
