"""A participant worker's Prometheus metrics: records handled and replies sent.

Labels are bounded: message type, outcome. Dead letters (undecodable records among them)
are counted by `messaging.metrics` for every worker.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from messaging.metrics import Children

PROCESSED = "processed"  # the handler ran to the end (a duplicate included)
DEAD_LETTERED = "dead_lettered"  # the handler failed: the record went to saga.dead-letters


class ParticipantMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        records = Counter(
            "saga_participant_records",
            "Decoded records a participant handled, by message type and outcome "
            f"({PROCESSED}, or {DEAD_LETTERED} when its handler failed).",
            ["message", "outcome"],
            registry=registry,
        )
        replies = Counter(
            "saga_participant_replies",
            "Replies a participant sent to the orchestrator, by reply type and outcome "
            "(SUCCESS or FAILURE); a duplicate command's reply is sent, and counted, again.",
            ["reply", "outcome"],
            registry=registry,
        )
        self.records = Children(records.labels)
        self.replies = Children(replies.labels)

    def handled(self, message: object, outcome: str) -> None:
        self.records(type(message).__name__, outcome).inc()

    def replied(self, reply: object) -> None:
        outcome = getattr(reply, "outcome", None)
        name = getattr(outcome, "name", None) or str(outcome)
        self.replies(type(reply).__name__, name).inc()
