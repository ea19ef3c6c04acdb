"""The CancelOrderSaga end to end: an order created, then cancelled, through the four
worker processes on a real Kafka broker; and cancels that are refused.

The products and the customer are this module's own, so the figures are exact whatever
other tests bought.
"""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from chaos.invariants import split_rows
from messaging import catalog, client
from messaging.catalog import Catalog
from messaging.faust_app import utc_now
from messaging.local_workers import Workers
from participants.order.logic import cancel_key, order_invariant_violations
from participants.payment.logic import account_invariant_violations, payment_key
from participants.product.logic import hold_key, stock_invariant_violations
from schemas import messages as m
from tests.integration.order_helpers import http_get, wait_consumed

pytestmark = pytest.mark.integration

CANCEL_PATH = [
    "BEGINNING_CANCEL",
    "REFUNDING_PAYMENT",
    "RETURNING_PRODUCTS",
    "CONFIRMING_CANCEL",
    "ORDER_CANCELLED",
]
ORDERS = ("saga-order-orders-changelog", ("saga-order", "order.commands"))
STOCK = ("saga-product-stock-changelog", ("saga-product", "product.commands"))
ACCOUNTS = ("saga-payment-accounts-changelog", ("saga-payment", "payment.commands"))


@pytest.fixture(scope="module")
def shop(kafka: str) -> Catalog:
    """Two products and a customer of this module only."""
    run = uuid.uuid4().hex[:8]
    parsed = catalog.parse(
        f"""
currency: EUR
products:
  - {{id: c-{run}-a, stock: 10, price: "2.50"}}
  - {{id: c-{run}-b, stock: 5, price: "4.00"}}
customers:
  - {{id: c-{run}-cust, balance: "100.00"}}
"""
    )
    catalog.publish(parsed)
    return parsed


def names(shop: Catalog) -> tuple[str, str, str]:
    a, b = (r.product_id for r in shop.restocks)
    (customer,) = (t.customer_id for t in shop.top_ups)
    return a, b, customer


def run(*requests: m.OrderRequested | m.CancelOrderRequested) -> dict[str, list[m.SagaEvent]]:
    """Produce the requests (each keyed by its saga id) and collect each saga's events
    until it is terminal."""
    ids = [r.order_id if isinstance(r, m.OrderRequested) else r.cancel_id for r in requests]
    producer = client.producer()
    for saga_id, request in zip(ids, requests, strict=True):
        client.send(producer, client.REQUEST_TOPIC, saga_id, request)
    client.flush(producer)
    since = min(r.requested_at for r in requests)
    timelines: dict[str, list[m.SagaEvent]] = {saga_id: [] for saga_id in ids}
    for event in client.follow_sagas(ids, since, timeout=120):
        timelines[event.saga_id].append(event)
    unfinished = [s for s, events in timelines.items() if not events or not events[-1].terminal]
    assert not unfinished, f"sagas not terminal in time: {unfinished}"
    return timelines


def cancel_of(order_id: str) -> m.CancelOrderRequested:
    return m.CancelOrderRequested(str(uuid.uuid4()), order_id, utc_now())


def states(events: list[m.SagaEvent]) -> list[str]:
    return [e.to_state for e in sorted(events, key=lambda e: e.sequence)]


def rows_after(changelog: str, *consumed: tuple[str, str]) -> dict[bytes, object]:
    """A table's rows once each (group, topic) committed what the topic holds now."""
    for group, topic in consumed:
        wait_consumed(group, topic)
    return client.table_rows(changelog)


