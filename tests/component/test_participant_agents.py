"""The participants' Faust agents under agent.test_context(), with the memory store.

No broker: records are put on the agent's channel (with increasing offsets, as a topic
gives them); what a service would send is recorded. These check the wiring the pure
logic tests cannot: the dispatch of each message type to its handler, the rows written,
the replies and forwarded records sent with their keys, dead letters, and a transport
failure stopping the worker instead of dead-lettering the record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from messaging.producer import SendFailed
from participants.order.app import OrderService
from participants.order.logic import cancel_key
from participants.payment.app import PaymentService
from participants.payment.logic import payment_key
from participants.product.app import ProductService
from participants.product.logic import hold_key, restock_key
from schemas import codec
from schemas import messages as m

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EUR = "EUR"


def eur(amount: str) -> m.Money:
    return m.Money(Decimal(amount), EUR)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, Any]] = []
        self.headers: list[Any] = []  # each sent record's headers
        self.dead: list[tuple[bytes | None, str]] = []
        self.dead_errors: list[str] = []  # each dead letter's `error` header: the reason
        self.stopped: list[BaseException] = []

    def send(
        self,
        topic: str,
        key: bytes,
        message: object,
        partition: int | None = None,
        headers: Any = None,
    ) -> int:
        self.sent.append((topic, key, message))
        self.headers.append(headers)
        return 0

    def dead_letter(
        self, producer: Any, key: Any, value: Any, error: Any, *rest: Any, **options: Any
    ) -> None:
        self.dead.append((key, getattr(error, "reason", type(error).__name__)))
        self.dead_errors.append(str(error))

    async def stop(self, app: Any, error: BaseException) -> None:
        self.stopped.append(error)

    def replies(self) -> list[Any]:
        return [message for topic, _k, message in self.sent if topic == "saga.replies"]


async def running(
    service: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Any, Any, Recorder]]:
    recorder = Recorder()
    monkeypatch.setattr(service.sender, "send", recorder.send)
    monkeypatch.setattr("messaging.faust_app.send_dead_letter", recorder.dead_letter)
    monkeypatch.setattr("participants.service.stop_worker", recorder.stop)
    async with service.agent.test_context() as agent:
        yield agent, service, recorder


async def put(agent: Any, key: str, message: object | bytes) -> None:
    value = message if isinstance(message, bytes) else codec.encode(message)
    await agent.put(value, key=key.encode())


@pytest.fixture
async def order(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any, Recorder]]:
    async for running_service in running(OrderService(6995, store="memory://"), monkeypatch):
        yield running_service


@pytest.fixture
async def payment(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any, Recorder]]:
    async for running_service in running(PaymentService(6994, store="memory://"), monkeypatch):
        yield running_service


@pytest.fixture
async def product(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, Any, Recorder]]:
    async for running_service in running(ProductService(6993, store="memory://"), monkeypatch):
        yield running_service


# ---- Order Service ----


async def test_order_commands_reach_their_handlers_and_are_answered(order: Any) -> None:
    agent, service, recorder = order
    items = [m.OrderItem("p1", 2)]
    await put(agent, "o1", m.CreateOrder("o1", "o1:create_order", 1, T0, "o1", "c1", items))
    assert service.orders[b"o1"].status == "APPROVAL_PENDING"
    await put(agent, "o1", m.ApproveOrder("o1", "o1:approve_order", 1, T0, "o1"))
    assert service.orders[b"o1"].status == "APPROVED"
    replies = recorder.replies()
    assert [type(r) for r in replies] == [m.OrderCreated, m.OrderApproved]
    assert all(key == b"o1" for topic, key, _m in recorder.sent if topic == "saga.replies")


async def test_cancel_commands_reach_their_handlers_and_are_answered(order: Any) -> None:
    agent, service, recorder = order
    items = [m.OrderItem("p1", 2)]
    await put(agent, "o1", m.CreateOrder("o1", "o1:create_order", 1, T0, "o1", "c1", items))
    await put(agent, "o1", m.BeginCancelOrder("k0", "k0:begin_cancel", 1, T0, "o1"))  # too early
    await put(agent, "o1", m.ApproveOrder("o1", "o1:approve_order", 1, T0, "o1"))
    await put(agent, "o1", m.BeginCancelOrder("k1", "k1:begin_cancel", 1, T0, "o1"))
    assert (service.orders[b"o1"].status, service.orders[b"o1"].cancel_saga) == (
        "CANCEL_PENDING",
        "k1",
    )
    await put(agent, "o1", m.UndoBeginCancelOrder("k1", "k1:undo_cancel", 1, T0, "o1"))
    assert service.orders[b"o1"].status == "APPROVED"
    await put(agent, "o1", m.BeginCancelOrder("k2", "k2:begin_cancel", 1, T0, "o1"))
    await put(agent, "o1", m.ConfirmCancelOrder("k2", "k2:confirm_cancel", 1, T0, "o1"))
    row = service.orders[b"o1"]
    assert (row.status, row.cancel_saga) == ("CANCELLED", "k2")
    assert service.orders[cancel_key("o1", "k0")].status == "REFUSED"
    assert service.orders[cancel_key("o1", "k1")].status == "UNDONE"
    assert service.orders[cancel_key("o1", "k2")].status == "CONFIRMED"
    replies = recorder.replies()
    assert [(type(r).__name__, r.outcome.value) for r in replies] == [
        ("OrderCreated", "SUCCESS"),
        ("OrderCancelRefused", "FAILURE"),
        ("OrderApproved", "SUCCESS"),
        ("OrderCancelBegun", "SUCCESS"),
        ("OrderCancelUndone", "SUCCESS"),
        ("OrderCancelBegun", "SUCCESS"),
        ("OrderCancelled", "SUCCESS"),
    ]
    assert replies[1].reason == "not approved yet"
    assert (replies[3].customer_id, replies[3].items) == ("c1", items)
    keys = [key for topic, key, _m in recorder.sent if topic == "saga.replies"]
    assert keys == [b"o1", b"k0", b"o1", b"k1", b"k1", b"k2", b"k2"]  # each saga's own


async def test_a_bad_record_is_dead_lettered_and_the_agent_goes_on(order: Any) -> None:
    agent, service, recorder = order
    await put(agent, "o1", b"\xc3\x01 not avro")
    await put(agent, "o1", m.TopUp("t1", "c1", eur("1.00")))  # not an order command
    await put(agent, "o1", m.RejectOrder("o1", "o1:reject_order", 1, T0, "o1", "why"))
    assert [reason for _k, reason in recorder.dead] == ["unknown-fingerprint", "unexpected-type"]
    assert service.orders[b"o1"].status == "REJECTED"


async def test_a_reply_that_cannot_be_sent_stops_the_worker_not_dead_lettered(
    order: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, service, recorder = order

    def refuse(topic: str, key: bytes, message: object, **options: Any) -> int:
        raise SendFailed(topic, "the broker refused it")

    monkeypatch.setattr(service.sender, "send", refuse)
    command = m.CreateOrder("o1", "o1:create_order", 1, T0, "o1", "c1", [m.OrderItem("p", 1)])
    await agent.put(codec.encode(command), key=b"o1", wait=False)
    async with asyncio.timeout(5):
        while not recorder.stopped:
            await asyncio.sleep(0.001)
    assert isinstance(recorder.stopped[0], SendFailed) and recorder.dead == []


# ---- Payment Service ----


async def test_payment_commands_charge_once_and_refund(payment: Any) -> None:
    agent, service, recorder = payment
    await put(agent, "c1", m.TopUp("t1", "c1", eur("50.00")))
    authorize = m.AuthorizePayment("s1", "s1:authorize_payment", 1, T0, "s1", "c1", eur("20.00"))
    await put(agent, "c1", authorize)
    await put(agent, "c1", authorize)  # a duplicate
    assert service.accounts[b"c1"].balance == eur("30.00")
    assert service.accounts[payment_key("c1", "s1")].status == "AUTHORIZED"
    await put(agent, "c1", m.CancelPayment("s1", "s1:cancel_payment", 1, T0, "s1", "c1"))
    assert service.accounts[b"c1"].balance == eur("50.00")
    kinds = [type(r).__name__ for r in recorder.replies()]
    assert kinds == ["PaymentAuthorized", "PaymentAuthorized", "PaymentCancelled"]


async def test_a_refund_gives_back_the_orders_payment_and_answers_the_cancel_saga(
    payment: Any,
) -> None:
    agent, service, recorder = payment
    await put(agent, "c1", m.TopUp("t1", "c1", eur("50.00")))
    authorize = m.AuthorizePayment("o1", "o1:authorize_payment", 1, T0, "o1", "c1", eur("20.00"))
    await put(agent, "c1", authorize)
    refund = m.RefundPayment("k1", "k1:refund_payment", 1, T0, "o1", "c1")
    await put(agent, "c1", refund)
    await put(agent, "c1", refund)  # a duplicate
    account = service.accounts[b"c1"]
    assert (account.balance, account.captured_archived) == (eur("50.00"), eur("0.00"))
    assert service.accounts[payment_key("c1", "o1")].status == "REFUNDED"
    refunded = recorder.replies()[1:]
    assert [(type(r), r.saga_id, r.refunded) for r in refunded] == [
        (m.PaymentRefunded, "k1", eur("20.00"))
    ] * 2
    keys = [key for topic, key, _m in recorder.sent if topic == "saga.replies"]
    assert keys == [b"o1", b"k1", b"k1"]  # to the cancel saga


async def test_a_refund_for_another_customer_than_its_key_is_dead_lettered(payment: Any) -> None:
    agent, _service, recorder = payment
    await put(agent, "c2", m.RefundPayment("k1", "k1:refund_payment", 1, T0, "o1", "c1"))
    assert [reason for _k, reason in recorder.dead] == ["key-mismatch"]
    assert recorder.sent == []


async def test_a_top_up_in_no_currency_is_dead_lettered(payment: Any) -> None:
    agent, service, recorder = payment
    for currency in ("", "eur", "NOT-A-CURRENCY"):
        await put(agent, "c1", m.TopUp(f"t-{currency}", "c1", m.Money(Decimal("5.00"), currency)))
    assert [reason for _k, reason in recorder.dead] == ["InvalidTopUp"] * 3
    assert b"c1" not in service.accounts


# ---- Product Service ----


async def test_reserve_travels_to_the_next_product_and_the_last_replies(product: Any) -> None:
    agent, service, recorder = product
    for name in ("p1", "p2"):
        await put(agent, name, m.Restock(f"r-{name}", name, 5, eur("2.00")))
    items = [m.OrderItem("p1", 2), m.OrderItem("p2", 1)]
    await put(agent, "p1", m.ReserveProducts("s1", "s1:verify_products", 1, T0, "s1", items))
    topic, key, forwarded = recorder.sent[-1]
    assert (topic, key, forwarded.hop) == ("product.commands", b"p2", 1)
    await put(agent, "p2", forwarded)
    (reply,) = recorder.replies()
    assert isinstance(reply, m.ProductsReserved) and reply.total == eur("6.00")
    await put(agent, "p1", m.SellProducts("s1", "s1:sell_products", 1, T0, "s1", items))
    await put(agent, "p2", recorder.sent[-1][2])
    assert service.stock[hold_key("p1", "s1")].status == "SOLD"
    assert service.stock[hold_key("p2", "s1")].status == "SOLD"
    assert (service.stock[b"p1"].sold, service.stock[b"p2"].sold) == (2, 1)


async def test_return_travels_like_the_sale_and_the_last_hop_replies(product: Any) -> None:
    agent, service, recorder = product
    for name in ("p1", "p2"):
        await put(agent, name, m.Restock(f"r-{name}", name, 5, eur("2.00")))
    items = [m.OrderItem("p1", 2), m.OrderItem("p2", 1)]
    await put(agent, "p1", m.ReserveProducts("o1", "o1:verify_products", 1, T0, "o1", items))
    await put(agent, "p2", recorder.sent[-1][2])
    await put(agent, "p1", m.SellProducts("o1", "o1:sell_products", 1, T0, "o1", items))
    await put(agent, "p2", recorder.sent[-1][2])
    recorder.sent.clear()
    await put(agent, "p1", m.ReturnProducts("k1", "k1:return_products", 1, T0, "o1", items))
    topic, key, forwarded = recorder.sent[-1]
    assert (topic, key, type(forwarded), forwarded.hop) == (
        "product.commands",
        b"p2",
        m.ReturnProducts,
        1,
    )
    await put(agent, "p2", forwarded)
    (reply,) = recorder.replies()
    assert isinstance(reply, m.ProductsReturned) and reply.saga_id == "k1"
    assert recorder.sent[-1][1] == b"k1"  # to the cancel saga
    for name, quantity in (("p1", 2), ("p2", 1)):
        assert service.stock[hold_key(name, "o1")].status == "RETURNED"  # the order's hold
        row = service.stock[name.encode()]
        assert (row.available, row.sold, row.returned) == (5, quantity, quantity)
    assert hold_key("p1", "k1") not in service.stock


async def test_a_return_keyed_by_another_product_is_dead_lettered(product: Any) -> None:
    agent, _service, recorder = product
    items = [m.OrderItem("p1", 2), m.OrderItem("p2", 1)]
    await put(agent, "p2", m.ReturnProducts("k1", "k1:return_products", 1, T0, "o1", items))
    assert [reason for _k, reason in recorder.dead] == ["key-mismatch"]
    assert recorder.sent == []


async def test_a_record_for_another_product_than_its_key_is_dead_lettered(product: Any) -> None:
    agent, _service, recorder = product
    items = [m.OrderItem("p1", 2)]
    await put(agent, "p9", m.ReserveProducts("s1", "s1:verify_products", 1, T0, "s1", items))
    await put(agent, "p1", m.Restock("r1", "p1", 5, m.Money(Decimal("1.00"), "eur")))
    assert [reason for _k, reason in recorder.dead] == ["key-mismatch", "InvalidRestock"]
    assert recorder.sent == []


async def test_a_restock_in_another_currency_is_dead_lettered_and_changes_nothing(
    product: Any,
) -> None:
    agent, service, recorder = product
    await put(agent, "p1", m.Restock("r1", "p1", 5, eur("2.00")))
    before = service.stock[b"p1"]
    await put(agent, "p1", m.Restock("r2", "p1", 7, m.Money(Decimal("3.00"), "USD")))
    assert [reason for _k, reason in recorder.dead] == ["InvalidRestock"]
    (error,) = recorder.dead_errors
    assert "restock r2 of p1: price in USD, the product is priced in EUR" in error
    assert service.stock[b"p1"] == before
    assert restock_key("p1", "r2") not in service.stock
