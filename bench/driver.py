"""Offer requests to a pipeline at a rate and time each one until its terminal record.

Shared by the saga run and the baseline so both are measured by the same code:

- a fixed rate is an open loop: request i is due i/rate seconds after the start, whatever
  the pipeline does. If --max-in-flight requests are already outstanding, the due request
  is *shed* (counted, not sent): an overloaded pipeline then shows as offered/s below the
  target instead of a backlog that grows for the rest of the benchmark.
- "max" is a closed loop: keep --max-in-flight requests outstanding, send one per
  completion; the offered rate is whatever the pipeline absorbs.

Latency is request send -> terminal record read, both taken with time.monotonic() by this
one process, so clocks never need to agree.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench import stats
from bench.progress import Progress

UNFINISHED = "unfinished"
MAX_WAIT = 0.05  # longest poll while offering: keeps the schedule and the display moving
# Shortest poll: librdkafka counts whole milliseconds, and a 0 ms poll until the next request
# is due would spin a core that the pipeline under test needs.
MIN_WAIT = 0.001


@dataclass(frozen=True)
class Completion:
    key: str
    outcome: str
    received: float  # time.monotonic() when the terminal record was read


class Pipeline(Protocol):
    name: str

    def offer(self, seq: int) -> tuple[str, str]:
        """Send request number `seq`; return its key and its kind (for the outcome mix)."""
        ...

    def poll(self, timeout: float, pending: Container[str]) -> list[Completion]:
        """Terminal records of pending requests read within `timeout` seconds."""
        ...


@dataclass(frozen=True)
class RunSettings:
    rate: stats.Rate
    duration: float
    max_in_flight: int
    drain_timeout: float


@dataclass
class Run:
    """The raw measurements of one run at one rate."""

    settings: RunSettings
    started: float = field(default_factory=time.monotonic)
    offering_ended: float = 0.0
    finished: float = 0.0
    offered: int = 0
    shed: int = 0
    in_flight: dict[str, tuple[float, str]] = field(default_factory=dict)  # key -> (sent, kind)
    latencies_ms: list[float] = field(default_factory=list)
    last_completion: float | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    outcomes_by_kind: defaultdict[str, Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter)
    )

    def complete(self, completion: Completion) -> None:
        sent_and_kind = self.in_flight.pop(completion.key, None)
        if sent_and_kind is None:  # a duplicate terminal record (at-least-once delivery)
            return
        sent, kind = sent_and_kind
        self.latencies_ms.append((completion.received - sent) * 1000)
        self.last_completion = completion.received
        self.outcomes[completion.outcome] += 1
        self.outcomes_by_kind[kind][completion.outcome] += 1

    def summary(self) -> dict[str, Any]:
        """The run as plain JSON values (see bench/README.md for each field)."""
        offering = self.offering_ended - self.started
        completing = (self.last_completion or self.started) - self.started
        outcomes = dict(self.outcomes)
        by_kind = {kind: dict(counts) for kind, counts in self.outcomes_by_kind.items()}
        for _key, (_sent, kind) in self.in_flight.items():
            outcomes[UNFINISHED] = outcomes.get(UNFINISHED, 0) + 1
            by_kind.setdefault(kind, {})
            by_kind[kind][UNFINISHED] = by_kind[kind].get(UNFINISHED, 0) + 1
        return {
            "rate": stats.rate_label(self.settings.rate),
            "target_per_s": self.settings.rate,
            "duration_s": round(offering, 2),
            "offered": self.offered,
            "offered_per_s": stats.per_second(self.offered, offering),
            "shed": self.shed,
            "completed": len(self.latencies_ms),
            "completed_per_s": stats.per_second(len(self.latencies_ms), completing),
            "unfinished": len(self.in_flight),
            "drain_s": round(self.finished - self.offering_ended, 2),
            "latency_ms": stats.latency_summary(self.latencies_ms),
            "outcomes": outcomes,
            "outcomes_by_kind": by_kind,
        }


def drive(pipeline: Pipeline, settings: RunSettings, progress: Progress) -> Run:
    """Offer for settings.duration seconds, then wait for the stragglers; never hangs."""
    run = Run(settings)
    try:
        _offer(pipeline, run, progress)
        _drain(pipeline, run, progress)
    finally:
        progress.close()
    return run


def _send(pipeline: Pipeline, run: Run) -> None:
    sent = time.monotonic()
    key, kind = pipeline.offer(run.offered)
    run.in_flight[key] = (sent, kind)
    run.offered += 1


def _offer(pipeline: Pipeline, run: Run, progress: Progress) -> None:
    rate, window, duration = run.settings.rate, run.settings.max_in_flight, run.settings.duration
    slots = 0  # schedule slots used so far: requests sent plus requests shed
    while (elapsed := time.monotonic() - run.started) < duration:
        if rate is None:
            while len(run.in_flight) < window:
                _send(pipeline, run)
            wait = MAX_WAIT
        else:
            due = stats.due_count(rate, elapsed)
            while slots < due:
                slots += 1
                if len(run.in_flight) < window:
                    _send(pipeline, run)
                else:
                    run.shed += 1
            until_due = stats.seconds_until_due(rate, slots, elapsed)
            wait = min(MAX_WAIT, max(MIN_WAIT, until_due))
        for completion in pipeline.poll(wait, run.in_flight):
            run.complete(completion)
        progress.show(
            elapsed / duration,
            f"{elapsed:5.1f}/{duration:g}s  sent {run.offered}  done {len(run.latencies_ms)}"
            f"  in flight {len(run.in_flight)}",
        )
    run.offering_ended = time.monotonic()


def _drain(pipeline: Pipeline, run: Run, progress: Progress) -> None:
    deadline = run.offering_ended + run.settings.drain_timeout
    while run.in_flight and (now := time.monotonic()) < deadline:
        for completion in pipeline.poll(0.1, run.in_flight):
            run.complete(completion)
        progress.show(
            1.0, f"waiting for {len(run.in_flight)} in flight ({deadline - now:.0f}s left)"
        )
    run.finished = time.monotonic()
