"""A broker killed under load, on a three-broker cluster of its own (issue 18, item 3).

The four services' workers run on the cluster (topics.yaml's `cluster` environment: 3
replicas, min.insync.replicas 2) while orders flow at a steady rate. Meanwhile:

  1. SIGKILL the node that leads the most partitions of saga.replies; the system goes on
     on two nodes; restart it and wait until it is back in every ISR;
  2. SIGKILL the active controller (the metadata quorum's leader); restart it likewise.

Then every saga must have ended exactly once, the stock and money invariants hold (read
from the changelog topics, as `saga chaos` checks them), nothing is dead-lettered, both
nodes are back in every ISR, and no deadline rejected an approvable order.

Deadlines: the first kill waits until the system keeps up with the load, and takes the
busiest leader among the nodes that are not the active controller, so that it is a
broker's failure alone (the second kill is the controller's). No step deadline may fire
because of it: no StepTimedOut for a step waited for while that node was down or
rejoining. The controller's kill adds a quorum election before the dead node is fenced
(about 4 s here, near the 5 s first deadline of retriable steps): the deadlines it causes
are reported, and they may only re-send a command, never reject an order.

Measured and reported, not asserted (the machine is shared): the longest time in which no
saga event reached saga.events around each kill and restart. Printed (`pytest -s`) and
appended as a JSON line to SAGA_HOME/cluster-failover.jsonl of the usual home.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

import pytest
from confluent_kafka import KafkaException, TopicPartition

from chaos import invariants
from chaos import kafka_io as chaos_io
from chaos.plan import INPUT_TOPICS, Plan, make_plan
from chaos.run import observe, seed_catalog
from messaging import client, local_broker, settings
from messaging.dead_letters import DEAD_LETTER_TOPIC
from messaging.faust_app import utc_now
from messaging.local_workers import SERVICE_NAMES, Workers
from orchestrator.engine import DEADLINE
from orchestrator.sagas.create_order import DEFINITION as CREATE_ORDER
from schemas import codec
from schemas import messages as m
from tests.integration.cluster_helpers import Cluster, saga, started_cluster
from tests.ports import free_ports

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RATE = 10.0  # orders per second
MIN_LOAD_SECONDS = 45.0  # orders flow at least this long ...
AFTER_FAULTS_SECONDS = 5.0  # ... and this long after the last node is back in every ISR
MAX_LOAD_SECONDS = 180.0  # the plan's size: more is never placed
# The first kill waits until the system keeps up with the load: at most KEEPING_UP_BACKLOG
# sagas open (about a second of orders) for KEEPING_UP_FOR seconds in a row. Just started,
# three cold JVMs and four workers on two cores fall behind for a while; a kill then would
# find steps near their deadlines already, and the run could not tell what the kill did.
FIRST_KILL_AFTER = 8.0  # seconds into the load, at the earliest
KEEPING_UP_BACKLOG = int(RATE * 1.5)
KEEPING_UP_FOR = 3.0
WARM_UP_LIMIT = 90.0  # then kill anyway, and say the machine never kept up
DOWN_SECONDS = 8.0  # a killed node stays down this long: the system runs on two
BETWEEN_KILLS = 3.0  # after the first node is back in every ISR, before the second kill
SETTLE_TIMEOUT = 120.0
RESULTS = settings.local_home() / "cluster-failover.jsonl"  # the usual home's, not the test's


def report(line: str) -> None:
    print(f"[failover] {line}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with started_cluster(tmp_path_factory.mktemp("failover-home"), report) as running:
        yield running


# ---- what the test measures ----


class EventClock(threading.Thread):
    """Reads saga.events as it is written and notes when each record arrived here
    (time.monotonic()) and the time its producer (the orchestrator) stamped on it."""

    def __init__(self, start: dict[int, int]) -> None:
        super().__init__(name="event-clock", daemon=True)
        self.start_offsets = start
        self.arrived: list[float] = []
        self.stamped: list[float] = []  # as monotonic seconds, like `arrived`
        self.stopping = threading.Event()

    def run(self) -> None:
        # fetch.wait.max.ms 10: a record is seen within ~10 ms of being written.
        consumer = client.consumer(None, **chaos_io.QUIET, **{"fetch.wait.max.ms": 10})
        offset = time.time() - time.monotonic()
        try:
            consumer.assign(
                [TopicPartition("saga.events", p, o) for p, o in self.start_offsets.items()]
            )
            while not self.stopping.is_set():
                for record in consumer.consume(500, 0.05):
                    if record.error() is None:
                        now = time.monotonic()
                        self.arrived.append(now)
                        self.stamped.append(record.timestamp()[1] / 1000 - offset)
        finally:
            consumer.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


def longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch of [start, end] without one of `times` in it."""
    points = [start, *sorted(t for t in times if start < t < end), end]
    return max(b - a for a, b in pairwise(points))


