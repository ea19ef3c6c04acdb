"""The workers' metrics wired in: each app has its own registry, the engine counts what it
writes, the participants what they handle, and /metrics answers the text format.

Under agent.test_context() with the memory store, no broker. Dead letters go through the
real `send_dead_letter` here, to the producer's `send` (recorded).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from messaging import metrics
from messaging.producer import producer_of
from orchestrator.app import OrchestratorService
from participants.order.app import OrderService
from schemas import codec
from schemas import messages as m
from tests.component.test_orchestrator_agent import Recorder, put
from tests.unit.saga_factories import reply_for, requested

SAGA = "ord-1"  # the saga id of the factories' replies
NAME = "CreateOrderSaga"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def registry_of(app: Any) -> CollectorRegistry:
    worker = metrics.metrics_of(app)
    assert worker is not None
    return worker.registry


def record_dead_letters(app: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    topics: list[str] = []

    def send(topic: str, key: Any, value: Any, **options: Any) -> None:
        topics.append(topic)

    monkeypatch.setattr(producer_of(app), "send", send)
    return topics


@pytest.fixture
async def orchestrator(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Any, OrchestratorService, Recorder, list[str]]]:
    service = OrchestratorService(web_port=6998, store="memory://")
    recorder = Recorder()
    monkeypatch.setattr(service.sender, "send", recorder.send)
    dead = record_dead_letters(service.app, monkeypatch)
    async with service.agent.test_context() as agent:
        yield agent, service, recorder, dead


async def test_the_engine_counts_a_saga_it_runs_to_approval(orchestrator: Any) -> None:
    agent, service, _recorder, _dead = orchestrator
    await put(agent, SAGA, requested(SAGA))
    for _step in range(4):
        await put(agent, SAGA, reply_for(service.sagas[SAGA.encode()]))
    assert service.sagas[SAGA.encode()].state == "ORDER_APPROVED"
    registry = registry_of(service.app)
    assert value(registry, "saga_started_total", saga=NAME) == 1
    assert value(registry, "saga_ended_total", saga=NAME, outcome="ORDER_APPROVED") == 1
    assert value(registry, "saga_duration_seconds_count", saga=NAME, outcome="ORDER_APPROVED") == 1
    start = {"saga": NAME, "from_state": "START", "to_state": "CREATING_ORDER"}
    assert value(registry, "saga_transitions_total", **start) == 1
    for step in ("create_order", "verify_products", "authorize_payment", "approve_order"):
        counts = [
            sample.value
            for family in registry.collect()
            if family.name == "saga_step_reply_seconds"
            for sample in family.samples
            if sample.name.endswith("_count") and sample.labels["step"] == step
        ]
        assert counts == [1], step


async def test_the_timer_counts_the_deadlines_it_fires(orchestrator: Any) -> None:
    agent, service, _recorder, _dead = orchestrator
    await put(agent, SAGA, requested(SAGA))
    deadline = service.sagas[SAGA.encode()].deadline
    await service.fire_deadlines(deadline)
    await service.fire_deadlines(deadline)  # once per step and attempt
    registry = registry_of(service.app)
    assert value(registry, "saga_deadlines_fired_total", saga=NAME, step="create_order") == 1


async def test_an_orchestrator_dead_letter_is_counted_with_its_reason(orchestrator: Any) -> None:
    agent, service, _recorder, dead = orchestrator
    await put(agent, b"x", b"\x00garbage")
    assert dead == ["saga.dead-letters"]
    registry = registry_of(service.app)
    assert value(registry, "saga_dead_letters_total", reason="not-avro", topic="saga.replies") == 1


async def test_a_participant_counts_records_replies_and_dead_letters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = OrderService(6997, store="memory://")
    monkeypatch.setattr(service.sender, "send", Recorder().send)
    record_dead_letters(service.app, monkeypatch)

    def broken(key: bytes) -> None:
        raise RuntimeError("handler bug")

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    async with service.agent.test_context() as agent:
        create = m.CreateOrder("o1", "o1:create_order", 1, t0, "o1", "c1", [m.OrderItem("p", 1)])
        await agent.put(codec.encode(create), key=b"o1")
        await agent.put(codec.encode(create), key=b"o1")  # a duplicate: replied again
        await agent.put(b"\x00garbage", key=b"o1")
        monkeypatch.setattr(service.orders, "row", broken)
        approve = m.ApproveOrder("o1", "o1:approve_order", 1, t0, "o1")
        await agent.put(codec.encode(approve), key=b"o1")
    registry = registry_of(service.app)
    records = "saga_participant_records_total"
    assert value(registry, records, message="CreateOrder", outcome="processed") == 2
    assert value(registry, "saga_participant_replies_total", reply="OrderCreated",
                 outcome="SUCCESS") == 2  # fmt: skip
    dead = {"topic": "order.commands"}
    assert value(registry, "saga_dead_letters_total", reason="not-avro", **dead) == 1
    assert value(registry, records, message="ApproveOrder", outcome="dead_lettered") == 1
    assert value(registry, "saga_dead_letters_total", reason="RuntimeError", **dead) == 1


def test_each_app_has_its_own_registry_and_serves_the_text_format() -> None:
    first = OrchestratorService(web_port=6996, store="memory://")
    second = OrchestratorService(web_port=6995, store="memory://")
    assert registry_of(first.app) is not registry_of(second.app)
    worker = metrics.metrics_of(first.app)
    assert worker is not None
    text = worker.exposition().decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"saga_started", "saga_dead_letters", "saga_consumer_lag", "saga_table_rows"} <= names
    assert "process_cpu_seconds" in names


def test_saga_metrics_0_builds_workers_without_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_METRICS", "0")
    orchestrator = OrchestratorService(web_port=6994, store="memory://")
    order = OrderService(6993, store="memory://")
    assert metrics.metrics_of(orchestrator.app) is None and orchestrator.metrics is None
    assert metrics.metrics_of(order.app) is None and order.metrics is None
