"""The orchestrator worker: one Faust agent applies `decide()` to the `sagas` table.

I/O only: read the saga's row, call the pure `decide`, write the row back, send the
commands and the SagaEvents. A deadline timer sends `StepTimedOut` to saga.replies; it
never writes the table (only the agent that owns a key's partition may). A reply read
before its saga's request waits for it (`EarlyReplies`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, cast

import faust
from faust.types import TP, EventT, StreamT

from messaging import settings
from messaging.faust_app import (
    WORKER_FAILURES,
    Row,
    Sender,
    WriteAfterSend,
    create_app,
    dead_letter_event,
    decoded_events,
    raw_topic,
    stop_worker,
    typed_table,
    utc_now,
)
from orchestrator.definition import EVENTS_TOPIC, REPLY_TOPIC, REQUEST_TOPIC, route
from orchestrator.machine import decide, expired
from orchestrator.views import register_views
from schemas import messages as m
from schemas.limits import id_problem

log = logging.getLogger(__name__)

APP_ID = settings.APP_IDS["orchestrator"]
DEFAULT_WEB_PORT = 6066
REPLIES: tuple[type, ...] = (
    m.OrderCreated,
    m.ProductsReserved,
    m.ProductsUnavailable,
    m.PaymentAuthorized,
    m.PaymentFailed,
    m.PaymentCancelled,
    m.ProductsReleased,
    m.OrderApproved,
    m.OrderRejected,
    m.StepTimedOut,  # sent by the deadline timer
)
# Only requests start sagas and only replies move them, each on its own topic: a reply
# on orders.requested (or a request on saga.replies) is dead-lettered as unexpected-type.
INPUTS_BY_TOPIC: Mapping[str, tuple[type, ...]] = {
    REQUEST_TOPIC: (m.OrderRequested,),
    REPLY_TOPIC: REPLIES,
}
INPUTS: tuple[type, ...] = (m.OrderRequested, *REPLIES)  # accepted on one topic or the other


def saga_id_problem(message: object) -> str | None:
    """Why a request's order id cannot be a saga id (any other limit it breaks ends its
    saga at once, with the reason: see `decide`)."""
    if isinstance(message, m.OrderRequested):
        return id_problem("order id", message.order_id)
    return None


def saga_key(message: object) -> str:
    """The saga id a message belongs to: its record key must be this."""
    if isinstance(message, m.OrderRequested):
        return message.order_id
    return str(message.saga_id)  # type: ignore[attr-defined]


class DeadlineWatch:
    """Deadlines of the open sagas on this worker's partitions, kept in memory.

    The agent updates it on every write; a scan of the table rebuilds it after a start or
    rebalance (rows recovered from the changelog never pass through the agent).
    """

    def __init__(self) -> None:
        self.open: dict[bytes, m.SagaState] = {}
        self.fired: set[tuple[bytes, str, int]] = set()
        self.needs_rescan = True
        self.touched: set[bytes] = set()  # keys the agent wrote since the scan began

    def update(self, key: bytes, state: m.SagaState) -> None:
        self.touched.add(key)
        if state.deadline is None:
            self.open.pop(key, None)
        else:
            self.open[key] = state

    async def rescan(self, rows: Any) -> None:
        """Rebuild from the table, giving the event loop back now and then (tables are big)."""
        self.needs_rescan = False
        self.touched.clear()
        found: dict[bytes, m.SagaState] = {}
        for count, (key, state) in enumerate(rows, 1):
            if state is not None and state.deadline is not None:
                found[key] = state
            if count % 500 == 0:
                await asyncio.sleep(0)
        # What the agent wrote meanwhile is newer than what the scan read.
        self.open = {k: s for k, s in self.open.items() if k in self.touched} | {
            k: s for k, s in found.items() if k not in self.touched
        }

    def due(self, now: datetime) -> list[tuple[bytes, m.StepTimedOut]]:
        """StepTimedOut messages to send now, each at most once per (saga, step, attempt)."""
        result = []
        for key, state in self.open.items():
            timeout = expired(state, now)
            if timeout is None:
                continue
            marker = (key, timeout.step, timeout.attempt)
            if marker not in self.fired:
                self.fired.add(marker)
                result.append((key, timeout))
        if len(self.fired) > 100_000:  # markers only suppress re-sends; losing them is harmless
            self.fired.clear()
        return result


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
    so the request is always earlier in orders.requested. Read live, it is also processed
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
        # with the number of its request's partition in orders.requested (co-partitioned).
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
        """Is a request that was in orders.requested when the reply was read unprocessed?"""
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


class OrchestratorService:
    """The Faust app, its table and agent, built for one worker process."""

    def __init__(self, *, web_port: int = DEFAULT_WEB_PORT, **app_options: Any) -> None:
        self.app = create_app(APP_ID, web_port=web_port, **app_options)
        self.sagas = typed_table(self.app, "sagas")
        self.sender = Sender(self.app)
        self.writer = WriteAfterSend(self.app, self.sender)
        self.watch = DeadlineWatch()
        self.early = self._early_replies()
        # The agent and the deadline timer both decide records (the timer: held replies
        # given up); one at a time, or a saga's replies could be decided out of order.
        self.deciding = asyncio.Lock()
        self.inputs = raw_topic(self.app, REQUEST_TOPIC, REPLY_TOPIC)
        self.agent = self.app.agent(self.inputs, name="run_sagas")(self._run)
        self.app.timer(interval=1.0)(self._fire_deadlines)
        self.app.on_rebalance_complete.connect(self._on_rebalance)
        register_views(self)

    def _early_replies(self) -> EarlyReplies:
        def request_end(partition: int) -> int | None:
            try:
                end = self.app.consumer.highwater(TP(REQUEST_TOPIC, partition))
            except Exception:  # no consumer (yet): unknown
                return None
            return None if end is None else int(end)

        def request_committed(partition: int) -> int | None:
            offsets = getattr(self.app.consumer, "_committed_offset", {})  # Faust's own
            committed = offsets.get(TP(REQUEST_TOPIC, partition))
            return None if committed is None else int(committed)

        return EarlyReplies(request_end, request_committed)

    async def _run(self, stream: faust.StreamT) -> None:
        # Manual acks: the writer acks each record once its row is written.
        stream = cast(faust.Stream, stream).noack()
        # A fresh writer per run of the agent: rows staged by a cancelled run never landed.
        self.writer = WriteAfterSend(self.app, self.sender)
        self.early = self._early_replies()
        writer = asyncio.ensure_future(self.writer.run())
        try:
            async for event, message in decoded_events(
                self.app, stream, INPUTS_BY_TOPIC, key_of=saga_key, problem_of=saga_id_problem
            ):
                async with self.deciding:
                    if not await self.process(stream, event, message):
                        return
                    if isinstance(message, m.OrderRequested):
                        self.early.saw_request(event)
                    if self.early.held and not await self.release_early_replies():
                        return
        finally:
            writer.cancel()

    async def process(
        self, stream: StreamT, event: EventT, message: object, *, held: bool = False
    ) -> bool:
        """Handle one record; False when the worker stops."""
        try:
            await self.handle(stream, event, message, held=held)
        except WORKER_FAILURES as exc:  # not the record's fault: stop, replay later
            await stop_worker(self.app, exc)
            return False
        except Exception as exc:  # one bad record must not stop the saga engine
            await dead_letter_event(self.app, event, exc)
            await self.writer.submit(stream, event)
        return True

    async def release_early_replies(self) -> bool:
        """Decide the held replies that may be decided now; False when the worker stops."""
        for held in self.early.release(lambda key: self.writer.read(self.sagas, key) is not None):
            if not await self.process(held.stream, held.event, held.message, held=True):
                return False
        return True

    async def handle(
        self, stream: faust.StreamT, event: EventT, message: object, *, held: bool = False
    ) -> None:
        key = cast(bytes, event.key)  # checked by key_of
        state = self.writer.read(self.sagas, key)
        if (
            not held
            and not isinstance(message, m.OrderRequested)
            and self.early.should_hold(stream, event, message, state is not None)
        ):
            return  # decided by release_early_replies, once its request was processed
        decision = decide(state, message, utc_now())
        # The row is written only once the broker has the commands and events: the other
        # order lets a crash keep a transition whose messages were lost (the re-processed
        # input is then stale, and e.g. a lost ORDER_APPROVED event leaves the stock
        # reserved for ever).
        outputs: list[tuple[str, bytes, object]]
        outputs = [(*route(command), command) for command in decision.commands]
        outputs += [(EVENTS_TOPIC, key, saga_event) for saga_event in decision.events]
        rows: list[Row] = []
        on_written = None
        new_state = decision.state
        if new_state is not None and new_state is not state:
            rows.append((self.sagas, key, new_state))
            # The deadline index follows written rows only: a send that fails leaves the
            # row, and so the deadline of its real state, as they were.
            on_written = partial(self.watch.update, key, new_state)
        await self.writer.submit(stream, event, outputs, rows, on_written)

    async def _on_rebalance(self, *args: Any, **kwargs: Any) -> None:
        self.watch.needs_rescan = True
        self.early.drop_revoked(set(self.app.consumer.assignment()))

    async def _fire_deadlines(self) -> None:
        # No parameters: Faust passes the app to a timer that takes one.
        await self.fire_deadlines(utc_now())

    async def fire_deadlines(self, now: datetime) -> None:
        """Send a StepTimedOut to saga.replies for each saga whose deadline passed by `now`."""
        if self.app.rebalancing or self.app.in_recovery or self.app.should_stop:
            return
        try:
            if self.early.held:  # e.g. held past HOLD_LIMIT_SECONDS with no new records
                async with self.deciding:
                    await self.release_early_replies()
            if self.watch.needs_rescan:
                await self.watch.rescan(self.sagas.items())
            for key, timeout in self.watch.due(now):
                log.info(
                    "deadline passed: saga %s step %s attempt %s",
                    key,
                    timeout.step,
                    timeout.attempt,
                )
                self.sender.send(REPLY_TOPIC, key, timeout)
        except Exception:
            # Timers outlive the table and the producer while the worker stops: failing
            # then would crash the app (exit 1). Unsent deadlines fire after the restart.
            if not self.app.should_stop:
                raise


def build(web_port: int | None = None, **app_options: Any) -> OrchestratorService:
    port = web_port or int(os.environ.get("SAGA_ORCHESTRATOR_PORT", DEFAULT_WEB_PORT))
    return OrchestratorService(web_port=port, **app_options)