@dataclass
class Faults:
    """Kills and restarts of cluster nodes, at monotonic times; run in a thread of its own
    while the test places orders."""

    began: float
    backlog: Callable[[], int]  # sagas placed and not yet ended
    moments: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)  # "leader"/"controller" -> node id
    answered_after: dict[str, float] = field(default_factory=dict)  # restart to answering
    in_sync_after: dict[str, float] = field(default_factory=dict)  # answering to every ISR
    kept_up_after: float | None = None  # seconds into the load; None: never, in WARM_UP_LIMIT
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)  # kill no more

    def run(self) -> None:
        try:
            controller = local_broker.active_controller()  # its JVM tool takes seconds
            self.at(FIRST_KILL_AFTER)
            self.wait_until_keeping_up()
            # A broker's failure alone: the controller's is the second kill.
            leader = local_broker.busiest_leader("saga.replies", excluding=controller)
            self.kill_and_restart("leader", leader)
            time.sleep(BETWEEN_KILLS)
            controller = local_broker.active_controller()
            assert controller is not None, "the metadata quorum names no leader"
            self.kill_and_restart("controller", controller)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.done.set()

    def at(self, seconds: float) -> None:
        time.sleep(max(0.0, self.began + seconds - time.monotonic()))

    def wait_until_keeping_up(self) -> None:
        """Until the backlog stays small for KEEPING_UP_FOR seconds (or WARM_UP_LIMIT)."""
        small_since: float | None = None
        while (now := time.monotonic()) - self.began < WARM_UP_LIMIT:
            if self.backlog() > KEEPING_UP_BACKLOG:
                small_since = None
            elif small_since is None:
                small_since = now
            elif now - small_since >= KEEPING_UP_FOR:
                self.kept_up_after = now - self.began
                report(f"keeping up with {RATE:.0f} orders/s after {self.kept_up_after:.1f} s")
                return
            time.sleep(0.2)
        report(f"never kept up with {RATE:.0f} orders/s in {WARM_UP_LIMIT:.0f} s: killing anyway")

    def kill_and_restart(self, role: str, node_id: int) -> None:
        """Kill the node, and restart it whatever happens meanwhile."""
        if self.cancelled.is_set():
            return
        self.nodes[role] = node_id
        local_broker.kill_node(node_id)
        self.moments[f"{role} killed"] = time.monotonic()
        report(f"node {node_id} ({role}) killed at {self.seconds(role + ' killed'):.1f} s")
        self.cancelled.wait(DOWN_SECONDS)
        self.moments[f"{role} restarted"] = time.monotonic()
        self.answered_after[role] = local_broker.restart_node(node_id)
        self.in_sync_after[role] = local_broker.wait_until_in_every_isr(node_id, timeout=120)
        self.moments[f"{role} in sync"] = time.monotonic()
        report(
            f"node {node_id} ({role}) restarted: answering after "
            f"{self.answered_after[role]:.1f} s, in every ISR {self.in_sync_after[role]:.1f} s "
            "later"
        )

    def seconds(self, moment: str) -> float:
        return self.moments[moment] - self.began


# ---- the load ----


def trimmed(plan: Plan, placed: int) -> Plan:
    """The plan as far as it was placed: its first `placed` requests and their sagas."""
    sends = plan.sends[:placed]
    requests = [send.request for send in sends if isinstance(send.request, m.OrderRequested)]
    assert len(requests) == len(sends), "a failover plan places orders only"
    sent = {request.order_id for request in requests}
    orders = [order for order in plan.orders if order.request.order_id in sent]
    firsts = {order.request.order_id: order.request for order in orders}
    duplicates: list[m.OrderRequested] = []
    seen: set[str] = set()
    for request in requests:
        if request.order_id in seen:
            duplicates.append(request)
        seen.add(request.order_id)
    assert len(duplicates) + len(firsts) == len(sends)
    return replace(plan, orders=orders, sends=sends, duplicates=duplicates)


