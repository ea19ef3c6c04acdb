"""The orchestrator worker: one Faust agent applies `decide()` to the `sagas` table.

I/O only: read the saga's row, call the pure `decide`, write the row back, send the
commands and the SagaEvents. A deadline timer sends `StepTimedOut` to saga.replies; it
never writes the table (only the agent that owns a key's partition may).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import Any, cast

import faust

from messaging.faust_app import (
    Sender,
    create_app,
    dead_letter_event,
    decoded_events,
    raw_topic,
    typed_table,
    utc_now,
)
from orchestrator.definition import EVENTS_TOPIC, REPLY_TOPIC, REQUEST_TOPIC, route
from orchestrator.machine import decide, expired
from schemas import messages as m

log = logging.getLogger(__name__)

APP_ID = "saga-orchestrator"
DEFAULT_WEB_PORT = 6066
INPUTS: tuple[type, ...] = (
    m.OrderRequested,
    m.OrderCreated,
    m.ProductsReserved,
    m.ProductsUnavailable,
    m.PaymentAuthorized,
    m.PaymentFailed,
    m.PaymentCancelled,
    m.ProductsReleased,
    m.OrderApproved,
    m.OrderRejected,
    m.StepTimedOut,
)
DEADLINE_RESCAN_SECONDS = 30.0


def saga_key(message: object) -> str:
    """The saga id a message belongs to: its record key must be this."""
    if isinstance(message, m.OrderRequested):
        return message.order_id
    return str(message.saga_id)  # type: ignore[attr-defined]


class DeadlineWatch:
    """Deadlines of the open sagas on this worker's partitions, kept in memory.

    The agent updates it on every write; a periodic scan of the table rebuilds it after a
    restart or rebalance (rows recovered from the changelog never pass through the agent).
    """

    def __init__(self) -> None:
        self.open: dict[bytes, m.SagaState] = {}
        self.fired: set[tuple[bytes, str, int]] = set()
        self.needs_rescan = True
        self.last_scan = 0.0

    def update(self, key: bytes, state: m.SagaState) -> None:
        if state.deadline is None:
            self.open.pop(key, None)
        else:
            self.open[key] = state

    def rescan(self, rows: Any, monotonic_now: float) -> None:
        self.open = {
            key: state for key, state in rows if state is not None and state.deadline is not None
        }
        self.needs_rescan = False
        self.last_scan = monotonic_now

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
        self.watch = DeadlineWatch()
        self.inputs = raw_topic(self.app, REQUEST_TOPIC, REPLY_TOPIC)
        self.agent = self.app.agent(self.inputs, name="run_sagas")(self._run)
        self.app.timer(interval=1.0)(self._fire_deadlines)
        self.app.on_rebalance_complete.connect(self._on_rebalance)
        __import__("orchestrator.views").views.register_views(self)

    async def _run(self, stream: faust.StreamT) -> None:
        async for event, message in decoded_events(self.app, stream, INPUTS, key_of=saga_key):
            try:
                await self.handle(cast(bytes, event.key), message)  # checked by key_of
            except Exception as exc:  # one bad record must not stop the saga engine
                await dead_letter_event(self.app, event, exc)

    async def handle(self, key: bytes, message: object) -> None:
        state = self.sagas.get(key)
        decision = decide(state, message, utc_now())
        if decision.state is not None and decision.state is not state:
            self.sagas[key] = decision.state
            self.watch.update(key, decision.state)
        for command in decision.commands:
            topic, command_key = route(command)
            await self.sender.send(topic, command_key, command)
        for saga_event in decision.events:
            await self.sender.send(EVENTS_TOPIC, key, saga_event)

    async def _on_rebalance(self, *args: Any, **kwargs: Any) -> None:
        self.watch.needs_rescan = True

    async def _fire_deadlines(self) -> None:
        if self.app.rebalancing or self.app.in_recovery:
            return
        loop_now = self.app.loop.time()
        if self.watch.needs_rescan or loop_now - self.watch.last_scan > DEADLINE_RESCAN_SECONDS:
            self.watch.rescan(self.sagas.items(), loop_now)
        for key, timeout in self.watch.due(utc_now()):
            log.info(
                "deadline passed: saga %s step %s attempt %s", key, timeout.step, timeout.attempt
            )
            await self.sender.send(REPLY_TOPIC, key, timeout)


def build(web_port: int | None = None, **app_options: Any) -> OrchestratorService:
    port = web_port or int(os.environ.get("SAGA_ORCHESTRATOR_PORT", DEFAULT_WEB_PORT))
    return OrchestratorService(web_port=port, **app_options)
