"""The orchestrator worker: one Faust agent applies `decide()` to the `sagas` table.

I/O only: read the saga's row, call the pure `decide`, write the row back, send the
commands and the SagaEvents. A deadline timer sends `StepTimedOut` to saga.replies; it
never writes the table (only the agent that owns a key's partition may). A reply read
before its saga's request waits for it (`EarlyReplies`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
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


@dataclass
class HeldReply:
    stream: StreamT
    event: EventT
    message: object
    wanted: int | None  # the request partition's end offset when the reply was read
    since: float


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
    request: a stray reply, dropped as before), or HOLD_LIMIT_SECONDS passed.
    """

    def __init__(
        self,
        request_end: Callable[[int], int | None],
        request_committed: Callable[[int], int | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request_end = request_end  # partition -> end offset last fetched (None: unknown)
        self.request_committed = request_committed
        self.clock = clock
        self.held: list[HeldReply] = []
        self.processed: dict[int, int] = {}  # request partition -> next offset to process

    def saw_request(self, event: EventT) -> None:
        partition, offset = event.message.partition, event.message.offset
        self.processed[partition] = max(self.processed.get(partition, 0), offset + 1)

    def should_hold(
        self, stream: StreamT, event: EventT, message: object, saga_exists: bool
    ) -> bool:
        """Hold `message` (a reply) back? Then keep it (see `release`)."""
        key = event.key
        if saga_exists and not any(h.event.key == key for h in self.held):
            return False
        partition = event.message.partition
        held = HeldReply(stream, event, message, self.request_end(partition), self.clock())
        if not saga_exists and not self._behind(held):
            return False
        self.held.append(held)
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
        now = self.clock()
        waiting: set[bytes] = set()
        ready, kept = [], []
        for held in self.held:
            key = cast(bytes, held.event.key)
            if key not in waiting and (
                saga_exists(key) or not self._behind(held) or now - held.since > HOLD_LIMIT_SECONDS
            ):
                ready.append(held)
            else:
                waiting.add(key)
                kept.append(held)
        self.held = kept
        return ready

    def drop_revoked(self, assigned: set[TP]) -> None:
        """Forget replies of partitions this worker lost: their new owner reads them again."""
        self.held = [h for h in self.held if h.event.message.tp in assigned]


class OrchestratorService:
    """The Faust app, its table and agent, built for one worker process."""

    def __init__(self, *, web_port: int = DEFAULT_WEB_PORT, **app_options: Any) -> None:
        self.app = create_app(APP_ID, web_port=web_port, **app_options)
        self.sagas = typed_table(self.app, "sagas")
        self.sender = Sender(self.app)
        self.writer = WriteAfterSend(self.app, self.sender)
        self.watch = DeadlineWatch()
        self.early = self._early_replies()
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