def place_orders_until(
    plan: Plan,
    began: float,
    done: Callable[[float], bool],
    workers: Workers,
    placed_so_far: list[int],
) -> int:
    """Place the plan's requests at RATE until `done(seconds since began)`; how many (also
    kept in `placed_so_far[0]` as they go)."""
    producer = client.producer(**{"message.timeout.ms": 300_000, **chaos_io.QUIET})
    placed = 0
    while placed < len(plan.sends):
        seconds = time.monotonic() - began
        if done(seconds):
            break
        due = min(len(plan.sends), int(seconds * RATE) + 1)
        for send in plan.sends[placed:due]:
            stamped = replace(send.request, requested_at=utc_now())
            producer.produce(
                client.REQUEST_TOPIC, key=send.saga_id.encode(), value=codec.encode(stamped)
            )
        placed = max(placed, due)
        placed_so_far[0] = placed
        producer.poll(0)
        workers.check_alive()  # a worker that died under the kills fails the test here
        time.sleep(0.02)
    assert producer.flush(120) == 0, "order requests not delivered"
    return placed


def wait_settled(watch: chaos_io.TerminalWatch, workers: Workers) -> dict[str, int]:
    """Until every saga is terminal and every worker has committed all its input (twice in
    a row: approvals turn holds into sales after the terminal event); what is still behind."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while watch.open_count and time.monotonic() < deadline:
        workers.check_alive()
        time.sleep(0.5)
    behind: dict[str, int] = {"?": 1}
    zero_in_a_row = 0
    while zero_in_a_row < 2 and time.monotonic() < deadline:
        workers.check_alive()
        try:
            behind = chaos_io.lag()
        except KafkaException:  # the cluster is busy: ask again
            behind = {"?": 1}
        zero_in_a_row = zero_in_a_row + 1 if not behind else 0
        time.sleep(2)
    return behind


def timed_out_steps(start: dict[int, int], prefix: str) -> list[m.StepTimedOut]:
    """The StepTimedOut messages the orchestrator's timer sent for the run's sagas."""
    found = []
    for record in chaos_io.read_topic("saga.replies", start):
        if not (record.key() or b"").startswith(prefix.encode()):
            continue
        try:
            message = codec.decode(record.value() or b"")
        except codec.MessageDecodeError:
            continue
        if isinstance(message, m.StepTimedOut):
            found.append(message)
    return found


def saga_seconds(events: dict[str, list[m.SagaEvent]]) -> dict[str, tuple[float, float]]:
    """Per saga: when it began (wall clock, seconds) and how long it took to end."""
    spans = {}
    for saga_id, saga_events in events.items():
        ended = [e.at for e in saga_events if e.terminal]
        if ended:
            first = min(e.at for e in saga_events)
            spans[saga_id] = (first.timestamp(), (min(ended) - first).total_seconds())
    return spans


# ---- the test ----


@pytest.mark.timeout(420)
def test_a_broker_killed_under_load_stalls_sagas_briefly_and_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    test_began = time.monotonic()
    applied = saga(cluster, "topics", "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "replication factor 3, min.insync.replicas 2" in applied.stdout

    run = uuid.uuid4().hex[:8]
    seed = random.randrange(1_000_000)
    plan = make_plan(
        run,
        int(RATE * MAX_LOAD_SECONDS),
        seed=seed,
        workers=[],
        kills=0,
        chaos_seconds=MAX_LOAD_SECONDS,
        broker_restart=False,
        bad=0,
        cancel_share=0.0,  # orders only: the stall is measured on CreateOrderSagas
    )
    start = chaos_io.end_offsets(["saga.events", DEAD_LETTER_TOPIC, *INPUT_TOPICS])
    seed_catalog(plan)
    base = free_ports(len(SERVICE_NAMES))
    log_file = (cluster.home / "workers.log").open("a", buffering=1)
    workers = Workers(
        ports={name: base + i for i, name in enumerate(SERVICE_NAMES)},
        env=cluster.env,
        loglevel="warning",
        echo=lambda line: log_file.write(line + "\n"),
    )
    workers.start()
    clock = EventClock(start["saga.events"])
    watch = chaos_io.TerminalWatch([o.request.order_id for o in plan.orders], start["saga.events"])
    stop_codes: dict[str, int | None] = {}
    fault_thread = None
    try:
        workers.wait_ready(timeout=180)
        clock.start()
        watch.start()
        began = time.monotonic()
        placed_so_far = [0]  # written by the placing loop, read by the fault thread

        def backlog() -> int:  # a plan may request an order twice: its sagas, not requests
            placed_sagas = {send.saga_id for send in plan.sends[: placed_so_far[0]]}
            return len(placed_sagas) - len(watch.terminal)

        faults = Faults(began, backlog=backlog)
        fault_thread = threading.Thread(target=faults.run, name="faults", daemon=True)
        fault_thread.start()

        def load_done(seconds: float) -> bool:
            if not faults.done.is_set():
                return False
            last = max(faults.moments.values(), default=began) - began
            return seconds >= max(MIN_LOAD_SECONDS, last + AFTER_FAULTS_SECONDS)

        placed = place_orders_until(plan, began, load_done, workers, placed_so_far)
        load_ended = time.monotonic()
        fault_thread.join(timeout=300)
        if faults.error is not None:
            raise faults.error
        assert faults.done.is_set(), "the kills and restarts did not finish"
        plan = trimmed(plan, placed)
        watch.waiting = {o.request.order_id.encode() for o in plan.orders}
        report(f"{placed} order requests in {load_ended - began:.0f} s ({len(plan.orders)} sagas)")
        behind = wait_settled(watch, workers)
    finally:
        if fault_thread is not None:  # no node left down, nor restarted after the test
            faults.cancelled.set()
            fault_thread.join(timeout=300)
        clock.stop()
        watch.stop()
        stop_codes = workers.stop(timeout=60)
        log_file.close()

    prefix = f"chaos-{plan.run}-"
    events = chaos_io.saga_events(start["saga.events"], prefix)
    timed_out = timed_out_steps(start["saga.replies"], prefix)
    figures = measured(faults, clock, load_ended, events, timed_out)
    figures |= {"orders": len(plan.orders), "requests": placed}
    figures["test_seconds"] = round(time.monotonic() - test_began, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as results:
        results.write(json.dumps(figures) + "\n")

    assert behind == {}, f"workers still behind: {behind}"
    assert all(code == 0 for code in stop_codes.values()), stop_codes
    for node_id in faults.nodes.values():
        assert local_broker.missing_from_isr(node_id) == []

    findings = invariants.check(plan, observe(plan, start))
    assert findings.violations == [], "\n".join(str(v) for v in findings.violations[:30])
    assert len(findings.outcomes) == len(plan.orders)  # every saga ended, exactly once
    assert findings.dead_letters_unexpected == 0

    # A deadline only re-sends: no approvable order is rejected because of one.
    assert findings.deadline_rejections == 0
    untouched = [t for t in timed_out if not touched_by_a_kill(t, faults)]
    by_deadline = [
        f"{saga_id} {event.from_state} -> {event.to_state}"
        for saga_id, saga_events in events.items()
        for event in saga_events
        if event.trigger == DEADLINE.__name__
    ]
    report(
        f"deadlines fired: {len(timed_out)} ({len(untouched)} for steps no kill came near),"
        f" transitions they triggered: {len(by_deadline)}"
    )
    wall = time.time() - time.monotonic()
    for timeout in [t for t in timed_out if touched_by_a_kill(t, faults)][:20]:
        fired = timeout.fired_at.timestamp() - wall - faults.began
        report(
            f"  {timeout.saga_id} {timeout.step} attempt {timeout.attempt} fired at {fired:.1f} s"
        )
    report("  moments: " + ", ".join(f"{k} {faults.seconds(k):.1f} s" for k in faults.moments))
    # The broker's kill may stall sagas, never time a step out. Only a machine that kept
    # up before it can show that: one that did not fires deadlines with no kill near.
    by_the_broker_kill = [t for t in timed_out if caused_by_the_broker_kill(t, faults)]
    if faults.kept_up_after is not None:
        assert by_the_broker_kill == [], by_the_broker_kill[:10]
    else:
        report(f"not checked: deadlines the broker kill caused ({len(by_the_broker_kill)})")


def waited(timeout: m.StepTimedOut, faults: Faults) -> tuple[float, float]:
    """When the timed-out step's command was sent and its deadline was due, as seconds
    on the fault thread's (monotonic) clock."""
    step = CREATE_ORDER.step(timeout.step)
    assert step is not None, timeout.step
    wall = time.time() - time.monotonic()
    due = timeout.deadline.timestamp() - wall
    return due - step.deadline_after(timeout.attempt).total_seconds(), due


