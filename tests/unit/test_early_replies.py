"""Replies read before their saga's request (`EarlyReplies`), without Faust: fake events,
a fake clock, the saga table as a set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from orchestrator.engine.early_replies import HOLD_LIMIT_SECONDS, MAX_HELD_REPLIES, EarlyReplies

REPLIES, REQUESTS = "saga.replies", "orders.requested"
STREAM: Any = None  # passed through untouched


@dataclass
class Message:
    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class Event:
    key: bytes
    message: Message


@dataclass
class Worker:
    """What the agent does around EarlyReplies: reads records and looks sagas up."""

    request_ends: dict[int, int | None] = field(default_factory=dict)  # unknown if absent
    committed: dict[int, int] = field(default_factory=dict)
    now: float = 0.0
    sagas: set[bytes] = field(default_factory=set)
    lookups: int = 0  # of the saga table
    progress_lookups: int = 0  # of a request partition's committed offset
    next_offset: dict[tuple[str, int], int] = field(default_factory=dict)
    max_held: int = MAX_HELD_REPLIES

    def __post_init__(self) -> None:
        self.early = EarlyReplies(
            self.request_ends.get, self.request_committed, lambda: self.now, self.max_held
        )

    def request_committed(self, partition: int) -> int | None:
        self.progress_lookups += 1
        return self.committed.get(partition)

    def event(self, topic: str, saga: str, partition: int) -> Any:  # stands in for EventT
        offset = self.next_offset.get((topic, partition), 0)
        self.next_offset[topic, partition] = offset + 1
        return Event(saga.encode(), Message(topic, partition, offset))

    def reply(self, saga: str, name: str, partition: int = 0) -> bool:
        """Read a reply `name` of `saga`: is it held?"""
        event = self.event(REPLIES, saga, partition)
        return self.early.should_hold(STREAM, event, name, saga.encode() in self.sagas)

    def request(self, saga: str, partition: int = 0) -> None:
        """Process the request of `saga`: it starts the saga."""
        event = self.event(REQUESTS, saga, partition)
        self.sagas.add(event.key)
        self.early.saw_request(event)

    def saga_exists(self, key: bytes) -> bool:
        self.lookups += 1
        return key in self.sagas

    def release(self) -> list[str]:
        """The names of the replies released now, in the order they come."""
        return [str(held.message) for held in self.early.release(self.saga_exists)]


def test_replies_are_held_only_for_sagas_not_started_while_requests_are_unread() -> None:
    worker = Worker(request_ends={0: 5})
    worker.sagas.add(b"started")
    assert not worker.reply("started", "r1")
    assert worker.reply("unborn", "u1")
    worker.committed[0] = 5  # every request that was there when u1 was read is done
    assert not worker.reply("stray", "s1")  # its request is not coming: decide it now


def test_a_processed_request_releases_the_replies_of_its_saga_only() -> None:
    worker = Worker(request_ends={0: 100})
    for saga, name in [("a", "a1"), ("b", "b1"), ("a", "a2")]:
        assert worker.reply(saga, name)
    assert worker.release() == []
    worker.request("a")
    assert worker.release() == ["a1", "a2"]
    assert worker.early.held == 1
    worker.request("b")
    assert worker.release() == ["b1"]
    assert worker.early.held == 0


def test_the_replies_of_a_saga_stay_in_the_order_they_were_read() -> None:
    worker = Worker(request_ends={0: 100})
    assert worker.reply("a", "a1")
    assert worker.reply("b", "b1")
    assert worker.reply("a", "a2")
    worker.sagas.add(b"a")  # started, but the release has not run yet
    assert worker.reply("a", "a3")  # behind a1 and a2, though its saga exists
    assert worker.release() == ["a1", "a2", "a3"]
    assert not worker.reply("a", "a4")  # nothing of a is held any more
    # Read past the request partition's end, a reply still waits behind its saga's.
    worker.committed[0] = 100
    assert worker.reply("b", "b2")
    assert worker.release() == ["b1", "b2"]


def test_replies_are_released_once_their_request_partition_is_read_past_them() -> None:
    worker = Worker(request_ends={0: 10, 1: 10})
    assert worker.reply("stray0", "s0", partition=0)
    assert worker.reply("stray1", "s1", partition=1)
    worker.request_ends[0] = 20  # grows meanwhile: s0 waits only for the first 10
    worker.next_offset[REQUESTS, 0] = 9
    worker.request("other", partition=0)  # offset 9, the last one s0 waited for
    assert worker.release() == ["s0"]
    worker.committed[1] = 10  # committed by an earlier run counts as processed
    assert worker.release() == ["s1"]


def test_an_unknown_request_end_is_looked_up_later() -> None:
    worker = Worker()  # no request partition fetched yet
    assert worker.reply("stray", "s1")
    assert worker.reply("a", "a1")
    worker.committed[0] = 3
    assert worker.release() == []  # the end is still unknown
    worker.request_ends[0] = 3
    assert worker.release() == ["s1", "a1"]


def test_an_unknown_end_takes_the_end_seen_by_a_later_reply() -> None:
    worker = Worker()
    assert worker.reply("stray", "s1")
    worker.request_ends[0] = 3
    assert worker.reply("a", "a1")
    worker.request_ends[0] = 50  # s1 waits for what a1 waits for, not for this
    worker.committed[0] = 3
    assert worker.release() == ["s1", "a1"]


def test_held_replies_are_given_up_after_the_hold_limit() -> None:
    worker = Worker()  # the request end stays unknown
    assert worker.reply("a", "a1")
    worker.now = 10.0
    assert worker.reply("b", "b1")
    assert worker.reply("a", "a2")
    worker.now = HOLD_LIMIT_SECONDS
    assert worker.release() == []
    worker.now = HOLD_LIMIT_SECONDS + 0.1
    assert worker.release() == ["a1"]
    worker.now = HOLD_LIMIT_SECONDS + 10.1
    assert worker.release() == ["b1", "a2"]


def test_past_the_count_bound_the_oldest_held_reply_goes_first() -> None:
    worker = Worker(request_ends={0: 100, 1: 100}, max_held=3)
    for saga, name, partition in [("a", "a1", 0), ("b", "b1", 1), ("a", "a2", 0)]:
        assert worker.reply(saga, name, partition)
    assert worker.release() == []
    assert worker.reply("c", "c1", partition=1)
    assert worker.release() == ["a1"]  # its saga never started: `decide` drops it
    assert worker.reply("d", "d1", partition=0)
    assert worker.release() == ["b1"]  # the oldest, though on the other partition
    assert worker.reply("e", "e1", partition=1)
    assert worker.release() == ["a2"]
    assert worker.early.held == 3


def test_a_burst_past_the_count_bound_keeps_each_sagas_order() -> None:
    worker = Worker(request_ends={0: 100}, max_held=2)
    for saga, name in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3"), ("b", "b2")]:
        assert worker.reply(saga, name)  # still held behind its saga's, however many
    assert worker.release() == ["a1", "b1", "a2"]
    assert worker.reply("a", "a4")  # behind a3
    assert worker.release() == ["a3"]
    worker.request("a")
    assert worker.release() == ["a4"]
    assert worker.early.held == 1


def test_replies_of_lost_partitions_are_forgotten() -> None:
    worker = Worker(request_ends={0: 100, 1: 100})
    assert worker.reply("a", "a1", partition=0)
    assert worker.reply("b", "b1", partition=1)
    worker.early.drop_revoked({TP(REPLIES, 1), TP(REQUESTS, 1)})
    assert worker.early.held == 1
    worker.request("a", partition=0)
    worker.request("b", partition=1)
    assert worker.release() == ["b1"]
    assert not worker.reply("a", "a2")  # no longer behind the forgotten a1


def test_a_record_costs_a_few_lookups_however_many_replies_are_held() -> None:
    worker = Worker(request_ends={0: 10**6, 1: 10**6})
    for n in range(5_000):
        assert worker.reply(f"saga-{n}", f"r{n}", partition=n % 2)
    assert worker.lookups == 0
    worker.progress_lookups = 0
    assert worker.release() == []
    assert (worker.lookups, worker.progress_lookups) == (0, 2)  # the first of each partition
    worker.request("saga-2500", partition=0)
    worker.request("no-reply-held")
    assert worker.release() == ["r2500"]
    assert (worker.lookups, worker.progress_lookups) == (1, 4)
    assert worker.early.held == 4_999
