"""The orchestrator's Faust agent under agent.test_context(), with the memory store.

No broker: the agent reads from an in-memory channel; what it would send is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from faust.types import TP

from orchestrator.app import OrchestratorService
from orchestrator.definition import REPLY_TOPIC, REQUEST_TOPIC
from schemas import codec
from schemas import messages as m
from tests.unit.saga_factories import reply, requested

SAGA = "ord-1"


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []
        self.dead: list[tuple[bytes | None, bytes | None, str]] = []

    def send(self, topic: str, key: bytes, message: object) -> int:
        """Instead of Sender.send: nothing reaches the producer, so its epochs are
        always delivered."""
        self.sent.append((topic, key, message))
        return 0

    def dead_letter(self, producer: Any, key: Any, value: Any, error: Any, *rest: Any) -> None:
        self.dead.append((key, value, getattr(error, "reason", type(error).__name__)))


@pytest.fixture
async def running(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Any, OrchestratorService, Recorder]]:
    service = OrchestratorService(web_port=6999, store="memory://")
    recorder = Recorder()
    monkeypatch.setattr(service.sender, "send", recorder.send)
    monkeypatch.setattr("messaging.faust_app.send_dead_letter", recorder.dead_letter)
    async with service.agent.test_context() as agent:
        yield agent, service, recorder


async def put(
    agent: Any, key: str | bytes, message: object | bytes, topic: str | None = None
) -> None:
    """Put a record on `topic` (by default the one its type belongs on) and wait until
    the agent acked it: its row is written only then."""
    if topic is None:
        topic = REQUEST_TOPIC if isinstance(message, m.OrderRequested) else REPLY_TOPIC
    value = message if isinstance(message, bytes) else codec.encode(message)
    # The test agent names no topic for an agent on two topics: set the record's own.
    make_record = agent.to_message

    def on_topic(*args: Any, **kwargs: Any) -> Any:
        record = make_record(*args, **kwargs)
        record.topic, record.tp = topic, TP(topic, record.partition)
        return record

    agent.to_message = on_topic
    try:
        event = await agent.put(value, key=key if isinstance(key, bytes) else key.encode())
    finally:
        del agent.to_message
    async with asyncio.timeout(5):
        while not event.message.acked:
            await asyncio.sleep(0.001)


async def test_request_then_reply_moves_the_saga_and_sends_commands(running: Any) -> None:
    agent, service, recorder = running
    await put(agent, SAGA, requested(SAGA))
    state = service.sagas[SAGA.encode()]
    assert isinstance(state, m.SagaState) and state.state == "CREATING_ORDER"
    topics = [(t, type(msg).__name__) for t, _k, msg in recorder.sent]
    assert topics == [("order.commands", "CreateOrder"), ("saga.events", "SagaEvent")]

    await put(agent, SAGA, reply(m.OrderCreated, saga_id=SAGA))
    assert service.sagas[SAGA.encode()].state == "VERIFYING_PRODUCTS"
    topic, key, command = recorder.sent[-2]
    first_product = command.items[0].product_id.encode()  # where the command starts
    assert (topic, key, type(command)) == ("product.commands", first_product, m.ReserveProducts)


async def test_duplicate_request_changes_nothing(running: Any) -> None:
    agent, service, recorder = running
    await put(agent, SAGA, requested(SAGA))
    before = service.sagas[SAGA.encode()]
    await put(agent, SAGA, requested(SAGA))
    assert service.sagas[SAGA.encode()] == before
    assert len(recorder.sent) == 2


async def test_bad_records_are_dead_lettered_and_the_agent_goes_on(running: Any) -> None:
    agent, service, recorder = running
    await put(agent, b"x", b"\x00garbage")
    await put(agent, "other-key", requested(SAGA))  # key disagrees with the order id
    await put(agent, SAGA, m.TopUp("t1", "c1", m.Money(amount=Decimal("1.00"), currency="EUR")))
    await put(agent, SAGA, requested(SAGA))
    assert [reason for _k, _v, reason in recorder.dead] == [
        "not-avro",
        "key-mismatch",
        "unexpected-type",
    ]
    assert service.sagas[SAGA.encode()].state == "CREATING_ORDER"


async def test_each_topic_takes_only_its_own_message_types(running: Any) -> None:
    agent, service, recorder = running
    await put(agent, SAGA, requested(SAGA), topic=REPLY_TOPIC)
    assert SAGA.encode() not in service.sagas  # a request on saga.replies starts nothing

    await put(agent, SAGA, requested(SAGA))
    started = service.sagas[SAGA.encode()]
    sent = len(recorder.sent)
    created = reply(m.OrderCreated, saga_id=SAGA)
    await put(agent, SAGA, created, topic=REQUEST_TOPIC)
    deadline = started.deadline
    assert deadline is not None
    timed_out = m.StepTimedOut(SAGA, started.step or "", started.attempt, deadline, deadline)
    await put(agent, SAGA, timed_out, topic=REQUEST_TOPIC)
    # neither moved the saga nor re-sent CreateOrder
    assert service.sagas[SAGA.encode()] == started
    assert len(recorder.sent) == sent
    assert [(value, reason) for _k, value, reason in recorder.dead] == [
        (codec.encode(requested(SAGA)), "unexpected-type"),
        (codec.encode(created), "unexpected-type"),
        (codec.encode(timed_out), "unexpected-type"),
    ]

    await put(agent, SAGA, created)  # the same reply on its own topic moves the saga
    assert service.sagas[SAGA.encode()].state == "VERIFYING_PRODUCTS"


async def test_deadline_timer_sends_step_timed_out_and_never_writes_the_table(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, service, recorder = running
    await put(agent, SAGA, requested(SAGA))
    saga = service.sagas[SAGA.encode()]
    assert saga.deadline is not None
    writes: list[bytes] = []
    stage = service.sagas._change  # every write and delete of a row passes here

    def staged(key: bytes, row: Any) -> None:
        writes.append(key)
        stage(key, row)

    monkeypatch.setattr(service.sagas, "_change", staged)
    # as after a start or rebalance: the timer finds the saga by scanning the table
    service.watch.open.clear()
    service.watch.needs_rescan = True

    def timer_sent() -> list[tuple[str, bytes, Any]]:
        return [sent for sent in recorder.sent if isinstance(sent[2], m.StepTimedOut)]

    await service.fire_deadlines(saga.deadline - timedelta(milliseconds=1))
    assert timer_sent() == []
    await service.fire_deadlines(saga.deadline)
    expected = m.StepTimedOut(SAGA, "create_order", 1, saga.deadline, fired_at=saga.deadline)
    assert timer_sent() == [(REPLY_TOPIC, SAGA.encode(), expected)]
    await service.fire_deadlines(saga.deadline + timedelta(seconds=30))
    assert len(timer_sent()) == 1  # once per step and attempt
    assert writes == []
    assert service.sagas[SAGA.encode()] == saga

    # the agent handles it like a reply: create_order is re-sent as attempt 2, whose
    # deadline the timer then reports with the new attempt
    await put(agent, SAGA, expected)
    assert writes == [SAGA.encode()]  # the agent writes the row, as it should
    retried = service.sagas[SAGA.encode()]
    assert (retried.step, retried.attempt) == ("create_order", 2)
    assert retried.deadline is not None
    await service.fire_deadlines(retried.deadline)
    last = timer_sent()[-1][2]
    assert (last.step, last.attempt, last.deadline) == ("create_order", 2, retried.deadline)


async def test_deadline_timer_waits_out_a_rebalance(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, service, recorder = running
    await put(agent, SAGA, requested(SAGA))
    deadline = service.sagas[SAGA.encode()].deadline
    sent = len(recorder.sent)
    monkeypatch.setattr(service.app, "rebalancing", True)
    await service.fire_deadlines(deadline)
    assert len(recorder.sent) == sent  # the table may be half restored: fire after
    monkeypatch.setattr(service.app, "rebalancing", False)
    await service.fire_deadlines(deadline)
    assert [type(message) for _t, _k, message in recorder.sent[sent:]] == [m.StepTimedOut]
