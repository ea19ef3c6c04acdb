"""What every participant worker shares: decoding, per-record error handling, replies,
and the trace context of what a record's handler sends (messaging/tracing.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import faust

from messaging import metrics, tracing
from messaging.faust_app import (
    WORKER_FAILURES,
    Sender,
    create_app,
    dead_letter_event,
    decoded_events,
    raw_topic,
    stop_worker,
)
from participants.metrics import DEAD_LETTERED, PROCESSED, ParticipantMetrics
from schemas.messages import Outcome

REPLY_TOPIC = "saga.replies"

# A handler gets the record's key, its decoded message and its offset (replays after a
# crash are recognised by it: see the participants' logic).
Handler = Callable[[bytes, Any, int], None]


class ParticipantService:
    """A Faust app whose agents decode records and hand typed messages to handlers."""

    def __init__(self, app_id: str, web_port: int, **app_options: Any) -> None:
        self.app = create_app(app_id, web_port=web_port, **app_options)
        self.sender = Sender(self.app)
        worker_metrics = metrics.metrics_of(self.app)  # None: SAGA_METRICS=0
        self.metrics = (
            None if worker_metrics is None else ParticipantMetrics(worker_metrics.registry)
        )
        self.tracer = tracing.tracer_of(self.app)  # None: tracing off
        # The headers of every record the handler of the current record sends: its trace
        # context (the record's own with tracing off, its span's with tracing on). Handlers
        # are synchronous, so no other record's handler runs meanwhile.
        self.outgoing: tracing.Headers | None = None
        self.outcome: str | None = None  # what the current record's handler sent, for its span

    def consume(
        self,
        topic: str,
        handlers: dict[type, Handler],
        key_of: Callable[[Any], str],
        name: str,
    ) -> faust.types.AgentT:
        """An agent on `topic` dispatching each decoded message to the handler of its type."""
        expected = {topic: tuple(handlers)}
        app = self.app
        counted = self.metrics
        tracer = self.tracer

        async def run(stream: faust.StreamT) -> None:
            async for event, message in decoded_events(app, stream, expected, key_of=key_of):
                record = event.message
                incoming = tracing.traceparent_in(record.headers)
                span = None
                if tracer is None:  # tracing off: the record's context goes on unchanged
                    self.outgoing = tracing.headers(incoming)
                else:
                    span = tracer.start(
                        message, record.topic, record.partition, record.offset, incoming
                    )
                    self.outgoing = tracing.headers(tracer.traceparent(span))
                    self.outcome = None
                error: Exception | None = None
                try:
                    handlers[type(message)](cast(bytes, event.key), message, record.offset)
                except Exception as exc:
                    error = exc
                self.outgoing = None
                stop = isinstance(error, WORKER_FAILURES)
                if span is not None and tracer is not None:
                    if error is None:
                        tracer.end(span, self.outcome or PROCESSED)
                    else:
                        tracer.end(span, tracing.FAILED if stop else DEAD_LETTERED, error)
                if error is None:
                    if counted is not None:
                        counted.handled(message, PROCESSED)
                elif stop:  # not the record's fault: stop, replay later
                    await stop_worker(app, error)
                    return
                else:  # one bad record must not stop the service
                    await dead_letter_event(app, event, error)
                    if counted is not None:
                        counted.handled(message, DEAD_LETTERED)

        run.__name__ = name
        run.__qualname__ = name
        return app.agent(raw_topic(app, topic), name=name)(run)

    def reply(self, reply: Any) -> None:
        """Send the reply of the record being handled, in its trace."""
        self.sender.send(REPLY_TOPIC, reply.saga_id.encode(), reply, headers=self.outgoing)
        if self.metrics is not None:
            self.metrics.replied(reply)
        if self.tracer is not None:
            outcome = getattr(reply, "outcome", None)
            self.outcome = outcome.value if isinstance(outcome, Outcome) else "replied"

    def forward(self, topic: str, key: bytes, message: Any) -> None:
        """Send a command on to where it continues (a product hop), in the record's trace."""
        self.sender.send(topic, key, message, headers=self.outgoing)
        if self.tracer is not None and self.outcome is None:
            self.outcome = "forwarded"
