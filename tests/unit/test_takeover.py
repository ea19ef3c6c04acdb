"""A worker that took partitions over trusts a missing row only once it has committed
their input up to where it ended at the takeover (messaging.takeover). No broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from messaging.takeover import Takeover, caught_up

REQUESTS, REPLIES, CHANGELOG = (
    "orders.requested",
    "saga.replies",
    "saga-orchestrator-sagas-changelog",
)


class Consumer:
    def __init__(self, ends: dict[TP, int]) -> None:
        self.ends = ends
        self._committed_offset: dict[TP, int | None] = {}
        self.asked: list[set[TP]] = []

    async def highwaters(self, *partitions: TP) -> dict[TP, int]:
        self.asked.append(set(partitions))
        return {tp: self.ends[tp] for tp in partitions}


def worker(ends: dict[TP, int]) -> Any:
    topics = SimpleNamespace(acks_enabled_for=lambda topic: topic != CHANGELOG)
    return SimpleNamespace(consumer=Consumer(ends), topics=topics, should_stop=False)


async def assigned(takeover: Takeover, tps: set[TP]) -> None:
    await takeover.on_assigned(takeover.app, tps, signal=None)
    assert takeover.look_up is not None
    await takeover.look_up


async def test_behind_until_every_input_of_the_partition_is_committed_to_its_end() -> None:
    ends = {TP(REQUESTS, 0): 10, TP(REPLIES, 0): 40, TP(REQUESTS, 1): 0, TP(REPLIES, 1): 0}
    app = worker(ends)
    takeover = Takeover(app)
    await assigned(takeover, {*ends, TP(CHANGELOG, 0)})
    assert app.consumer.asked == [set(ends)]  # the changelog is no input
    assert takeover.caught_up(1)  # nothing was ever written there
    assert not takeover.caught_up(0)
    app.consumer._committed_offset.update({TP(REQUESTS, 0): 10, TP(REPLIES, 0): 39})
    assert not takeover.caught_up(0)
    app.consumer._committed_offset[TP(REPLIES, 0)] = 41  # records came since: fine
    assert takeover.caught_up(0)


async def test_behind_while_the_end_offsets_are_not_known_yet() -> None:
    app = worker({TP(REQUESTS, 0): 0})
    takeover = Takeover(app)
    await takeover.on_assigned(app, {TP(REQUESTS, 0)}, signal=None)
    assert not takeover.caught_up(0)  # the look-up has not run yet
    assert takeover.look_up is not None
    await takeover.look_up
    assert takeover.caught_up(0)


async def test_an_older_look_up_does_not_overwrite_a_newer_assignment() -> None:
    app = worker({TP(REQUESTS, 0): 5, TP(REQUESTS, 1): 7})
    takeover = Takeover(app)
    await takeover.on_assigned(app, {TP(REQUESTS, 0)}, signal=None)
    first = takeover.look_up
    await assigned(takeover, {TP(REQUESTS, 1)})
    assert first is not None
    await first
    assert takeover.horizons == {TP(REQUESTS, 1): 7}


def test_an_app_without_takeover_tracking_is_caught_up() -> None:
    class App:
        pass

    assert caught_up(App(), 0)  # type: ignore[arg-type]


async def test_the_end_offsets_are_asked_again_until_the_broker_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = worker({TP(REQUESTS, 0): 3})
    answers = [RuntimeError("busy"), RuntimeError("busy")]
    real = app.consumer.highwaters

    async def highwaters(*partitions: TP) -> dict[TP, int]:
        if answers:
            raise answers.pop()
        return await real(*partitions)

    app.consumer.highwaters = highwaters
    no_pause = asyncio.sleep
    monkeypatch.setattr(asyncio, "sleep", lambda _seconds: no_pause(0))
    takeover = Takeover(app)
    await assigned(takeover, {TP(REQUESTS, 0)})
    assert takeover.horizons == {TP(REQUESTS, 0): 3}
