"""What every participant worker shares: decoding, per-record error handling, replies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import faust

from messaging import metrics
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

        async def run(stream: faust.StreamT) -> None:
            async for event, message in decoded_events(app, stream, expected, key_of=key_of):
                try:
                    key, offset = cast(bytes, event.key), event.message.offset
                    handlers[type(message)](key, message, offset)
                except WORKER_FAILURES as exc:  # not the record's fault: stop, replay later
                    await stop_worker(app, exc)
                    return
                except Exception as exc:  # one bad record must not stop the service
                    await dead_letter_event(app, event, exc)
                    if counted is not None:
                        counted.handled(message, DEAD_LETTERED)
                else:
                    if counted is not None:
                        counted.handled(message, PROCESSED)

        run.__name__ = name
        run.__qualname__ = name
        return app.agent(raw_topic(app, topic), name=name)(run)

    def reply(self, reply: Any) -> None:
        self.sender.send(REPLY_TOPIC, reply.saga_id.encode(), reply)
        if self.metrics is not None:
            self.metrics.replied(reply)