def touched_by_a_kill(timeout: m.StepTimedOut, faults: Faults, role: str | None = None) -> bool:
    """Whether the step timed out was waited for while a node (the `role` one, if given)
    was down or rejoining: from its kill until 5 s after it was back in every ISR."""
    sent, due = waited(timeout, faults)
    return any(
        sent <= faults.moments[f"{killed} in sync"] + 5.0
        and due >= faults.moments[f"{killed} killed"]
        for killed in faults.nodes
        if role in (None, killed)
    )


def caused_by_the_broker_kill(timeout: m.StepTimedOut, faults: Faults) -> bool:
    """Touched by the first (broker) kill, and due before the controller's kill, which
    then cannot have caused it."""
    _sent, due = waited(timeout, faults)
    before_the_next = due < faults.moments.get("controller killed", float("inf"))
    return touched_by_a_kill(timeout, faults, "leader") and before_the_next


def measured(
    faults: Faults,
    clock: EventClock,
    load_ended: float,
    events: dict[str, list[m.SagaEvent]],
    timed_out: list[m.StepTimedOut],
) -> dict[str, object]:
    """The figures of the run, reported and returned for the results file.

    Stalls: the longest time without a saga event, from a kill to the node's restart (it
    is down) and from the restart to a few seconds after it is back in every ISR; as the
    events reached saga.events (seen by a reader), and by their own time stamps (when the
    orchestrator made them). Saga durations (first event to end) and deadlines that fired
    per phase of the run."""
    began = faults.began
    wall = time.time() - time.monotonic()  # monotonic -> wall clock seconds
    stalls: dict[str, float] = {}
    stamped: dict[str, float] = {}
    phases = {"before the kills": began}
    for role in ("leader", "controller"):
        killed, restarted = (faults.moments[f"{role} {what}"] for what in ("killed", "restarted"))
        windows = {
            f"{role} killed": (killed - 1.0, restarted),
            f"{role} restarted": (restarted - 1.0, faults.moments[f"{role} in sync"] + 3.0),
        }
        for name, (since, until) in windows.items():
            until = min(until, load_ended)  # after it, no saga event is due
            if until < since + 2.0:
                report(f"longest stall, {name}: not measured (the orders had stopped)")
                continue
            stalls[name] = longest_gap(clock.arrived, since, until)
            stamped[name] = longest_gap(clock.stamped, since, until)
            report(
                f"longest stall, {name}: {stalls[name]:.2f} s without a saga event written "
                f"({stamped[name]:.2f} s by the events' own times)"
            )
        phases[f"{role} down"] = killed
        phases[f"{role} back"] = restarted
    quiet = longest_gap(clock.arrived, began + 1.0, faults.moments["leader killed"] - 0.5)
    report(f"longest gap before the kills: {quiet:.2f} s")
    starts = sorted((at + wall, name) for name, at in phases.items())  # wall clock

    def phase(at: float) -> str:  # of a wall clock time
        return next((name for start, name in reversed(starts) if at >= start), starts[0][1])

    durations: dict[str, list[float]] = {name: [] for name in phases}
    for begun, seconds in saga_seconds(events).values():
        durations[phase(begun)].append(seconds)
    sagas = {}
    for name, values in durations.items():
        values.sort()
        if values:
            sagas[name] = {
                "sagas": len(values),
                "p50": round(values[len(values) // 2], 3),
                "max": round(values[-1], 3),
            }
            report(f"sagas begun {name}: {sagas[name]}")
    fired: dict[str, int] = {}
    for timeout in timed_out:
        name = phase(timeout.fired_at.timestamp())
        fired[name] = fired.get(name, 0) + 1
    if fired:
        report(f"deadlines fired, by phase: {fired}")
    return {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "nodes": faults.nodes,
        "kept_up_after_seconds": faults.kept_up_after,
        "load_seconds": round(load_ended - began, 1),
        "stall_seconds": {k: round(v, 2) for k, v in stalls.items()},
        "stall_seconds_by_event_time": {k: round(v, 2) for k, v in stamped.items()},
        "longest_gap_before_kills": round(quiet, 2),
        "restart_answered_seconds": {k: round(v, 1) for k, v in faults.answered_after.items()},
        "back_in_every_isr_seconds": {k: round(v, 1) for k, v in faults.in_sync_after.items()},
        "saga_seconds": sagas,
        "deadlines_fired": fired,
    }
