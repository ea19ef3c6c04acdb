"""Metrics: what the engine and the dead letters count, and the scrape-time collector.

The saga metrics are fed with rows and events from the real `decide`, at chosen times,
so durations and reply latencies are exact. The collector is given stand-ins for Faust's
consumer and stores (a real rocksdict for the row estimate).
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from prometheus_client import CollectorRegistry
from rocksdict import Rdict

from messaging import metrics
from messaging.dead_letters import send_dead_letter
from messaging.metrics import Children, WorkerCollector, consumer_lag, exported_names, table_rows
from orchestrator.engine import decide
from orchestrator.engine.metrics import SagaMetrics
from orchestrator.sagas.create_order import SAGA as CREATE_ORDER
from schemas.codec import MessageDecodeError
from tests.unit.saga_factories import T0, reply_for, requested, timed_out

NAME = CREATE_ORDER.name


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value; 0 when it was never recorded."""
    return registry.get_sample_value(name, labels) or 0.0


class Run:
    """Feeds one saga through `decide` and SagaMetrics.written, as the runner does."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = SagaMetrics(self.registry)
        self.row: Any = None

    def take(self, message: object, at: timedelta) -> Any:
        decision = decide(CREATE_ORDER, self.row, message, T0 + at)
        if decision.state is not None and decision.state is not self.row:
            self.metrics.written(self.row, decision.state, decision.events, message)
        self.row = decision.state
        return self.row

    def answer(self, at: timedelta, success: bool = True) -> Any:
        return self.take(reply_for(self.row, success), at)


def ms(n: int) -> timedelta:
    return timedelta(milliseconds=n)


def test_an_approved_saga_counts_start_transitions_end_duration_and_reply_latencies() -> None:
    run = Run()
    run.take(requested(), ms(0))
    run.answer(ms(40))  # OrderCreated, 40 ms after CreateOrder was sent
    run.answer(ms(100))  # ProductsReserved, 60 ms
    run.answer(ms(110))  # PaymentAuthorized, 10 ms
    assert run.answer(ms(135)).state == "ORDER_APPROVED"  # OrderApproved, 25 ms
    registry = run.registry
    assert value(registry, "saga_started_total", saga=NAME) == 1
    assert value(registry, "saga_ended_total", saga=NAME, outcome="ORDER_APPROVED") == 1
    path = ["START", "CREATING_ORDER", "VERIFYING_PRODUCTS", "AUTHORIZING_PAYMENT"]
    path += ["APPROVING_ORDER", "ORDER_APPROVED"]
    for from_state, to_state in itertools.pairwise(path):
        labels = {"saga": NAME, "from_state": from_state, "to_state": to_state}
        assert value(registry, "saga_transitions_total", **labels) == 1, labels
    duration = {"saga": NAME, "outcome": "ORDER_APPROVED"}
    assert value(registry, "saga_duration_seconds_count", **duration) == 1
    assert value(registry, "saga_duration_seconds_sum", **duration) == pytest.approx(0.135)
    assert value(registry, "saga_duration_seconds_bucket", **duration, le="0.1") == 0
    assert value(registry, "saga_duration_seconds_bucket", **duration, le="0.25") == 1
    latencies = {
        ("create_order", "OrderCreated"): 0.040,
        ("verify_products", "ProductsReserved"): 0.060,
        ("authorize_payment", "PaymentAuthorized"): 0.010,
        ("approve_order", "OrderApproved"): 0.025,
    }
    for (step, reply), seconds in latencies.items():
        labels = {"saga": NAME, "step": step, "reply": reply}
        assert value(registry, "saga_step_reply_seconds_count", **labels) == 1, labels
        assert value(registry, "saga_step_reply_seconds_sum", **labels) == pytest.approx(seconds)
    assert value(registry, "saga_resends_total", saga=NAME, step="create_order") == 0


def test_a_resend_counts_by_step_and_restarts_the_reply_latency() -> None:
    run = Run()
    first = run.take(requested(), ms(0))
    retried = run.take(timed_out(first), first.deadline - T0)
    assert (retried.state, retried.attempt) == ("CREATING_ORDER", 2)
    run.answer(first.deadline - T0 + ms(30))
    registry = run.registry
    assert value(registry, "saga_resends_total", saga=NAME, step="create_order") == 1
    same = {"saga": NAME, "from_state": "CREATING_ORDER", "to_state": "CREATING_ORDER"}
    assert value(registry, "saga_transitions_total", **same) == 1
    latency = {"saga": NAME, "step": "create_order", "reply": "OrderCreated"}
    assert value(registry, "saga_step_reply_seconds_sum", **latency) == pytest.approx(0.030)
    assert value(registry, "saga_ended_total", saga=NAME, outcome="ORDER_REJECTED") == 0


def test_a_rejected_saga_ends_by_its_outcome_and_a_stale_reply_counts_nothing() -> None:
    run = Run()
    run.take(requested(), ms(0))
    created = reply_for(run.row)
    run.take(created, ms(10))
    run.answer(ms(20), success=False)  # ProductsUnavailable
    before = list(run.registry.collect())
    run.take(created, ms(25))  # a duplicate: decide changes nothing, nothing is written
    assert list(run.registry.collect()) == before
    assert run.answer(ms(50)).state == "ORDER_REJECTED"
    rejected = {"saga": NAME, "outcome": "ORDER_REJECTED"}
    assert value(run.registry, "saga_ended_total", **rejected) == 1
    assert value(run.registry, "saga_duration_seconds_sum", **rejected) == pytest.approx(0.05)
    unavailable = {"saga": NAME, "step": "verify_products", "reply": "ProductsUnavailable"}
    assert value(run.registry, "saga_step_reply_seconds_count", **unavailable) == 1


def test_a_request_breaking_the_limits_starts_and_ends_at_once() -> None:
    run = Run()
    assert run.take(requested(items=[]), ms(0)).state == "ORDER_REJECTED"
    assert value(run.registry, "saga_started_total", saga=NAME) == 1
    ended = {"saga": NAME, "outcome": "ORDER_REJECTED"}
    assert value(run.registry, "saga_ended_total", **ended) == 1
    assert value(run.registry, "saga_duration_seconds_sum", **ended) == 0


def test_deadlines_fired_are_counted_by_saga_and_step() -> None:
    registry = CollectorRegistry()
    saga_metrics = SagaMetrics(registry)
    saga_metrics.deadline_fired(NAME, "authorize_payment")
    saga_metrics.deadline_fired(NAME, "authorize_payment")
    labels = {"saga": NAME, "step": "authorize_payment"}
    assert value(registry, "saga_deadlines_fired_total", **labels) == 2


# ---- every worker's metrics ----


class Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def send(self, topic: str, key: Any, value: Any, headers: Any = None) -> None:
        self.sent.append((topic, key))


def worker_metrics() -> metrics.WorkerMetrics:
    app: Any = SimpleNamespace(_consumer=None, tables={})
    return metrics.WorkerMetrics(app)


def test_dead_letters_are_counted_by_reason_and_source_topic() -> None:
    counted = worker_metrics()
    producer = Producer()
    error = MessageDecodeError("not-avro", "bad bytes")
    send_dead_letter(producer, b"k", b"v", error, "saga.replies", 0, 1, metrics=counted)
    send_dead_letter(producer, b"k", b"v", error, "saga.replies", 1, 2, metrics=counted)
    send_dead_letter(producer, b"k", b"v", KeyError("x"), "order.commands", 0, 3, metrics=counted)
    send_dead_letter(producer, b"k", b"v", KeyError("x"), "order.commands", 0, 4)  # not counted
    registry = counted.registry
    assert len(producer.sent) == 4
    assert value(registry, "saga_dead_letters_total", reason="not-avro", topic="saga.replies") == 2
    assert (
        value(registry, "saga_dead_letters_total", reason="KeyError", topic="order.commands") == 1
    )


def test_children_are_made_once_per_label_values() -> None:
    made: list[tuple[str, ...]] = []

    def make(*labels: str) -> list[str]:
        made.append(labels)
        return list(labels)

    children = Children(make)
    assert children("a", "b") is children("a", "b")
    assert children("a", "c") == ["a", "c"]
    assert made == [("a", "b"), ("a", "c")]


class Consumer:
    """Faust's consumer as the collector reads it."""

    def __init__(self, ends: dict[TP, int | None], committed: dict[TP, int | None]) -> None:
        self.ends = ends
        self._committed_offset = committed

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> int | None:
        return self.ends[tp]


