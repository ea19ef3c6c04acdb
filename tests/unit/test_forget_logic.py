"""The participants forget an expired saga's rows (pure logic): the per-saga rows go, the
aggregates keep their counters, replays change nothing, a second forget is harmless."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from participants.order import logic as order
from participants.payment import logic as payment
from participants.product import logic as product
from schemas.messages import (
    Account,
    ForgetCancel,
    ForgetOrder,
    ForgetPayment,
    ForgetProducts,
    Money,
    OrderCancel,
    OrderForgotten,
    OrderItem,
    OrderRow,
    Outcome,
    Payment,
    StockHold,
    StockRow,
)

NOW = datetime(2026, 2, 1, tzinfo=UTC)
ENDED_BY = datetime(2026, 1, 25, tzinfo=UTC)
ORDER, CUSTOMER = "ord-1", "cus-7"


def eur(amount: str) -> Money:
    return Money(Decimal(amount), "EUR")


# ---- Order Service ----


def an_order(status: str = order.APPROVED, cancel_saga: str | None = None) -> OrderRow:
    items = [OrderItem("p-1", 2)]
    return OrderRow(ORDER, CUSTOMER, items, status, None, NOW, cancel_saga, applied_offset=10)


FORGET_ORDER = ForgetOrder(ORDER, f"{ORDER}:forget_order", 1, NOW, ORDER, ENDED_BY)


def forgotten(outcome: Outcome = Outcome.SUCCESS, why: str | None = None) -> OrderForgotten:
    return OrderForgotten(ORDER, f"{ORDER}:forget_order", 1, outcome, NOW, ORDER, ENDED_BY, why)


@pytest.mark.parametrize("status", [order.APPROVED, order.REJECTED, order.CANCELLED])
def test_the_order_and_its_cancel_rows_are_forgotten_cancels_first(status: str) -> None:
    cancels = [
        OrderCancel("c-1", order.REFUSED, "not approved yet", 3, -1),
        OrderCancel("c-2", order.CONFIRMED, None, 12, 14),
    ]
    row = an_order(status, "c-2" if status == order.CANCELLED else None)
    effect = order.forget_order(row, cancels, FORGET_ORDER, NOW, offset=20)
    assert effect.rows == (
        (order.cancel_key(ORDER, "c-1"), None),
        (order.cancel_key(ORDER, "c-2"), None),
        (order.order_key(ORDER), None),  # last: its deletion implies the others'
    )
    assert effect.reply == forgotten()


def test_an_order_never_known_is_forgotten_already() -> None:
    assert order.forget_order(None, [], FORGET_ORDER, NOW, 20) == order.Effect((), forgotten())


def test_an_order_a_cancel_holds_is_kept_and_the_answer_says_why() -> None:
    row = an_order(order.CANCEL_PENDING, "c-9")
    cancels = [OrderCancel("c-9", order.BEGUN, None, 12, -1)]
    effect = order.forget_order(row, cancels, FORGET_ORDER, NOW, 20)
    assert effect == order.Effect((), forgotten(Outcome.FAILURE, "kept: being cancelled by c-9"))


def test_a_replayed_forget_finds_a_newer_order_and_leaves_it() -> None:
    newer = replace(an_order(order.APPROVAL_PENDING), applied_offset=25)  # a new saga's
    assert order.forget_order(newer, [], FORGET_ORDER, NOW, offset=20) == order.NOTHING


def test_once_forgotten_a_cancel_is_refused_and_a_new_saga_makes_a_new_order() -> None:
    begin = order.begin_cancel_order
    from schemas.messages import BeginCancelOrder, CreateOrder

    refused = begin(None, None, BeginCancelOrder("c-3", "c-3:begin", 1, NOW, ORDER), NOW, 21)
    assert refused.reply is not None and refused.reply.outcome == Outcome.FAILURE
    create = CreateOrder(ORDER, f"{ORDER}:create_order", 1, NOW, ORDER, "cus-8", [])
    created = order.create_order(None, create, NOW, 22)
    assert created.rows[0][1].customer_id == "cus-8"  # type: ignore[union-attr]


def test_a_cancel_row_is_forgotten_unless_the_order_names_its_saga() -> None:
    command = ForgetCancel("c-1", "c-1:forget_cancel", 1, NOW, ORDER)
    refused = OrderCancel("c-1", order.REFUSED, "unknown order", 3, -1)
    key = order.cancel_key(ORDER, "c-1")
    assert order.forget_cancel(None, refused, command, 5).rows == ((key, None),)
    assert order.forget_cancel(an_order(), refused, command, 20).rows == ((key, None),)
    confirmed = OrderCancel("c-1", order.CONFIRMED, None, 12, 14)
    cancelled = an_order(order.CANCELLED, "c-1")
    assert order.forget_cancel(cancelled, confirmed, command, 20) == order.NOTHING
    assert order.forget_cancel(an_order(), None, command, 20) == order.NOTHING  # gone
    assert order.forget_cancel(an_order(), refused, command, 10) == order.NOTHING  # replay


# ---- Product Service ----

ITEMS = [OrderItem("p-1", 2), OrderItem("p-2", 1), OrderItem("p-1", 1)]  # p-1 merged: 3


def stock(product_id: str, sold: int = 3) -> StockRow:
    return StockRow(product_id, 97 - sold + 3, 0, sold, 100, eur("2.50"), applied_offset=40)


def hold(product_id: str, status: str, quantity: int = 3) -> StockHold:
    return StockHold(ORDER, product_id, quantity, status, 30, 35)


def forget_products(hop: int = 0) -> ForgetProducts:
    return ForgetProducts(ORDER, f"{ORDER}:forget_products", 1, NOW, ORDER, ITEMS, hop)


@pytest.mark.parametrize(
    "status", [product.SOLD, product.RELEASED, product.REFUSED, product.RETURNED]
)
def test_each_hop_forgets_its_hold_and_keeps_the_counters(status: str) -> None:
    row = stock("p-1")
    effect = product.handle(forget_products(0), row, hold("p-1", status), NOW, 50)
    assert effect.rows == (
        (product.hold_key("p-1", ORDER), None),
        (b"p-1", replace(row, applied_offset=50)),  # counters as they were
    )
    assert effect.forward == (forget_products(1),) and effect.reply is None
    assert product.stock_invariant_violations(effect.rows[-1][1]) == []
    last = product.handle(forget_products(1), stock("p-2", 1), hold("p-2", status, 1), NOW, 51)
    assert [key for key, _ in last.rows] == [product.hold_key("p-2", ORDER), b"p-2"]
    assert last.forward == () and last.reply is None  # the last hop: no reply


def test_a_held_hold_is_kept_and_the_forget_travels_on() -> None:
    effect = product.handle(forget_products(0), stock("p-1"), hold("p-1", product.HELD), NOW, 50)
    assert effect.rows == () and effect.forward == (forget_products(1),)


def test_no_hold_changes_nothing_and_the_forget_travels_on() -> None:
    effect = product.handle(forget_products(0), stock("p-1"), None, NOW, 50)
    assert effect == product.Effect((), (forget_products(1),))


def test_a_replayed_hop_changes_and_forwards_nothing() -> None:
    assert product.handle(forget_products(0), stock("p-1"), None, NOW, 40) == product.NOTHING


def test_the_hold_of_a_product_that_does_not_exist_is_forgotten_too() -> None:
    refused = hold("p-1", product.REFUSED)
    effect = product.handle(forget_products(0), None, refused, NOW, 50)
    assert effect.rows == ((product.hold_key("p-1", ORDER), None),)


@pytest.mark.parametrize("hop", [2, 3, -1])
def test_a_hop_past_the_lines_forgets_nothing(hop: int) -> None:
    # a bad hop names no line: it must not fail on, or forget, a hold of another line
    sold = hold("p-2", product.SOLD, 1)
    assert product.handle(forget_products(hop), stock("p-2", 1), sold, NOW, 50) == product.NOTHING


def test_an_order_without_lines_forgets_nothing() -> None:
    empty = replace(forget_products(0), items=[])
    assert product.handle(empty, stock("p-1"), None, NOW, 50) == product.NOTHING


# ---- Payment Service ----


def account() -> Account:
    return Account(CUSTOMER, eur("90.00"), eur("100.00"), eur("10.00"), applied_offset=7)


FORGET_PAYMENT = ForgetPayment(ORDER, f"{ORDER}:forget_payment", 1, NOW, ORDER, CUSTOMER)


@pytest.mark.parametrize(
    "status", [payment.AUTHORIZED, payment.REFUNDED, payment.CANCELLED, payment.FAILED]
)
def test_the_payment_is_forgotten_and_the_account_keeps_its_money(status: str) -> None:
    paid = Payment(ORDER, eur("10.00"), status, None, 5)
    effect = payment.forget_payment(account(), paid, FORGET_PAYMENT, 9)
    assert effect.rows == (
        (payment.payment_key(CUSTOMER, ORDER), None),
        (CUSTOMER.encode(), replace(account(), applied_offset=9)),
    )
    assert effect.reply is None
    assert payment.account_invariant_violations(effect.rows[-1][1]) == []


def test_no_payment_a_replay_or_an_unknown_customer() -> None:
    assert payment.forget_payment(account(), None, FORGET_PAYMENT, 9) == payment.Effect()
    paid = Payment(ORDER, eur("10.00"), payment.AUTHORIZED, None, 5)
    assert payment.forget_payment(account(), paid, FORGET_PAYMENT, 7) == payment.Effect()
    refused = Payment(ORDER, eur("10.00"), payment.FAILED, "unknown customer: cus-7", 5)
    effect = payment.forget_payment(None, refused, FORGET_PAYMENT, 9)
    assert effect.rows == ((payment.payment_key(CUSTOMER, ORDER), None),)
