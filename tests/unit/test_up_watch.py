"""`saga up` watching its workers: a dead worker is restarted; a crash loop ends it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from cli import up_cmd


@dataclass
class FakeProcess:
    returncode: int = 1


@dataclass
class FakeWorker:
    name: str = "payment"
    process: FakeProcess = field(default_factory=FakeProcess)


class AlwaysDying:
    """Workers whose one worker is dead at every look; `restart` advances the clock."""

    def __init__(self, seconds_between_deaths: float, stop_after: int) -> None:
        self.now = 0.0
        self.step = seconds_between_deaths
        self.stop_after = stop_after
        self.restarted: list[str] = []

    def dead(self) -> list[FakeWorker]:
        return [FakeWorker()]

    def restart(self, name: str) -> None:
        self.restarted.append(name)
        if len(self.restarted) == self.stop_after:
            raise up_cmd.StopRequested
        self.now += self.step


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(up_cmd.time, "sleep", lambda _seconds: None)


def run_watch(workers: AlwaysDying) -> None:
    fake: Any = workers
    up_cmd.watch(fake, clock=lambda: workers.now)


def test_a_worker_crash_looping_is_given_up_after_three_restarts() -> None:
    workers = AlwaysDying(seconds_between_deaths=1.0, stop_after=100)
    with pytest.raises(RuntimeError, match="payment died 4 times in 10 minutes; giving up"):
        run_watch(workers)
    assert workers.restarted == ["payment"] * up_cmd.MAX_RESTARTS


def test_deaths_far_apart_are_always_restarted() -> None:
    workers = AlwaysDying(seconds_between_deaths=up_cmd.RESTART_WINDOW, stop_after=10)
    with pytest.raises(up_cmd.StopRequested):
        run_watch(workers)
    assert len(workers.restarted) == 10