def test_consumer_lag_is_end_minus_committed_for_input_partitions_only() -> None:
    replies0, replies1, replies2 = (TP("saga.replies", p) for p in range(3))
    changelog = TP("saga-orchestrator-sagas-changelog", 0)
    consumer = Consumer(
        ends={replies0: 120, replies1: 7, replies2: None, changelog: 500},
        committed={replies0: 100, replies1: None, changelog: 0},
    )
    app: Any = SimpleNamespace(
        _consumer=consumer,
        topics=SimpleNamespace(acks_enabled_for=lambda topic: not topic.endswith("-changelog")),
    )
    # replies1: nothing committed yet (Faust keeps None for 0), so all of it lags;
    # replies2: not fetched yet, unknown; the changelog is no input.
    assert dict(consumer_lag(app)) == {replies0: 20, replies1: 7}
    assert list(consumer_lag(SimpleNamespace(_consumer=None))) == []  # type: ignore[arg-type]


def test_table_rows_are_rocksdb_estimates_of_the_active_partitions(tmp_path: Path) -> None:
    dbs = {p: Rdict(str(tmp_path / f"p{p}")) for p in range(3)}
    for p, db in dbs.items():
        for i in range(10 * (p + 1)):
            db[f"k{i}".encode()] = b"row"
    dbs[2][metrics.FAUST_OFFSET_KEY] = b"41"  # how far the changelog is applied: no row
    topic = "saga-orchestrator-sagas-changelog"
    table = SimpleNamespace(
        name="sagas",
        _data=SimpleNamespace(_dbs=dbs),
        changelog_topic=SimpleNamespace(get_topic_name=lambda: topic),
    )
    memory = SimpleNamespace(name="memory", _data=SimpleNamespace(), changelog_topic=None)
    app: Any = SimpleNamespace(
        tables={"sagas": table, "memory": memory},
        assignor=SimpleNamespace(assigned_actives=lambda: {TP(topic, 0), TP(topic, 2)}),
    )
    try:
        assert list(table_rows(app)) == [("sagas", 0, 10), ("sagas", 2, 30)]
    finally:
        for db in dbs.values():
            db.close()


