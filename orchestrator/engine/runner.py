"""SagaRunner: one Faust agent runs every saga type it is given on one `sagas` table.

I/O only: read the saga's row, call the pure `decide`, send the commands and the
SagaEvents, write the row once the broker has them (WriteAfterSend). Requests of every
saga type come on one request topic, replies (and StepTimedOut) on the reply topic, both
keyed by saga id and co-partitioned with the table. A deadline timer sends StepTimedOut to
the reply topic; it never writes the table (only the agent that owns a key's partition
may). A reply read before its saga's request waits for it (EarlyReplies).

Which saga a message belongs to: a request by its type (each saga type has its own), a
reply by the row it finds (each saga type has its own row type). A row finishes on the
definition version it started on; a deploy that no longer has it is refused at start-up.

Retention: the same timer sends an ExpireSaga to saga.operations for each saga that ended
more than the retention ago (ExpiryIndex), and the agent deletes its row there and tells
its participants to forget it (orchestrator/engine/retention.py).

Traces (messaging/tracing.py): everything sent for a saga carries the saga's trace
context. The row remembers the context its saga started with (`traceparent`, when the
row type has that field); a record of the same trace (a reply) is handled in its own
context, one without context or of another trace (a timer's StepTimedOut, an operator's
action) in the row's, linked to the other trace. A request that comes without context
starts a trace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any, cast

import faust
from faust.types import TP, EventT, StreamT

from messaging import metrics, tracing
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
from orchestrator.engine.deadlines import DeadlineWatch
from orchestrator.engine.early_replies import EarlyReplies
from orchestrator.engine.machine import (
    Decision,
    DefinitionMissing,
    act,
    decide,
    definition_of,
    expire,
    forgotten,
)
from orchestrator.engine.metrics import SagaMetrics
from orchestrator.engine.retention import ExpiryIndex, configured_retention
from orchestrator.engine.saga import SagaType
from schemas.limits import id_problem
from schemas.messages import AbortSaga, ExpireSaga, RetrySaga, StepTimedOut

log = logging.getLogger(__name__)

REPLY_TOPIC = "saga.replies"
EVENTS_TOPIC = "saga.events"
OPERATIONS_TOPIC = "saga.operations"  # operator actions, co-partitioned with the table
ANSWERS_TOPIC = "saga.operations.answers"
ACTIONS = (AbortSaga, RetrySaga)
TABLE = "sagas"


class SagaRunner:
    """The Faust app, its `sagas` table, agent and deadline timer, for one worker."""

    def __init__(
        self,
        sagas: Sequence[SagaType],
        *,
        app_id: str,
        web_port: int,
        retention: timedelta | str | None = None,
        **app_options: Any,
    ) -> None:
        # How long a terminal saga stays (None: SAGA_RETENTION, else 7 days): checked
        # first, so a bad value stops the worker before it touches anything.
        self.retention = configured_retention(retention)
        self.saga_types = tuple(sagas)
        self.by_request = {saga.request: saga for saga in self.saga_types}
        self.by_row = {saga.row: saga for saga in self.saga_types}
        self.request_topic = _one_request_topic(self.saga_types)
        replies = {reply for saga in self.saga_types for reply in saga.replies}
        # The answers of the sagas' forget gates come on the reply topic too.
        self.forget_answers = {s.forget.answer for s in self.saga_types if s.forget.answer}
        replies |= self.forget_answers
        # Only requests start sagas and only replies move them, each on its own topic: a
        # reply on the request topic (or a request on the reply topic) is dead-lettered.
        self.inputs_by_topic: Mapping[str, tuple[type, ...]] = {
            self.request_topic: tuple(self.by_request),
            REPLY_TOPIC: (*sorted(replies, key=lambda t: t.__name__), StepTimedOut),
            OPERATIONS_TOPIC: (*ACTIONS, ExpireSaga),
        }
        self.app = create_app(app_id, web_port=web_port, **app_options)
        self.sagas = typed_table(self.app, TABLE)
        self.sagas.check_row = self.check_version
        self.sender = Sender(self.app)
        self.writer = WriteAfterSend(self.app, self.sender)
        self.watch = DeadlineWatch()
        worker_metrics = metrics.metrics_of(self.app)  # None: SAGA_METRICS=0
        self.metrics = None if worker_metrics is None else SagaMetrics(worker_metrics.registry)
        self.tracer = tracing.tracer_of(self.app)  # None: tracing off
        # Row types that remember their saga's trace context.
        self.traced_rows = frozenset(
            saga.row
            for saga in self.saga_types
            if "traceparent" in {f.name for f in dataclasses.fields(saga.row)}
        )
        self.expiry = ExpiryIndex(self.retention)
        self.early = self._early_replies()
        # The agent and the deadline timer both decide records (the timer: held replies
        # given up); one at a time, or a saga's replies could be decided out of order.
        self.deciding = asyncio.Lock()
        self.inputs = raw_topic(self.app, self.request_topic, REPLY_TOPIC, OPERATIONS_TOPIC)
        self.agent = self.app.agent(self.inputs, name="run_sagas")(self._run)
        self.app.timer(interval=1.0)(self._fire_deadlines)
        self.app.on_rebalance_complete.connect(self._on_rebalance)

    # ---- which saga ----

    def saga_of(self, message: object, row: Any | None) -> SagaType | None:
        """The saga type `message` belongs to: a request's, or the row's."""
        saga = self.by_request.get(type(message))
        if saga is None and row is not None:
            saga = self.by_row.get(type(row))
        return saga

    def saga_key(self, message: object) -> str:
        """The saga id a message belongs to: its record key must be this."""
        saga = self.by_request.get(type(message))
        if saga is not None:
            return saga.saga_id(message)
        return str(message.saga_id)  # type: ignore[attr-defined]

    def saga_id_problem(self, message: object) -> str | None:
        """Why a request's saga id cannot be one (any other problem it has ends its saga
        at once, with the reason: see `decide`)."""
        saga = self.by_request.get(type(message))
        return None if saga is None else id_problem("saga id", saga.saga_id(message))

    def check_version(self, key: bytes, row: Any) -> None:
        """Refuse a saga in flight on a definition version this deploy lacks (a terminal
        one waits for nothing: it needs none)."""
        saga = self.by_row.get(type(row))
        if saga is not None and row.step is not None:
            definition_of(saga, row)  # raises DefinitionMissing

    # ---- the agent ----

    def _early_replies(self) -> EarlyReplies:
        def request_end(partition: int) -> int | None:
            try:
                end = self.app.consumer.highwater(TP(self.request_topic, partition))
            except Exception:  # no consumer (yet): unknown
                return None
            return None if end is None else int(end)

        def request_committed(partition: int) -> int | None:
            offsets = getattr(self.app.consumer, "_committed_offset", {})  # Faust's own
            committed = offsets.get(TP(self.request_topic, partition))
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
                self.app,
                stream,
                self.inputs_by_topic,
                key_of=self.saga_key,
                problem_of=self.saga_id_problem,
            ):
                async with self.deciding:
                    if not await self.process(stream, event, message):
                        return
                    if type(message) in self.by_request:
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
        row = self.writer.read(self.sagas, key)
        if (
            not held
            and type(message) not in self.by_request
            and not isinstance(message, (*ACTIONS, ExpireSaga))
            # a forget is asked only of a row written long ago: without it, a duplicate
            and type(message) not in self.forget_answers
            and self.early.should_hold(stream, event, message, row is not None)
        ):
            return  # decided by release_early_replies, once its request was processed
        record = event.message
        parent, link = self.trace_parent(tracing.traceparent_in(record.headers), row)
        if self.tracer is None:  # tracing off: the saga's context goes on unchanged
            await self.decide_and_send(stream, event, message, key, row, parent)
            return
        span = self.tracer.start(
            message, record.topic, record.partition, record.offset, parent, link
        )
        try:
            decision = await self.decide_and_send(
                stream, event, message, key, row, self.tracer.traceparent(span)
            )
        except Exception as exc:
            failed = tracing.FAILED if isinstance(exc, WORKER_FAILURES) else tracing.DEAD_LETTERED
            self.tracer.end(span, failed, exc)
            raise
        outcome, attributes = self.outcome(row, decision)
        self.tracer.end(span, outcome, attributes=attributes)

    def trace_parent(self, incoming: bytes | None, row: Any) -> tuple[bytes | None, bytes | None]:
        """(the context a record of the saga of `row` is handled in, another trace it
        came with): its own if it is in the saga's trace (or the saga has none), else the
        saga's, linked to the record's."""
        saga_trace = getattr(row, "traceparent", None) if row is not None else None
        if saga_trace is None:
            return incoming, None
        saga_trace = tracing.valid(saga_trace)
        if incoming is None or saga_trace is None:
            return incoming or saga_trace, None
        if incoming[3:35] == saga_trace[3:35]:  # the same trace id
            return incoming, None
        return saga_trace, incoming

    async def decide_and_send(
        self,
        stream: faust.StreamT,
        event: EventT,
        message: object,
        key: bytes,
        row: Any,
        context: bytes | None,
    ) -> Decision:
        """Decide `message` for the saga of `row` and send what the decision says, in
        the trace `context` (the row of a new saga remembers it; a saga that starts
        without one starts a trace)."""
        saga = self.saga_of(message, row)
        if isinstance(message, ACTIONS):
            decision = act(saga, row, message, utc_now())
        elif isinstance(message, ExpireSaga):
            decision = expire(saga, row, message, utc_now())
        elif type(message) in self.forget_answers:
            decision = forgotten(saga, row, message, utc_now())
        elif saga is None:
            decision = Decision(row)
        else:
            decision = decide(saga, row, message, utc_now())
        # The row is written only once the broker has the commands and events: the other
        # order lets a crash keep a transition whose messages were lost (the re-processed
        # input is then stale, and e.g. a lost ORDER_APPROVED event leaves the stock
        # reserved for ever).
        outputs: list[tuple[str, bytes, object]] = []
        if saga is not None:
            outputs += [(*saga.route(command), command) for command in decision.commands]
        outputs += [(EVENTS_TOPIC, key, saga_event) for saga_event in decision.events]
        if decision.answer is not None:
            outputs.append((ANSWERS_TOPIC, key, decision.answer))
        rows: list[Row] = []
        on_written = None
        new_row = decision.state
        if decision.deleted or (new_row is not None and new_row is not row):
            if (
                new_row is not None
                and type(new_row) in self.traced_rows
                and new_row.traceparent is None
            ):  # a new saga (or one of an earlier release): it remembers its trace
                context = context or tracing.new_traceparent()
                new_row = dataclasses.replace(new_row, traceparent=context.decode("ascii"))
            # An expired row is deleted (None: a tombstone in the changelog) the same way,
            # once the broker has its forget commands.
            written = None if decision.deleted else new_row
            rows.append((self.sagas, key, written))
            # The deadline and expiry indexes (and the metrics) follow written rows only: a
            # send that fails leaves the row, and so the deadline of its real state, as
            # they were.
            on_written = partial(self.row_written, key, written, row, decision, message)
        await self.writer.submit(stream, event, outputs, rows, on_written, tracing.headers(context))
        return decision

    @staticmethod
    def outcome(row: Any, decision: Decision) -> tuple[str, dict[str, Any]]:
        """The outcome of a decided record, and the saga's state after it, for its span."""
        after = decision.state
        if decision.deleted:
            outcome = "deleted"
        elif after is None or after is row:
            outcome = "unchanged"  # stale, duplicate, refused, or no saga
        elif row is None:
            outcome = "started"
        else:
            outcome = "moved" if after.state != row.state else "resent"
        if decision.answer is not None:
            outcome = "accepted" if decision.answer.accepted else "refused"
        attributes: dict[str, Any] = {}
        if after is not None:
            attributes["saga.state"] = after.state
            if after.step is not None:  # the step the saga waits for now
                attributes["saga.next_step"] = after.step
        return outcome, attributes

    def row_written(
        self, key: bytes, row: Any | None, before: Any, decision: Decision, message: object
    ) -> None:
        """The agent wrote `row` (None: deleted it): the indexes and metrics follow."""
        self.watch.update(key, row)
        self.expiry.update(key, row)
        if self.metrics is not None and row is not None:
            try:
                self.metrics.written(before, row, decision.events, message)
            except Exception:  # a metric must never stop the engine
                log.exception("recording the metrics of saga %r failed", key)

    # ---- deadlines ----

    async def _on_rebalance(self, *args: Any, **kwargs: Any) -> None:
        self.watch.needs_rescan = True
        self.early.drop_revoked(set(self.app.consumer.assignment()))

    async def _fire_deadlines(self) -> None:
        # No parameters: Faust passes the app to a timer that takes one.
        await self.fire_deadlines(utc_now())

    async def fire_deadlines(self, now: datetime) -> None:
        """Send a StepTimedOut to the reply topic for each saga whose deadline passed."""
        if self.app.rebalancing or self.app.in_recovery or self.app.should_stop:
            return
        try:
            if self.early.held:  # e.g. held past HOLD_LIMIT_SECONDS with no new records
                async with self.deciding:
                    await self.release_early_replies()
            if self.watch.needs_rescan:
                self.expiry.begin_rescan()
                await self.watch.rescan(self._indexed(self._versions_checked(self.sagas.items())))
                self.expiry.end_rescan()
            for key, timeout in self.watch.due(now):
                log.info(
                    "deadline passed: saga %s step %s attempt %s",
                    key,
                    timeout.step,
                    timeout.attempt,
                )
                row = self.watch.open.get(key)
                self.sender.send(REPLY_TOPIC, key, timeout, headers=self.saga_trace(row))
                if self.metrics is not None:
                    saga = self.by_row.get(type(row))
                    self.metrics.deadline_fired(saga.name if saga else "unknown", timeout.step)
            for key, expiry in self.expiry.due(now):
                log.debug("retention passed: saga %s ended by %s", key, expiry.ended_by)
                row = self.writer.read(self.sagas, key)
                self.sender.send(OPERATIONS_TOPIC, key, expiry, headers=self.saga_trace(row))
        except DefinitionMissing as exc:
            await stop_worker(self.app, exc)
        except Exception:
            # Timers outlive the table and the producer while the worker stops: failing
            # then would crash the app (exit 1). Unsent deadlines fire after the restart.
            if not self.app.should_stop:
                raise

    @staticmethod
    def saga_trace(row: Any) -> tracing.Headers | None:
        """The headers that put a record the timer sends into the trace of `row`'s saga."""
        return tracing.headers(tracing.valid(getattr(row, "traceparent", None)))

    def _indexed(self, rows: Any) -> Iterator[tuple[bytes, Any]]:
        for key, row in rows:
            self.expiry.found(key, row)
            yield key, row

    def _versions_checked(self, rows: Any) -> Iterator[tuple[bytes, Any]]:
        for key, row in rows:
            self.check_version(key, row)
            yield key, row


def _one_request_topic(sagas: Sequence[SagaType]) -> str:
    """The request topic of every saga type (one, co-partitioned with the replies and the
    table: EarlyReplies follows its progress)."""
    topics = {saga.request_topic for saga in sagas}
    if len(topics) != 1:
        raise ValueError(f"the sagas of one runner share one request topic, not {sorted(topics)}")
    requests = [saga.request for saga in sagas]
    if len(set(requests)) != len(requests) or len({s.row for s in sagas}) != len(sagas):
        raise ValueError("each saga type needs a request type and a row type of its own")
    return topics.pop()
