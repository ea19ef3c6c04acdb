"""The orchestrator worker: one Faust agent applies `decide()` to the `sagas` table.

I/O only: read the saga's row, call the pure `decide`, write the row back, send the
commands and the SagaEvents. A deadline timer sends `StepTimedOut` to saga.replies; it
never writes the table (only the agent that owns a key's partition may).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from functools import partial
from typing import Any, cast

import faust
from faust.types import EventT

from messaging.faust_app import (
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
from messaging.producer import TransportError
from orchestrator.definition import EVENTS_TOPIC, REPLY_TOPIC, REQUEST_TOPIC, route
from orchestrator.machine import decide, expired
from orchestrator.views import register_views
from schemas import messages as m
from schemas.limits import id_problem

log = logging.getLogger(__name__)

APP_ID = "saga-orchestrator"
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


class OrchestratorService:
    """The Faust app, its table and agent, built for one worker process."""

    def __init__(self, *, web_port: int = DEFAULT_WEB_PORT, **app_options: Any) -> None:
        self.app = create_app(APP_ID, web_port=web_port, **app_options)
        self.sagas = typed_table(self.app, "sagas")
        self.sender = Sender(self.app)
        self.writer = WriteAfterSend(self.app, self.sender)
        self.watch = DeadlineWatch()
        self.inputs = raw_topic(self.app, REQUEST_TOPIC, REPLY_TOPIC)
        self.agent = self.app.agent(self.inputs, name="run_sagas")(self._run)
        self.app.timer(interval=1.0)(self._fire_deadlines)
        self.app.on_rebalance_complete.connect(self._on_rebalance)
        register_views(self)

    async def _run(self, stream: faust.StreamT) -> None:
        # Manual acks: the writer acks each record once its row is written.
        stream = cast(faust.Stream, stream).noack()
        # A fresh writer per run of the agent: rows staged by a cancelled run never landed.
        self.writer = WriteAfterSend(self.app, self.sender)
        writer = asyncio.ensure_future(self.writer.run())
        try:
            async for event, message in decoded_events(
                self.app, stream, INPUTS_BY_TOPIC, key_of=saga_key, problem_of=saga_id_problem
            ):
                try:
                    await self.handle(stream, event, message)
                except TransportError as exc:  # not the record's fault: stop, replay later
                    await stop_worker(self.app, exc)
                    return
                except Exception as exc:  # one bad record must not stop the saga engine
                    await dead_letter_event(self.app, event, exc)
                    await self.writer.submit(stream, event)
        finally:
            writer.cancel()

    async def handle(self, stream: faust.StreamT, event: EventT, message: object) -> None:
        key = cast(bytes, event.key)  # checked by key_of
        state = self.writer.read(self.sagas, key)
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

    async def _fire_deadlines(self) -> None:
        # No parameters: Faust passes the app to a timer that takes one.
        await self.fire_deadlines(utc_now())

    async def fire_deadlines(self, now: datetime) -> None:
        """Send a StepTimedOut to saga.replies for each saga whose deadline passed by `now`."""
        if self.app.rebalancing or self.app.in_recovery or self.app.should_stop:
            return
        try:
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
