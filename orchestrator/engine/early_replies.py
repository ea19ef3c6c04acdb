"""Replies read before their saga's request, held back until it is processed."""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from faust.types import TP, EventT, StreamT

HOLD_LIMIT_SECONDS = 30.0
# Held replies are unacked records kept in memory. Those of a restart belong to requests
# processed but not yet committed before it (a committed request has its row): Faust
# commits every 2.8 s, at the measured maximum of ~550 sagas/s with 4 replies each about
# 6,000 replies. 10,000 holds them all and bounds memory when stray replies pile up. Past
# it the oldest held reply is decided at once, as if its time limit had passed.
MAX_HELD_REPLIES = 10_000


@dataclass
class HeldReply:
    stream: StreamT
    event: EventT
    message: object
    wanted: int | None  # the request partition's end offset when the reply was read
    since: float
    number: int  # held replies are numbered in the order they were read


class EarlyReplies:
    """Replies read before the request of their saga, held back until it is processed.

    A reply is caused by a command the orchestrator sent after it processed the request,
    so the request is always earlier in the request topic. Read live, it is also processed
    earlier. But after a restart both topics are read again from their committed offsets,
    in no fixed order across topics: a reply can come first, find no saga and be dropped,
    and the saga then waits for a deadline and writes a different history from the one
    saga.events already holds. So a reply for a saga that does not exist yet is held (not
    acked: a crash reads it again) until its saga exists, or until the request partition
    has been processed up to where it ended when the reply was read (then there is no
    request: a stray reply, dropped as before), or HOLD_LIMIT_SECONDS passed, or more than
    `max_held` replies are held and it is the oldest. A reply of a saga with a held reply
    is held behind it.

    A record costs the same however many replies are held: they are kept per saga and per
    partition in the order they were read; a request releases its saga's replies, and the
    two limits are checked at the front of each partition only.
    """

    def __init__(
        self,
        request_end: Callable[[int], int | None],
        request_committed: Callable[[int], int | None],
        clock: Callable[[], float] = time.monotonic,
        max_held: int = MAX_HELD_REPLIES,
    ) -> None:
        self.request_end = request_end  # partition -> end offset last fetched (None: unknown)
        self.request_committed = request_committed
        self.clock = clock
        self.max_held = max_held
        self.held = 0  # how many replies are held
        self.by_saga: dict[bytes, deque[HeldReply]] = {}
        # All replies of a saga are on one partition of saga.replies (keyed by saga id),
        # with the number of its request's partition in the request topic (co-partitioned).
        self.by_partition: dict[TP, OrderedDict[int, HeldReply]] = {}
        self.maybe_started: set[bytes] = set()  # held sagas to look up at the next release
        self.processed: dict[int, int] = {}  # request partition -> next offset to process
        self.numbers = itertools.count()

    def saw_request(self, event: EventT) -> None:
        partition, offset = event.message.partition, event.message.offset
        self.processed[partition] = max(self.processed.get(partition, 0), offset + 1)
        if event.key in self.by_saga:
            self.maybe_started.add(cast(bytes, event.key))

    def should_hold(
        self, stream: StreamT, event: EventT, message: object, saga_exists: bool
    ) -> bool:
        """Hold `message` (a reply) back? Then keep it (see `release`)."""
        key = cast(bytes, event.key)
        behind_another = key in self.by_saga
        if saga_exists and not behind_another:
            return False
        partition = event.message.partition
        held = HeldReply(
            stream, event, message, self.request_end(partition), self.clock(), next(self.numbers)
        )
        if not behind_another and not self._behind(held):
            return False
        if saga_exists:
            self.maybe_started.add(key)
        self.by_saga.setdefault(key, deque()).append(held)
        queue = self.by_partition.setdefault(event.message.tp, OrderedDict())
        if held.wanted is not None:
            # Replies read earlier while the end was unknown take this end: the one
            # `_behind` would look up for them now, and the order of `wanted` is kept.
            for earlier in reversed(queue.values()):
                if earlier.wanted is not None:
                    break
                earlier.wanted = held.wanted
        queue[held.number] = held
        self.held += 1
        return True

    def _behind(self, held: HeldReply) -> bool:
        """Is a request that was in the request topic when the reply was read unprocessed?"""
        partition = held.event.message.partition
        if held.wanted is None:
            held.wanted = self.request_end(partition)
            if held.wanted is None:
                return True
        done = max(self.processed.get(partition, 0), self.request_committed(partition) or 0)
        return done < held.wanted

    def release(self, saga_exists: Callable[[bytes], bool]) -> list[HeldReply]:
        """The held replies that can be decided now, in the order they were read; a reply
        of a saga stays behind an earlier held one of the same saga."""
        ready: list[HeldReply] = []
        for key in self.maybe_started:
            if key in self.by_saga and saga_exists(key):
                ready += self._take_saga(key)
        self.maybe_started.clear()
        now = self.clock()
        # Along a partition, `since` grows and `wanted` never shrinks: once its first
        # reply must wait, so must the ones read after it.
        for queue in self.by_partition.values():
            while queue and not self._waits(next(iter(queue.values())), now):
                ready.append(self._take_first(queue))
        # The oldest reply is the first of its partition and of its saga: taking it first
        # keeps the order of every saga's replies.
        while self.held > self.max_held:
            oldest = min((q for q in self.by_partition.values() if q), key=lambda q: next(iter(q)))
            ready.append(self._take_first(oldest))
        ready.sort(key=lambda held: held.number)
        return ready

    def _waits(self, held: HeldReply, now: float) -> bool:
        return now - held.since <= HOLD_LIMIT_SECONDS and self._behind(held)

    def _take_saga(self, key: bytes) -> deque[HeldReply]:
        """Forget all the replies of a saga."""
        replies = self.by_saga.pop(key)
        for held in replies:
            del self.by_partition[held.event.message.tp][held.number]
        self.held -= len(replies)
        return replies

    def _take_first(self, queue: OrderedDict[int, HeldReply]) -> HeldReply:
        """Forget the first reply of a partition; it is also the first of its saga."""
        _number, held = queue.popitem(last=False)
        key = cast(bytes, held.event.key)
        replies = self.by_saga[key]
        replies.popleft()
        if not replies:
            del self.by_saga[key]
        self.held -= 1
        return held

    def drop_revoked(self, assigned: set[TP]) -> None:
        """Forget replies of partitions this worker lost: their new owner reads them again."""
        for tp in [tp for tp in self.by_partition if tp not in assigned]:
            queue = self.by_partition.pop(tp)
            for held in queue.values():
                self.by_saga.pop(cast(bytes, held.event.key), None)
            self.held -= len(queue)
