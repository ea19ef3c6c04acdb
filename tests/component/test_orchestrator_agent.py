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

from messaging.producer import SendFailed
from orchestrator.app import OrchestratorService
from orchestrator.engine import SagaType
from orchestrator.engine.early_replies import HOLD_LIMIT_SECONDS
from orchestrator.engine.runner import REPLY_TOPIC
from orchestrator.sagas.create_order import REQUEST_TOPIC
from schemas import codec
from schemas import messages as m
from schemas.limits import MAX_ID_LENGTH, MAX_ORDER_LINES, MAX_QUANTITY
from tests.unit.saga_factories import T0, reply, requested

SAGA = "ord-1"


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []
        self.headers: list[Any] = []  # each sent record's headers
        self.dead: list[tuple[bytes | None, bytes | None, str]] = []

    def send(self, topic: str, key: bytes, message: object, headers: Any = None) -> int:
        """Instead of Sender.send: nothing reaches the producer, so its epochs are
        always delivered."""
        self.sent.append((topic, key, message))
        self.headers.append(headers)
        return 0

    def dead_letter(
        self, producer: Any, key: Any, value: Any, error: Any, *rest: Any, **options: Any
    ) -> None:
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
    agent: Any,
    key: str | bytes,
    message: object | bytes,
    topic: str | None = None,
    *,
    acked: bool = True,
    wait: bool = True,
    headers: Any = None,
) -> Any:
    """Put a record on `topic` (by default the one its type belongs on) and wait until
    the agent acked it (its row is written only then); with acked=False until the agent
    took it; with wait=False not at all (the agent may never take it)."""
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
        event = await agent.put(
            value, key=key if isinstance(key, bytes) else key.encode(), headers=headers, wait=wait
        )
    finally:
        del agent.to_message
    if not wait:
        return event
    async with asyncio.timeout(5):
        while not event.message.acked and acked:
            await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    return event


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


# ---- failures after decide(), duplicates, input limits (issue 14) ----


async def until(check: Any) -> None:
    async with asyncio.timeout(5):
        while not check():
            await asyncio.sleep(0.001)


