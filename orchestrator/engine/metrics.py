"""The saga engine's Prometheus metrics, recorded where the engine decides.

The runner calls `written` once a decided record's row is written (its commands and
SagaEvents are in Kafka then), with the row before and after and the decision's events,
and `deadline_fired` when its timer sends a StepTimedOut. Everything is read from the
rows and events `decide` made: no clock is read here. Times are the rows' `updated_at`
(the orchestrator's clock when it decided, to the millisecond), so:

- saga duration: from the decision on the request (`created_at`) to the decision that
  made the saga terminal;
- step reply latency: from the decision that sent the step's command (its latest attempt:
  a re-send restarts it) to the decision on the reply that moved the saga on. It covers
  both topics, the participant and the orchestrator's queue; replies that change nothing
  (stale, duplicate) are not measured.

Labels are bounded: saga type, state, step, reply type. Never a saga id or a customer.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from messaging.metrics import Children
from schemas.messages import SagaEvent, StepTimedOut

START = "START"  # the from_state label of a saga's first transition (as the CLI shows it)
# From a few milliseconds (a quick reply) to the re-send deadlines' minutes.
REPLY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
REPLY_BUCKETS += (1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DURATION_BUCKETS += (30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class SagaMetrics:
    """Sagas started and ended, transitions, durations, reply latencies, deadlines."""

    def __init__(self, registry: CollectorRegistry) -> None:
        started = Counter(
            "saga_started",
            "Sagas started (their request decided), by saga type.",
            ["saga"],
            registry=registry,
        )
        ended = Counter(
            "saga_ended",
            "Sagas ended, by saga type and outcome (the terminal state).",
            ["saga", "outcome"],
            registry=registry,
        )
        transitions = Counter(
            "saga_transitions",
            "Transitions written, by saga type, from state (START for a new saga) and to "
            "state; a re-send is a transition from a state to itself.",
            ["saga", "from_state", "to_state"],
            registry=registry,
        )
        duration = Histogram(
            "saga_duration_seconds",
            "Seconds from a saga's request to its terminal state, by saga type and outcome.",
            ["saga", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        reply = Histogram(
            "saga_step_reply_seconds",
            "Seconds from sending a step's command (its latest attempt) to deciding the "
            "reply that moved the saga on, by saga type, step and reply type.",
            ["saga", "step", "reply"],
            buckets=REPLY_BUCKETS,
            registry=registry,
        )
        deadlines = Counter(
            "saga_deadlines_fired",
            "StepTimedOut messages the deadline timer sent, by saga type and step.",
            ["saga", "step"],
            registry=registry,
        )
        resends = Counter(
            "saga_resends",
            "Commands re-sent after a deadline (same step, next attempt), by saga type and step.",
            ["saga", "step"],
            registry=registry,
        )
        self.started = Children(started.labels)
        self.ended = Children(ended.labels)
        self.transitions = Children(transitions.labels)
        self.duration = Children(duration.labels)
        self.reply = Children(reply.labels)
        self.deadlines = Children(deadlines.labels)
        self.resends = Children(resends.labels)

    def written(
        self, before: Any, after: Any, events: Iterable[SagaEvent], trigger: object
    ) -> None:
        """Count the transitions of one decided record whose row is now written: `before`
        is the row it read (None for a new saga), `after` the row it wrote."""
        for event in events:
            saga = event.saga or "unknown"  # every event `decide` makes names its saga
            if event.from_state is None:
                self.started(saga).inc()
                self.transitions(saga, START, event.to_state).inc()
            else:
                self.transitions(saga, event.from_state, event.to_state).inc()
                if isinstance(trigger, StepTimedOut):
                    if event.from_state == event.to_state:
                        self.resends(saga, trigger.step).inc()
                elif before is not None and before.step is not None:
                    waited = (after.updated_at - before.updated_at).total_seconds()
                    self.reply(saga, before.step, type(trigger).__name__).observe(waited)
            if event.terminal:
                self.ended(saga, event.to_state).inc()
                took = (after.updated_at - after.created_at).total_seconds()
                self.duration(saga, event.to_state).observe(took)

    def deadline_fired(self, saga: str, step: str) -> None:
        self.deadlines(saga, step).inc()
