"""Broker faults of a chaos run on the local three-broker cluster (`saga chaos --brokers
3`), and what they cost the sagas.

`NodeKiller` runs one planned kill in a thread of its own: it finds the node (the one
leading most `saga.replies` partitions, or the active controller), SIGKILLs it, restarts
it after the planned pause and waits until it is back in the ISR of every partition it
replicates, noting the wall-clock time of each step.

What a kill cost is read afterwards from the run's SagaEvents, whose `at` is when the
orchestrator decided each transition (pure functions, tested without a broker):

- the longest stall: the longest time, from the kill until the node is back in every
  ISR (plus `AFTERMATH` seconds), in which sagas of the run were open (placed, not
  ended) and none made a transition;
- the deadlines in its window: transitions on `StepTimedOut` whose wait overlapped the
  kill's window while no worker of the services the step waits on (the orchestrator and
  the step's participant) was down. Deadlines whose wait overlapped a worker's downtime
  are counted apart: the worker faults go on during broker kills.

A worker (re)started while a node is down may exit at start-up: Faust declares its
tables' changelog topics, and aiokafka sends that CreateTopics request to the node the
cached metadata names as controller, the dead one (NodeNotReadyError). Its supervisor
restarts it, as after any start-up failure; the run counts these apart
(`WorkerFaults.startup_failures_node_down`) rather than as crashes.

Both are upper bounds of what the kill cost: a stall or deadline in the window may also
come from anything else slowing the run then (a backlog left by worker faults, a
machine too busy to keep up). `saga chaos --brokers 3 --kills 0 --terms 0` measures
the kills alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chaos.plan import BrokerTarget, NodeKill
from messaging import local_broker
from orchestrator.sagas import SAGAS, create_order
from schemas import messages as m

Log = Callable[[str], None]

REPLIES = "saga.replies"
AFTERMATH = 5.0  # seconds after the node is back in every ISR still counted as the kill's
ISR_TIMEOUT = 120.0
DEADLINE_TRIGGER = "StepTimedOut"


@dataclass
class KillRecord:
    """One node kill: when each step happened (wall clock, time.time()) and what it found."""

    target: str
    planned_down: float
    node: int | None = None
    led: str = ""  # "4/12 saga.replies partitions", or that it was the controller
    killed_at: float | None = None
    restarted_at: float | None = None
    answered_after: float | None = None  # seconds from the restart until it answered
    in_sync_after: float | None = None  # seconds from answering until in every ISR
    back_at: float | None = None  # in every ISR again
    error: str = ""  # what went wrong (the node not found, not back in sync, ...)
    longest_stall: float = 0.0
    stall_from: float | None = None  # wall clock
    deadlines: int = 0  # deadlines in its window, no worker of the step down meanwhile
    deadlines_during_worker_faults: int = 0  # ... with one down

    def window(self) -> tuple[float, float] | None:
        """(from, to) wall clock of the kill's effect: the kill until back in every ISR
        plus AFTERMATH (None if the node was never killed)."""
        if self.killed_at is None:
            return None
        end = self.back_at if self.back_at is not None else self.killed_at + ISR_TIMEOUT
        return self.killed_at, end + AFTERMATH

    def summary(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "node": self.node,
            "led": self.led,
            "down_s": _round(self.restarted_at, self.killed_at),
            "answered_after_s": _maybe(self.answered_after),
            "in_every_isr_after_s": _maybe(self.in_sync_after),
            "longest_stall_s": round(self.longest_stall, 2),
            "deadlines": self.deadlines,
            "deadlines_during_worker_faults": self.deadlines_during_worker_faults,
            "error": self.error,
        }


def _maybe(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _round(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else round(later - earlier, 2)


class NodeKiller:
    """Executes planned node kills, one thread each, never two at once; tells
    `going_down` before a kill and `back` once the node is in every ISR again (or the
    kill failed)."""

    def __init__(self, log: Log, going_down: Callable[[], None], back: Callable[[], None]) -> None:
        self.log = log
        self.going_down = going_down
        self.back = back
        self.records: list[KillRecord] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()  # one kill at a time: the cluster survives one loss

    def start(self, kill: NodeKill) -> None:
        record = KillRecord(str(kill.target), kill.down)
        self.records.append(record)
        thread = threading.Thread(target=self._run, args=(kill, record), name="node-kill")
        self.threads.append(thread)
        thread.start()

    @property
    def busy(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def join(self) -> None:
        for thread in self.threads:
            thread.join()

    def _run(self, kill: NodeKill, record: KillRecord) -> None:
        with self.lock:
            try:
                self._kill(kill, record)
            except Exception as exc:  # reported, and it fails the run
                record.error = f"{type(exc).__name__}: {exc}"
                self.log(f"  broker kill ({kill.target}) failed: {record.error}")
            finally:
                self.back()

    def _kill(self, kill: NodeKill, record: KillRecord) -> None:
        if kill.target is BrokerTarget.BUSIEST_LEADER:
            counts = local_broker.leader_counts(REPLIES)
            node = local_broker.busiest_leader(REPLIES)
            record.led = f"{counts[node]}/{sum(counts.values())} {REPLIES} partitions"
        else:
            found = local_broker.active_controller()
            if found is None:
                raise local_broker.BrokerError("the metadata quorum names no leader")
            node = found
            record.led = "the active controller"
        record.node = node
        self.going_down()
        local_broker.kill_node(node)
        record.killed_at = time.time()
        self.log(f"  SIGKILL broker node {node} ({record.led})")
        time.sleep(kill.down)
        record.restarted_at = time.time()
        record.answered_after = local_broker.restart_node(node)
        record.in_sync_after = local_broker.wait_until_in_every_isr(node, timeout=ISR_TIMEOUT)
        record.back_at = time.time()
        self.log(
            f"  broker node {node} answers {record.answered_after:.1f}s after its restart, "
            f"in every ISR {record.in_sync_after:.1f}s later"
        )


# ---- what the kills cost (pure) ----


Interval = tuple[float, float]  # wall clock (from, to)


@dataclass(frozen=True)
class Deadline:
    """A transition on StepTimedOut: the saga waited from `waited_from` to `fired_at` on
    `participant` (with the orchestrator)."""

    saga_id: str
    participant: str
    waited_from: float
    fired_at: float


def participants_by_state() -> dict[tuple[str, str], str]:
    """(saga type name, waiting state) -> the participant its step waits on."""
    found: dict[tuple[str, str], str] = {}
    for saga in SAGAS:
        for definition in saga.definitions:
            steps = {step.name: step.participant for step in definition.steps}
            for state in definition.states:
                if state.step is not None:
                    found[(saga.name, state.name)] = steps[state.step]
    return found


def deadlines(
    events: Mapping[str, Sequence[m.SagaEvent]],
    participants: Mapping[tuple[str, str], str] | None = None,
) -> list[Deadline]:
    """Every transition on StepTimedOut of the run, with the wait it ended."""
    participants = participants_by_state() if participants is None else participants
    found = []
    for saga_id, saga_events in events.items():
        by_sequence = {event.sequence: event for event in saga_events}
        for event in by_sequence.values():
            if event.trigger != DEADLINE_TRIGGER or event.from_state is None:
                continue
            before = by_sequence.get(event.sequence - 1)
            saga = event.saga or create_order.NAME
            participant = participants.get((saga, event.from_state), "?")
            began = (before or event).at.timestamp()
            found.append(Deadline(saga_id, participant, began, event.at.timestamp()))
    return found


def merged(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of `intervals` as sorted disjoint intervals."""
    found: list[Interval] = []
    for start, end in sorted(intervals):
        if found and start <= found[-1][1]:
            found[-1] = (found[-1][0], max(found[-1][1], end))
        else:
            found.append((start, end))
    return found