def test_the_collector_answers_before_the_worker_started() -> None:
    class App:  # weakly referenced, as a faust.App
        _consumer = None
        tables: dict[str, Any] = {}
        assignor = SimpleNamespace(assigned_actives=set)

    app: Any = App()
    families = {family.name: family for family in WorkerCollector(app, None).collect()}
    assert set(families) == {
        "saga_consumer_lag",
        "saga_table_rows",
        "saga_producer_records_sent",
        "saga_producer_unacknowledged",
    }
    assert all(not family.samples for family in families.values())


def test_the_producer_figures_are_read_at_scrape_time() -> None:
    producer = SimpleNamespace(sent=7, outstanding=2)
    collector = WorkerCollector(SimpleNamespace(_consumer=None, tables={}), producer)  # type: ignore[arg-type]
    read = lambda: {f.name: f.samples[0].value for f in collector.collect() if f.samples}  # noqa: E731
    assert read() == {"saga_producer_records_sent": 7, "saga_producer_unacknowledged": 2}
    producer.sent, producer.outstanding = 9, 0
    assert read() == {"saga_producer_records_sent": 9, "saga_producer_unacknowledged": 0}


def test_exported_names_include_metrics_without_samples() -> None:
    registry = CollectorRegistry()
    SagaMetrics(registry)
    names = exported_names(registry)
    assert {"saga_started_total", "saga_ended_total", "saga_duration_seconds_bucket"} <= names
    assert {"saga_step_reply_seconds_count", "saga_deadlines_fired_total"} <= names


@pytest.mark.parametrize("setting", ["0", "false", "off", "no"])
def test_saga_metrics_0_turns_metrics_off(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv("SAGA_METRICS", setting)
    assert not metrics.enabled()
    assert metrics.install(SimpleNamespace()) is None  # type: ignore[arg-type]


def test_metrics_are_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGA_METRICS", raising=False)
    assert metrics.enabled()
