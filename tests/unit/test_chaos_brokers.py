"""What a broker kill of `saga chaos --brokers 3` cost the sagas (chaos.brokers), and the
option's bad values, without a broker."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from chaos.brokers import (
    KillRecord,
    charge,
    deadlines,
    longest_stall,
    open_intervals,
    participants_by_state,
)
from chaos.workers import Scheduler, Supervisor
from cli.main import cli
from messaging.local_workers import SERVICE_NAMES, Workers
from schemas import messages as m

T0 = 1_700_000_000.0


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


def event(saga: str, seq: int, second: float, trigger: str, from_state: str | None) -> m.SagaEvent:
    to = "NEXT"
    return m.SagaEvent(saga, seq, at(second), trigger, from_state, to, None, 1, None, [], False)


def kill(killed: float, back: float) -> KillRecord:
    return KillRecord("leader", 5.0, node=2, killed_at=T0 + killed, back_at=T0 + back)


def test_the_longest_stall_is_the_longest_stretch_of_the_window_without_a_transition() -> None:
    times = [T0 + s for s in (1, 2, 3, 7.5, 8, 20)]
    assert longest_stall(times, (T0 + 2.5, T0 + 10)) == (4.5, T0 + 3)
    assert longest_stall([], (T0, T0 + 4)) == (4.0, T0)  # nothing at all: the whole window
    assert longest_stall(times, (T0 + 7.6, T0 + 8.5)) == pytest.approx((0.5, T0 + 8))
    # nothing to do from 4 s to 7 s (no saga open): only the open part of a gap counts
    busy = [(T0, T0 + 4), (T0 + 7, T0 + 30)]
    assert longest_stall(times, (T0 + 2.5, T0 + 8), busy) == (1.0, T0 + 3)


def test_sagas_are_open_from_their_placing_until_their_end() -> None:
    ended = m.SagaEvent("s1", 2, at(5), "X", "A", "B", None, 1, None, [], True)
    events = {"s1": [event("s1", 1, 1, "X", None), ended], "s2": [event("s2", 1, 9, "X", None)]}
    placed = {"s1": T0, "s2": T0 + 8, "s3": T0 + 20}  # s2 and s3 never ended
    assert open_intervals(events, placed) == [(T0, T0 + 5), (T0 + 8, float("inf"))]


def test_each_waiting_state_knows_the_participant_it_waits_on() -> None:
    found = participants_by_state()
    assert found[("CreateOrderSaga", "AUTHORIZING_PAYMENT")] == "payment"
    assert found[("CreateOrderSaga", "VERIFYING_PRODUCTS")] == "product"
    assert found[("CancelOrderSaga", "BEGINNING_CANCEL")] == "order"
    assert ("CreateOrderSaga", "ORDER_APPROVED") not in found  # terminal: waits on nobody


def test_a_deadline_waited_from_the_transition_before_it() -> None:
    events = {
        "s1": [
            event("s1", 1, 0, "OrderRequested", None),
            event("s1", 2, 1, "OrderCreated", "CREATING_ORDER"),
            event("s1", 3, 11, "StepTimedOut", "VERIFYING_PRODUCTS"),
        ]
    }
    [found] = deadlines(events)
    assert (found.saga_id, found.participant) == ("s1", "product")
    assert (found.waited_from, found.fired_at) == (T0 + 1, T0 + 11)


def test_a_kill_is_charged_its_stall_and_the_deadlines_no_worker_fault_explains() -> None:
    # Transitions every second, none from 20 s to 24 s; the node is killed at 20 s and
    # back in every ISR at 30 s (its window runs 5 s longer).
    times = [s for s in range(0, 60) if not 20 < s < 24]
    events = {f"t{s}": [event(f"t{s}", 1, s, "OrderRequested", None)] for s in times}
    # Three sagas waited on the payment service across the kill and hit their deadline;
    # a payment worker was down while the second and third waited.
    for n, began in enumerate((19.5, 31.0, 33.0)):
        events[f"d{n}"] = [
            event(f"d{n}", 1, began, "ProductsReserved", "VERIFYING_PRODUCTS"),
            event(f"d{n}", 2, began + 10, "StepTimedOut", "AUTHORIZING_PAYMENT"),
        ]
    events["late"] = [  # its wait began after the window: not the kill's
        event("late", 1, 36, "ProductsReserved", "VERIFYING_PRODUCTS"),
        event("late", 2, 46, "StepTimedOut", "AUTHORIZING_PAYMENT"),
    ]
    record, unmade = kill(20, 30), KillRecord("controller", 5.0)
    placed = {saga_id: saga[0].at.timestamp() for saga_id, saga in events.items()}
    placed["open"] = T0  # a saga open all along: the system is busy throughout
    down = {"payment": [(T0 + 30, T0 + 40)], "order": [(T0, T0 + 60)]}
    charge([record, unmade], events, placed, down)
    assert record.longest_stall == pytest.approx(4.0)
    assert record.stall_from == pytest.approx(T0 + 20)
    assert (record.deadlines, record.deadlines_during_worker_faults) == (1, 2)
    assert record.summary()["longest_stall_s"] == 4.0
    assert unmade.longest_stall == 0 and unmade.deadlines == 0  # never killed: no window


@pytest.mark.parametrize("brokers", ["0", "-1", "2"])
def test_a_broker_count_other_than_one_or_three_is_refused_before_anything_runs(
    brokers: str,
) -> None:
    result = CliRunner().invoke(cli, ["chaos", "--brokers", brokers, "--orders", "10"])
    assert result.exit_code == 2, result.output
    assert f"--brokers {brokers}:" in result.output
    expected = "at least one broker" if int(brokers) < 1 else "1 broker or a cluster of 3"
    assert expected in result.output


def test_a_worker_exiting_at_start_up_while_a_node_is_down_is_told_apart() -> None:
    """From a crash of a running worker: its supervisor restarts it (chaos.workers)."""
    workers = Workers(ports={name: 7000 + n for n, name in enumerate(SERVICE_NAMES)})
    supervisor = Supervisor(workers, Scheduler(), random.Random(1), lambda _line: None)
    supervisor.readied.discard("orchestrator")  # restarted, not ready yet
    supervisor.launched["orchestrator"] = time.monotonic()
    assert not supervisor._died_starting_in("orchestrator", supervisor.node_down)
    supervisor.node_going_down()
    assert supervisor._died_starting_in("orchestrator", supervisor.node_down)
    assert not supervisor._died_starting_in("order", supervisor.node_down)  # it was running
    assert not supervisor._died_starting_in("orchestrator", supervisor.broker_down)
    supervisor.node_back()
    assert supervisor._died_starting_in("orchestrator", supervisor.node_down)  # settling