def longest_stall(
    times: Sequence[float], window: Interval, busy: Sequence[Interval] | None = None
) -> tuple[float, float]:
    """(seconds, start) of the longest stretch of `window` without any of `times`
    (sorted) while the system was `busy` (sorted disjoint intervals; default: always)."""
    start, end = window
    busy = [(start, end)] if busy is None else busy
    longest, at = 0.0, start
    previous = start
    for moment in [*(t for t in times if start < t < end), end]:
        for busy_from, busy_to in busy:  # the part of the gap in which sagas were open
            gap_from, gap_to = max(previous, busy_from), min(moment, busy_to)
            if gap_to - gap_from > longest:
                longest, at = gap_to - gap_from, gap_from
        previous = moment
    return longest, at


def open_intervals(
    events: Mapping[str, Sequence[m.SagaEvent]], placed: Mapping[str, float]
) -> list[Interval]:
    """When sagas were open: from each request's placing (wall clock) until its saga's
    terminal event, or forever if it has none."""
    ends = {
        saga_id: min((e.at.timestamp() for e in saga if e.terminal), default=float("inf"))
        for saga_id, saga in events.items()
    }
    return merged((at, ends.get(saga_id, float("inf"))) for saga_id, at in placed.items())


def overlaps(a: Interval, b: Interval) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def charge(
    records: Iterable[KillRecord],
    events: Mapping[str, Sequence[m.SagaEvent]],
    placed: Mapping[str, float],
    worker_down: Mapping[str, Sequence[Interval]],
    participants: Mapping[tuple[str, str], str] | None = None,
) -> None:
    """Fill in each kill's longest stall and the deadlines in its window (see the module).
    `placed`: saga id -> when its request was placed; `worker_down`: service -> when one
    of its workers was down (wall clock, like both)."""
    times = sorted(event.at.timestamp() for saga in events.values() for event in saga)
    busy = open_intervals(events, placed)
    fired = deadlines(events, participants)
    for record in records:
        window = record.window()
        if window is None:
            continue
        record.longest_stall, record.stall_from = longest_stall(times, window, busy)
        for deadline in fired:
            wait = (deadline.waited_from, deadline.fired_at)
            if not overlaps(wait, window):
                continue
            services = ("orchestrator", deadline.participant)
            if any(overlaps(wait, down) for s in services for down in worker_down.get(s, ())):
                record.deadlines_during_worker_faults += 1
            else:
                record.deadlines += 1
