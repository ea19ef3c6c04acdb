"""SeekFence (messaging.faust_workarounds): no stream record fetched before a seek reaches an agent.

A fake consumer stands in for Faust's: `getmany` yields one batch per call, and
`perform_seek` is what recovery calls once the tables are restored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

from messaging.faust_workarounds import SeekFence

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
        self.during_seek: list[tuple[str, int]] | None = None
        self.fetched_during_seek: list[tuple[str, int]] = []

    def assignment(self) -> list[TP]:
        return self.partitions

    async def seek(self, tp: TP, offset: int) -> None:
        self.sought.append((tp, offset))

    async def getmany(self, timeout: float) -> AsyncIterator[Any]:
        batch = self.batches.pop(0)
        for n, (topic, offset) in enumerate(batch):
            yield TP(topic, 0), SimpleNamespace(offset=offset)
            if n == 0 and self.between is not None:
                await self.between()

    async def perform_seek(self) -> None:
        self.seeks += 1
        if self.during_seek is not None:  # a batch the fetcher got while the seek ran
            self.batches.insert(0, self.during_seek)
            self.during_seek = None
            self.fetched_during_seek = await fetch(self)


def fenced() -> tuple[SeekFence, FakeConsumer]:
    consumer = FakeConsumer()
    topics = SimpleNamespace(acks_enabled_for=lambda topic: topic == STREAM)
    fence = SeekFence(SimpleNamespace(consumer=consumer, topics=topics))  # type: ignore[arg-type]
    fence.install()
    return fence, consumer


async def fetch(consumer: Any) -> list[tuple[str, int]]:
    return [(tp.topic, message.offset) async for tp, message in consumer.getmany(1.0)]


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
    consumer._read_offset[TP(STREAM, 0)] = 7  # Faust's read offset: 7 was delivered
    consumer.batches.append([(STREAM, 7), (STREAM, 8), (CHANGELOG, 3), (STREAM, 9)])
    assert await fetch(consumer) == [(STREAM, 7), (CHANGELOG, 3)]
    assert consumer.sought == [(TP(STREAM, 0), 7)]  # fetched again from there, in order


async def test_a_batch_fetched_while_the_seek_runs_is_held_back_and_fetched_again() -> None:
    _fence, consumer = fenced()
    consumer.during_seek = [(STREAM, 5), (STREAM, 6), (CHANGELOG, 1)]
    await consumer.perform_seek()
    assert consumer.fetched_during_seek == [(CHANGELOG, 1)]
    assert consumer.sought == [(TP(STREAM, 0), 5)]  # min(first held back, read offset 5)


async def test_records_held_back_before_the_seek_are_fetched_from_the_committed_offset() -> None:
    fence, consumer = fenced()
    consumer.batches.append([(STREAM, 9), (STREAM, 10)])
    assert await fetch(consumer) == []
    assert consumer.sought == []  # the pending seek will move the fetcher anyway
    consumer._read_offset[TP(STREAM, 0)] = 8  # the seek: committed offset 8
    await consumer.perform_seek()
    assert consumer.sought == [(TP(STREAM, 0), 8)]  # never past what Faust sought
    assert fence.held_back == {}


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
