"""Retention through the agents (memory store, no broker): the orchestrator's timer asks,
its agent deletes a terminal saga's row and tells the participants, whose agents delete
the saga's rows and keep the aggregates' counters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from orchestrator.app import OrchestratorService
from orchestrator.engine.runner import OPERATIONS_TOPIC
from participants.order.app import OrderService
from participants.order.logic import cancel_key
from participants.payment.app import PaymentService
from participants.payment.logic import payment_key
from participants.product.app import ProductService
from participants.product.logic import hold_key
from schemas import messages as m
from tests.component.test_orchestrator_agent import Recorder
from tests.component.test_orchestrator_agent import put as put_orchestrator
from tests.component.test_participant_agents import T0, eur, put, running
from tests.unit.saga_factories import reply, requested

SAGA = "ord-1"
KEY = SAGA.encode()
RETENTION = timedelta(seconds=2)


@pytest.fixture
async def orchestrator(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[Any, OrchestratorService, Recorder]]:
    service = OrchestratorService(web_port=6998, store="memory://", retention="2s")
    recorder = Recorder()
    monkeypatch.setattr(service.sender, "send", recorder.send)
    monkeypatch.setattr("messaging.faust_app.send_dead_letter", recorder.dead_letter)
    async with service.agent.test_context() as agent:
        yield agent, service, recorder


async def approved(agent: Any, service: OrchestratorService) -> Any:
    await put_orchestrator(agent, SAGA, requested(SAGA))
    for reply_type in (m.OrderCreated, m.ProductsReserved, m.PaymentAuthorized, m.OrderApproved):
        await put_orchestrator(agent, SAGA, reply(reply_type, saga_id=SAGA))
    row = service.sagas[KEY]
    assert row.state == "ORDER_APPROVED"
    return row


def sent_since(recorder: Recorder, start: int) -> list[tuple[str, bytes, str]]:
    return [(t, k, type(message).__name__) for t, k, message in recorder.sent[start:]]


async def test_an_ended_saga_expires_through_the_agent_and_its_id_is_free_again(
    orchestrator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, service, recorder = orchestrator
    row = await approved(agent, service)
    writes: list[bytes] = []
    stage = service.sagas._change

    def staged(key: bytes, row: Any) -> None:
        writes.append(key)
        stage(key, row)

    monkeypatch.setattr(service.sagas, "_change", staged)

    # the timer: nothing before the retention passed, then one ExpireSaga; never a write
    start = len(recorder.sent)
    await service.fire_deadlines(row.updated_at + RETENTION - timedelta(milliseconds=1))
    assert recorder.sent[start:] == []
    await service.fire_deadlines(row.updated_at + RETENTION)
    [(topic, key, expire)] = recorder.sent[start:]
    assert (topic, key, expire) == (
        OPERATIONS_TOPIC,
        KEY,
        m.ExpireSaga(SAGA, ended_by=row.updated_at, requested_at=row.updated_at + RETENTION),
    )
    assert writes == []

    # the agent asks the Order Service first; the row stays until it answers
    start = len(recorder.sent)
    await put_orchestrator(agent, SAGA, expire, OPERATIONS_TOPIC)
    assert sent_since(recorder, start) == [("order.commands", KEY, "ForgetOrder")]
    ask = recorder.sent[-1][2]
    assert service.sagas[KEY] == row

    answer = m.OrderForgotten(
        SAGA, ask.command_id, 1, m.Outcome.SUCCESS, T0, SAGA, ask.ended_by, None
    )
    start = len(recorder.sent)
    await put_orchestrator(agent, SAGA, answer)
    assert sent_since(recorder, start) == [
        ("product.commands", row.items[0].product_id.encode(), "ForgetProducts"),
        ("payment.commands", row.customer_id.encode(), "ForgetPayment"),
    ]
    assert KEY not in service.sagas and service.sagas.get(KEY) is None
    assert writes == [KEY]  # the deletion, by the agent
    assert len(service.expiry) == 0

    # duplicates change nothing; the same id then starts a new saga
    start = len(recorder.sent)
    await put_orchestrator(agent, SAGA, expire, OPERATIONS_TOPIC)
    await put_orchestrator(agent, SAGA, answer)
    assert recorder.sent[start:] == []
    await put_orchestrator(agent, SAGA, requested(SAGA))
    assert service.sagas[KEY].state == "CREATING_ORDER"
    assert sent_since(recorder, start) == [
        ("order.commands", KEY, "CreateOrder"),
        ("saga.events", KEY, "SagaEvent"),
    ]
    # and a late answer about the old saga leaves the new one alone
    await put_orchestrator(agent, SAGA, answer)
    assert service.sagas[KEY].state == "CREATING_ORDER"


async def test_a_kept_order_keeps_the_saga_and_the_timer_asks_again(orchestrator: Any) -> None:
    agent, service, recorder = orchestrator
    row = await approved(agent, service)
    await service.fire_deadlines(row.updated_at + RETENTION)
    expire = recorder.sent[-1][2]
    await put_orchestrator(agent, SAGA, expire, OPERATIONS_TOPIC)
    ask = recorder.sent[-1][2]
    kept = m.OrderForgotten(
        SAGA, ask.command_id, 1, m.Outcome.FAILURE, T0, SAGA, ask.ended_by, "kept: c-1"
    )
    start = len(recorder.sent)
    await put_orchestrator(agent, SAGA, kept)
    assert recorder.sent[start:] == [] and service.sagas[KEY] == row
    await service.fire_deadlines(row.updated_at + 2 * RETENTION)
    assert sent_since(recorder, start) == [(OPERATIONS_TOPIC, KEY, "ExpireSaga")]


async def test_an_expire_for_a_saga_in_flight_changes_nothing(orchestrator: Any) -> None:
    agent, service, recorder = orchestrator
    await put_orchestrator(agent, SAGA, requested(SAGA))
    row = service.sagas[KEY]
    start = len(recorder.sent)
    expire = m.ExpireSaga(SAGA, ended_by=row.updated_at + timedelta(days=30), requested_at=T0)
    await put_orchestrator(agent, SAGA, expire, OPERATIONS_TOPIC)
    assert recorder.sent[start:] == [] and service.sagas[KEY] == row
    await service.fire_deadlines(row.updated_at + timedelta(days=30))  # no ExpireSaga
    assert [type(x).__name__ for _t, _k, x in recorder.sent[start:]] == ["StepTimedOut"]


async def test_the_rescan_after_a_rebalance_finds_the_ended_sagas(orchestrator: Any) -> None:
    agent, service, recorder = orchestrator
    row = await approved(agent, service)
    service.expiry.ended.clear()  # as after a start: rows restored, never written here
    service.watch.needs_rescan = True
    start = len(recorder.sent)
    await service.fire_deadlines(row.updated_at + RETENTION)
    assert sent_since(recorder, start) == [(OPERATIONS_TOPIC, KEY, "ExpireSaga")]


# ---- the participants ----


@pytest.fixture
async def orders(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any, Any]]:
    async for running_service in running(OrderService(6995, store="memory://"), monkeypatch):
        yield running_service


@pytest.fixture
async def payments(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any, Any]]:
    async for running_service in running(PaymentService(6994, store="memory://"), monkeypatch):
        yield running_service


@pytest.fixture
async def products(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any, Any]]:
    async for running_service in running(ProductService(6993, store="memory://"), monkeypatch):
        yield running_service


ITEMS = [m.OrderItem("p1", 2), m.OrderItem("p2", 1)]


async def test_the_order_service_forgets_the_order_and_its_cancels(orders: Any) -> None:
    agent, service, recorder = orders
    await put(agent, "o1", m.CreateOrder("o1", "o1:create_order", 1, T0, "o1", "c1", ITEMS))
    await put(agent, "o1", m.ApproveOrder("o1", "o1:approve_order", 1, T0, "o1"))
    await put(agent, "o1", m.BeginCancelOrder("k1", "k1:begin_cancel", 1, T0, "o1"))
    forget = m.ForgetOrder("o1", "o1:forget_order", 1, T0, "o1", T0)
    await put(agent, "o1", forget)  # a cancel holds it: kept
    assert service.orders[b"o1"].status == "CANCEL_PENDING"
    await put(agent, "o1", m.ConfirmCancelOrder("k1", "k1:confirm_cancel", 1, T0, "o1"))
    await put(agent, "o1", forget)
    await put(agent, "o1", forget)  # a duplicate
    assert b"o1" not in service.orders and cancel_key("o1", "k1") not in service.orders
    answers = [(r.outcome, r.reason) for r in recorder.replies() if type(r) is m.OrderForgotten]
    assert answers == [
        (m.Outcome.FAILURE, "kept: being cancelled by k1"),
        (m.Outcome.SUCCESS, None),
        (m.Outcome.SUCCESS, None),
    ]
    # a refused cancel of the forgotten order leaves a row, which its own expiry forgets
    await put(agent, "o1", m.BeginCancelOrder("k2", "k2:begin_cancel", 1, T0, "o1"))
    assert service.orders[cancel_key("o1", "k2")].status == "REFUSED"
    await put(agent, "o1", m.ForgetCancel("k2", "k2:forget_cancel", 1, T0, "o1"))
    assert list(service.orders.items()) == []


async def test_the_product_service_forgets_the_holds_and_keeps_the_counters(products: Any) -> None:
    agent, service, recorder = products
    for name in ("p1", "p2"):
        await put(agent, name, m.Restock(f"r-{name}", name, 5, eur("2.00")))
    await put(agent, "p1", m.ReserveProducts("o1", "o1:verify_products", 1, T0, "o1", ITEMS))
    await put(agent, "p2", recorder.sent[-1][2])
    await put(agent, "p1", m.SellProducts("o1", "o1:sell_products", 1, T0, "o1", ITEMS))
    await put(agent, "p2", recorder.sent[-1][2])
    counters = {name: service.stock[name.encode()] for name in ("p1", "p2")}
    start = len(recorder.sent)
    await put(agent, "p1", m.ForgetProducts("o1", "o1:forget_products", 1, T0, "o1", ITEMS))
    [(topic, key, forwarded)] = recorder.sent[start:]
    assert (topic, key, type(forwarded), forwarded.hop) == (
        "product.commands",
        b"p2",
        m.ForgetProducts,
        1,
    )
    await put(agent, "p2", forwarded)
    assert len(recorder.sent) == start + 1  # the last hop replies nothing
    for name in ("p1", "p2"):
        assert hold_key(name, "o1") not in service.stock
        after = service.stock[name.encode()]
        assert (after.available, after.reserved, after.sold, after.restocked) == (
            counters[name].available,
            counters[name].reserved,
            counters[name].sold,
            counters[name].restocked,
        )
    keys = sorted(k for k, _ in service.stock.items())
    assert keys == sorted([b"p1", b"p2", *(k for k in keys if b"restock" in k)])


async def test_the_payment_service_forgets_the_payment_and_keeps_the_money(payments: Any) -> None:
    agent, service, recorder = payments
    await put(agent, "c1", m.TopUp("t1", "c1", eur("50.00")))
    authorize = m.AuthorizePayment("o1", "o1:authorize_payment", 1, T0, "o1", "c1", eur("20.00"))
    await put(agent, "c1", authorize)
    before = service.accounts[b"c1"]
    start = len(recorder.sent)
    await put(agent, "c1", m.ForgetPayment("o1", "o1:forget_payment", 1, T0, "o1", "c1"))
    assert payment_key("c1", "o1") not in service.accounts
    after = service.accounts[b"c1"]
    assert (after.balance, after.captured_archived, after.topped_up) == (
        before.balance,
        before.captured_archived,
        before.topped_up,
    )
    assert recorder.sent[start:] == []  # no reply