def test_an_approved_order_is_cancelled_refunded_and_its_stock_returned(
    workers: Workers, shop: Catalog
) -> None:
    a, b, customer = names(shop)
    order = client.order_requested(customer, [(a, 2), (b, 1), (a, 1)])  # a's lines merged
    [created] = run(order).values()
    assert states(created)[-1] == "ORDER_APPROVED", created[-1]
    cancel = cancel_of(order.order_id)
    [cancelled] = run(cancel).values()
    assert states(cancelled) == CANCEL_PATH, cancelled[-1]

    orders = rows_after(*ORDERS)
    row = orders[order.order_id.encode()]
    assert isinstance(row, m.OrderRow)
    assert (row.status, row.cancel_saga) == ("CANCELLED", cancel.cancel_id)
    _own, owned = split_rows({k.decode(): r for k, r in orders.items()})
    mine = owned["cancel"][order.order_id]
    assert order_invariant_violations(row, mine.values()) == []  # type: ignore[arg-type]
    assert {s: c.status for s, c in mine.items()} == {cancel.cancel_id: "CONFIRMED"}  # type: ignore[attr-defined]

    accounts = rows_after(*ACCOUNTS)
    account = accounts[customer.encode()]
    assert isinstance(account, m.Account)
    eur = Decimal("100.00"), Decimal("0.00")
    assert (account.balance.amount, account.captured_archived.amount) == eur  # all back
    payment = accounts[payment_key(customer, order.order_id)]
    assert isinstance(payment, m.Payment)
    assert (payment.status, payment.amount.amount) == ("REFUNDED", Decimal("11.50"))
    assert account_invariant_violations(account, [payment]) == []

    stock = rows_after(*STOCK)
    for product, restocked, bought in ((a, 10, 3), (b, 5, 1)):
        counters = stock[product.encode()]
        hold = stock[hold_key(product, order.order_id)]
        assert isinstance(counters, m.StockRow) and isinstance(hold, m.StockHold)
        assert (hold.status, hold.quantity) == ("RETURNED", bought)
        assert (counters.available, counters.reserved, counters.sold, counters.returned) == (
            restocked,
            0,
            bought,
            bought,
        )
        assert stock_invariant_violations(counters, [hold]) == []

    # what the views show
    port = {name: worker.web_port for name, worker in workers.workers.items()}
    view = http_get(f"http://127.0.0.1:{port['order']}/orders/{order.order_id}").json()
    assert (view["status"], view["cancel_saga"]) == ("CANCELLED", cancel.cancel_id)
    assert view["cancels"] == [{"saga_id": cancel.cancel_id, "status": "CONFIRMED", "reason": None}]
    product_view = http_get(f"http://127.0.0.1:{port['product']}/stock/{a}").json()
    assert (product_view["available"], product_view["sold"], product_view["returned"]) == (10, 3, 3)
    assert product_view["holds"] == [
        {"saga_id": order.order_id, "quantity": 3, "status": "RETURNED"}
    ]

    # a second cancel of the cancelled order is refused, and changes nothing
    again = cancel_of(order.order_id)
    [refused] = run(again).values()
    assert states(refused) == ["BEGINNING_CANCEL", "CANCEL_REJECTED"]
    assert refused[-1].reason == "cancel refused: already cancelled"
    assert rows_after(*ORDERS)[order.order_id.encode()] == row


def test_a_cancel_of_an_order_that_is_not_approved_is_rejected_with_the_reason(
    workers: Workers, shop: Catalog
) -> None:
    a, _b, customer = names(shop)
    rejected = client.order_requested(customer, [(a, 1), ("no-such-product", 1)])
    [created] = run(rejected).values()
    assert states(created)[-1] == "ORDER_REJECTED", created[-1]
    orders = rows_after(*ORDERS)
    before = orders[rejected.order_id.encode()]
    stock_before = rows_after(*STOCK)[a.encode()]
    account_before = rows_after(*ACCOUNTS)[customer.encode()]

    of_rejected, of_unknown = cancel_of(rejected.order_id), cancel_of(f"no-order-{uuid.uuid4()}")
    timelines = run(of_rejected, of_unknown)
    for cancel, why in ((of_rejected, "order rejected"), (of_unknown, "unknown order")):
        events = timelines[cancel.cancel_id]
        assert states(events) == ["BEGINNING_CANCEL", "CANCEL_REJECTED"], events[-1]
        assert events[-1].reason == f"cancel refused: {why}"
        assert events[-1].commands == []  # nothing refunded, returned or undone

    orders = rows_after(*ORDERS)
    assert orders[rejected.order_id.encode()] == before  # the order unchanged
    assert of_unknown.order_id.encode() not in orders  # no order made up
    refusal = orders[cancel_key(rejected.order_id, of_rejected.cancel_id)]
    assert isinstance(refusal, m.OrderCancel) and (refusal.status, refusal.reason) == (
        "REFUSED",
        "order rejected",
    )
    assert rows_after(*STOCK)[a.encode()] == stock_before
    assert rows_after(*ACCOUNTS)[customer.encode()] == account_before
