"""SeekFence (messaging.faust_app): no stream record fetched before a seek reaches an agent.

A fake consumer stands in for Faust's: `getmany` yields one batch per call, and
`perform_seek` is what recovery calls once the tables are restored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

from messaging.faust_app import SeekFence

STREAM, CHANGELOG = "orders.requested", "saga-orchestrator-sagas-changelog"


class TP(NamedTuple):
    topic: str
    partition: int


class FakeConsumer:
    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.seeks = 0
        self.between: Callable[[], Any] | None = None  # runs after the batch's first record
        # Faust's read offsets after a seek: the committed offsets (None: never committed)
        self.partitions = [TP(STREAM, 0), TP(STREAM, 1), TP(STREAM, 2), TP(CHANGELOG, 0)]
        self._read_offset: dict[TP, int | None] = {tp: 5 for tp in self.partitions}
        self.sought: list[tuple[TP, int]] = []

    def assignment(self) -> list[TP]:
        return self.partitions

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))

    async def getmany(self, timeout: float) -> AsyncIterator[Any]:
        batch = self.batches.pop(0)
        for n, (topic, offset) in enumerate(batch):
            yield SimpleNamespace(topic=topic, partition=0), offset
            if n == 0 and self.between is not None:
                await self.between()

    async def perform_seek(self) -> None:
        self.seeks += 1


def fenced() -> tuple[SeekFence, FakeConsumer]:
    consumer = FakeConsumer()
    topics = SimpleNamespace(acks_enabled_for=lambda topic: topic == STREAM)
    fence = SeekFence(SimpleNamespace(consumer=consumer, topics=topics))  # type: ignore[arg-type]
    fence.install()
    return fence, consumer


async def fetch(consumer: Any) -> list[tuple[str, int]]:
    return [(tp.topic, offset) async for tp, offset in consumer.getmany(1.0)]


async def test_before_the_seek_only_changelog_records_pass() -> None:
    _fence, consumer = fenced()
    consumer.batches.append([(STREAM, 5), (CHANGELOG, 9), (STREAM, 6)])
    assert await fetch(consumer) == [(CHANGELOG, 9)]


async def test_after_the_seek_records_pass_in_order() -> None:
    _fence, consumer = fenced()
    await consumer.perform_seek()
    consumer.batches.append([(STREAM, 5), (STREAM, 6)])
    assert await fetch(consumer) == [(STREAM, 5), (STREAM, 6)]
    assert consumer.seeks == 1


async def test_the_rest_of_a_batch_fetched_before_a_seek_is_held_back() -> None:
    _fence, consumer = fenced()
    await consumer.perform_seek()
    consumer.between = consumer.perform_seek  # the seek lands while the batch is drained
    consumer.batches.append([(STREAM, 7), (STREAM, 8), (CHANGELOG, 3), (STREAM, 9)])
    assert await fetch(consumer) == [(STREAM, 7), (CHANGELOG, 3)]


async def test_a_new_assignment_holds_records_back_until_its_seek() -> None:
    fence, consumer = fenced()
    await consumer.perform_seek()
    fence.on_rebalance()
    consumer.batches += [[(STREAM, 1)], [(STREAM, 1)]]
    assert await fetch(consumer) == []
    await consumer.perform_seek()
    assert await fetch(consumer) == [(STREAM, 1)]


def test_installing_twice_wraps_once() -> None:
    fence, consumer = fenced()
    wrapped = consumer.getmany
    fence.install()
    assert consumer.getmany is wrapped


async def test_stream_partitions_never_committed_are_rewound_to_their_start() -> None:
    _fence, consumer = fenced()
    consumer._read_offset[TP(STREAM, 1)] = None  # no committed offset
    consumer._read_offset[TP(STREAM, 2)] = 0  # committed 0: aiokafka does not seek it
    consumer._read_offset[TP(CHANGELOG, 0)] = None  # recovery positions changelogs itself
    await consumer.perform_seek()
    assert consumer.sought == [(TP(STREAM, 1), 0), (TP(STREAM, 2), 0)]