async def test_a_send_that_fails_stops_the_worker_and_changes_nothing(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transport failure is not the record's fault: not dead-lettered, the row and the
    deadline index stay as they were (the record is processed again after the restart)."""
    agent, service, recorder = running
    await put(agent, SAGA, requested(SAGA))
    for reply_type in (m.OrderCreated, m.ProductsReserved):
        await put(agent, SAGA, reply(reply_type, saga_id=SAGA))
    before = service.sagas[SAGA.encode()]
    assert before.state == "AUTHORIZING_PAYMENT"
    stopped: list[BaseException] = []

    async def stop(app: Any, error: BaseException) -> None:
        stopped.append(error)

    def refuse(topic: str, key: bytes, message: object, headers: Any = None) -> int:
        raise SendFailed(topic, "the broker refused the record")

    monkeypatch.setattr("orchestrator.engine.runner.stop_worker", stop)
    monkeypatch.setattr(service.sender, "send", refuse)
    await put(agent, SAGA, reply(m.PaymentAuthorized, saga_id=SAGA), wait=False)
    await until(lambda: stopped)
    assert isinstance(stopped[0], SendFailed)
    assert recorder.dead == []
    assert service.sagas[SAGA.encode()] == before
    assert service.watch.open[SAGA.encode()].state == "AUTHORIZING_PAYMENT"


async def test_a_record_whose_handling_fails_after_decide_is_dead_lettered(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, service, recorder = running

    def broken_route(saga: Any, command: Any) -> Any:
        raise RuntimeError("no route")

    # Only the route is broken, and only here: undoing `monkeypatch` would also undo the
    # fixture's recorder, and the next sends would need a broker.
    with monkeypatch.context() as broken:
        broken.setattr(SagaType, "route", broken_route)
        await put(agent, SAGA, requested(SAGA))
    assert [reason for _k, _v, reason in recorder.dead] == ["RuntimeError"]
    assert SAGA.encode() not in service.sagas and SAGA.encode() not in service.watch.open
    await put(agent, "ord-2", requested("ord-2"))  # the agent goes on
    assert service.sagas[b"ord-2"].state == "CREATING_ORDER"


async def test_a_second_request_with_other_content_changes_nothing(running: Any) -> None:
    agent, service, recorder = running
    await put(agent, SAGA, requested(SAGA))
    before, sent = service.sagas[SAGA.encode()], len(recorder.sent)
    other = m.OrderRequested(SAGA, "someone-else", [m.OrderItem("other", 9)], before.created_at)
    await put(agent, SAGA, other)
    assert service.sagas[SAGA.encode()] == before
    assert (before.customer_id, before.items) != (other.customer_id, other.items)
    assert len(recorder.sent) == sent


async def test_the_largest_legal_request_runs_and_a_larger_one_is_rejected_with_why(
    running: Any,
) -> None:
    agent, service, recorder = running
    order_id, customer = "o" * MAX_ID_LENGTH, "c" * MAX_ID_LENGTH
    lines = [
        m.OrderItem(f"{i:03d}".ljust(MAX_ID_LENGTH, "p"), MAX_QUANTITY)
        for i in range(MAX_ORDER_LINES)
    ]
    await put(agent, order_id, m.OrderRequested(order_id, customer, lines, T0))
    saga = service.sagas[order_id.encode()]
    assert saga.state == "CREATING_ORDER"
    assert all(len(codec.encode(message)) < 100_000 for _t, _k, message in recorder.sent)

    huge = [m.OrderItem(f"p{i}", 2**62) for i in range(20_000)]
    await put(agent, "ord-huge", m.OrderRequested("ord-huge", customer, huge, T0))
    rejected = service.sagas[b"ord-huge"]
    assert rejected.state == "ORDER_REJECTED" and rejected.items == []
    assert rejected.reason is not None and "20000 lines, at most 200" in rejected.reason
    assert len(codec.encode(rejected)) < 2000

    twice = [m.OrderItem("p1", 2**62), m.OrderItem("p1", 2**62)]  # the sum overflows a long
    await put(agent, "ord-sum", m.OrderRequested("ord-sum", customer, twice, T0))
    assert service.sagas[b"ord-sum"].state == "ORDER_REJECTED"

    long_id = "x" * 2000
    await put(agent, long_id, m.OrderRequested(long_id, customer, lines[:1], T0))
    assert long_id.encode() not in service.sagas
    assert recorder.dead[-1][2] == "invalid-message"


async def test_a_reply_read_before_its_request_waits_for_it(running: Any) -> None:
    # After a restart both topics are read again, in no order across topics: the
    # request (still unprocessed in orders.requested) may come after its reply.
    agent, service, recorder = running
    service.early.request_end = lambda partition: 1_000  # the request is still ahead
    early = await put(agent, SAGA, reply(m.OrderCreated, saga_id=SAGA), acked=False)
    assert not early.message.acked  # held, so a crash now reads it again
    assert SAGA.encode() not in service.sagas and recorder.sent == []

    await put(agent, SAGA, requested(SAGA))
    assert early.message.acked
    # The same history as when the request came first.
    assert service.sagas[SAGA.encode()].state == "VERIFYING_PRODUCTS"
    events = [msg for topic, _k, msg in recorder.sent if topic == "saga.events"]
    assert [(e.sequence, e.to_state) for e in events] == [
        (1, "CREATING_ORDER"),
        (2, "VERIFYING_PRODUCTS"),
    ]


async def test_a_stray_reply_is_dropped_once_the_requests_are_read(running: Any) -> None:
    agent, service, recorder = running
    ends = {"requests": 1_000}
    service.early.request_end = lambda partition: ends["requests"]
    stray = await put(agent, "nobody", reply(m.OrderCreated, saga_id="nobody"), acked=False)
    later = await put(agent, "nobody", reply(m.OrderApproved, saga_id="nobody"), acked=False)
    assert not stray.message.acked and not later.message.acked
    # A request of another saga, processed once every earlier request was read.
    service.early.request_committed = lambda partition: 1_000
    await put(agent, SAGA, requested(SAGA))
    assert stray.message.acked and later.message.acked
    assert b"nobody" not in service.sagas
    assert [type(msg).__name__ for _t, _k, msg in recorder.sent] == ["CreateOrder", "SagaEvent"]


async def test_a_held_reply_is_given_up_after_the_hold_limit(running: Any) -> None:
    agent, service, recorder = running
    service.early.request_end = lambda partition: None  # never fetched: unknown
    now = {"t": 0.0}
    service.early.clock = lambda: now["t"]
    stray = await put(agent, "nobody", reply(m.OrderCreated, saga_id="nobody"), acked=False)
    await service.release_early_replies()
    assert not stray.message.acked
    now["t"] = HOLD_LIMIT_SECONDS + 1
    await service.release_early_replies()
    async with asyncio.timeout(5):
        while not stray.message.acked:
            await asyncio.sleep(0.001)
    assert recorder.sent == []


async def test_the_agent_waits_while_the_deadline_timer_decides_held_replies(
    running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, service, _recorder = running
    service.early.request_end = lambda partition: None
    now = {"t": 0.0}
    service.early.clock = lambda: now["t"]
    await put(agent, "nobody", reply(m.OrderCreated, saga_id="nobody"), acked=False)
    await put(agent, "nobody", reply(m.OrderApproved, saga_id="nobody"), acked=False)
    decided: list[str] = []
    gate = asyncio.Event()
    handle = service.handle

    async def slow_handle(stream: Any, event: Any, message: Any, *, held: bool = False) -> None:
        decided.append(type(message).__name__)
        if len(decided) == 1:
            await gate.wait()  # e.g. the writer's queue is full
        await handle(stream, event, message, held=held)

    monkeypatch.setattr(service, "handle", slow_handle)
    now["t"] = HOLD_LIMIT_SECONDS + 1  # the timer gives both up
    timer = asyncio.ensure_future(service.fire_deadlines(T0))
    await asyncio.sleep(0.01)
    request = await put(agent, SAGA, requested(SAGA), wait=False)
    await asyncio.sleep(0.05)
    assert decided == ["OrderCreated"]  # the request waits for the timer's replies
    gate.set()
    await timer
    async with asyncio.timeout(5):
        while not request.message.acked:
            await asyncio.sleep(0.001)
    assert decided == ["OrderCreated", "OrderApproved", "OrderRequested"]


async def test_replies_of_existing_sagas_are_never_held(running: Any) -> None:
    agent, service, _recorder = running
    service.early.request_end = lambda partition: 1_000
    await put(agent, SAGA, requested(SAGA))
    await put(agent, SAGA, reply(m.OrderCreated, saga_id=SAGA))  # waits for its ack
    assert service.sagas[SAGA.encode()].state == "VERIFYING_PRODUCTS"
