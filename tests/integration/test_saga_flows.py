"""The CreateOrderSaga end to end: four worker processes on a real Kafka broker."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import pytest

from cli.processes import Workers
from messaging import client
from messaging.catalog import Catalog
from participants.payment.logic import account_invariant_violations
from participants.product.logic import stock_invariant_violations
from schemas import messages as m

pytestmark = pytest.mark.integration

APPROVED, REJECTED = "ORDER_APPROVED", "ORDER_REJECTED"


def ids(test_catalog: Catalog) -> dict[str, str]:
    """Short names -> this session's product and customer ids."""
    names = {r.product_id.rsplit("-", 1)[-1]: r.product_id for r in test_catalog.restocks}
    names |= {t.customer_id.rsplit("-", 1)[-1]: t.customer_id for t in test_catalog.top_ups}
    return names


def run_orders(
    orders: list[m.OrderRequested], timeout: float = 120.0
) -> dict[str, list[m.SagaEvent]]:
    """Produce the orders and collect each saga's events until it is terminal."""
    producer = client.producer()
    for order in orders:
        client.send(producer, client.REQUEST_TOPIC, order.order_id, order)
    client.flush(producer)
    since = min(o.requested_at for o in orders)
    timelines: dict[str, list[m.SagaEvent]] = {o.order_id: [] for o in orders}
    for event in client.follow_sagas(timelines, since, timeout):
        timelines[event.saga_id].append(event)
    unfinished = [s for s, events in timelines.items() if not events or not events[-1].terminal]
    assert not unfinished, f"{len(unfinished)} saga(s) not terminal after {timeout}s"
    return timelines


def eventually(check: Callable[[], None], timeout: float = 30.0) -> None:
    """Retry an assertion: participants finish some work (selling stock) after the saga ends."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def states(events: list[m.SagaEvent]) -> list[str]:
    return [e.to_state for e in sorted(events, key=lambda e: e.sequence)]


def test_happy_path_ends_approved(workers: Workers, test_catalog: Catalog) -> None:
    n = ids(test_catalog)
    order = client.order_requested(n["rich"], [(n["widget"], 2)])
    [timeline] = run_orders([order]).values()
    assert states(timeline) == [
        "CREATING_ORDER",
        "VERIFYING_PRODUCTS",
        "AUTHORIZING_PAYMENT",
        "APPROVING_ORDER",
        APPROVED,
    ]
    orders = client.table_rows("saga-order-orders-changelog")
    row = orders[order.order_id.encode()]
    assert isinstance(row, m.OrderRow) and row.status == "APPROVED"


def test_unavailable_products_end_rejected(workers: Workers, test_catalog: Catalog) -> None:
    n = ids(test_catalog)
    order = client.order_requested(n["rich"], [(n["widget"], 1), ("no-such-product", 1)])
    [timeline] = run_orders([order]).values()
    assert states(timeline) == ["CREATING_ORDER", "VERIFYING_PRODUCTS", "REJECTING_ORDER", REJECTED]
    assert "no-such-product" in (timeline[-1].reason or "")
    stock = client.table_rows("saga-product-stock-changelog")
    widget = stock[n["widget"].encode()]
    assert isinstance(widget, m.StockRow)
    assert order.order_id not in widget.reservations  # what was taken went back


def test_failed_payment_releases_stock_and_ends_rejected(
    workers: Workers, test_catalog: Catalog
) -> None:
    n = ids(test_catalog)
    order = client.order_requested(n["poor"], [(n["widget"], 3)])
    [timeline] = run_orders([order]).values()
    assert states(timeline) == [
        "CREATING_ORDER",
        "VERIFYING_PRODUCTS",
        "AUTHORIZING_PAYMENT",
        "RELEASING_PRODUCTS",
        "REJECTING_ORDER",
        REJECTED,
    ]
    assert "insufficient funds" in (timeline[-1].reason or "")
    stock = client.table_rows("saga-product-stock-changelog")[n["widget"].encode()]
    assert isinstance(stock, m.StockRow)
    assert order.order_id not in stock.reservations
    assert stock.settled.get(order.order_id) == "RELEASED"
    account = client.table_rows("saga-payment-accounts-changelog")[n["poor"].encode()]
    assert isinstance(account, m.Account)
    assert account.balance.amount == Decimal("1.00")
    orders = client.table_rows("saga-order-orders-changelog")
    row = orders[order.order_id.encode()]
    assert isinstance(row, m.OrderRow) and row.status == "REJECTED"


def test_duplicate_request_does_not_start_a_second_saga(
    workers: Workers, test_catalog: Catalog
) -> None:
    n = ids(test_catalog)
    order = client.order_requested(n["rich"], [(n["widget"], 1)])
    again = client.order_requested(n["poor"], [(n["widget"], 5)], order_id=order.order_id)
    timelines = run_orders([order, again])
    events = timelines[order.order_id]
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert states(events)[-1] == APPROVED


def test_two_sagas_compete_for_the_last_unit(workers: Workers, test_catalog: Catalog) -> None:
    n = ids(test_catalog)
    first = client.order_requested(n["rich"], [(n["scarce"], 1)])
    second = client.order_requested(n["rich"], [(n["scarce"], 1)])
    timelines = run_orders([first, second])
    outcomes = Counter(states(events)[-1] for events in timelines.values())
    assert outcomes == Counter({APPROVED: 1, REJECTED: 1})

    def sold_once() -> None:
        stock = client.table_rows("saga-product-stock-changelog")[n["scarce"].encode()]
        assert isinstance(stock, m.StockRow)
        assert (stock.available, stock.reserved, stock.sold) == (0, 0, 1)

    eventually(sold_once)


def test_killed_orchestrator_recovers_its_table_and_finishes_every_saga(
    workers: Workers, test_catalog: Catalog
) -> None:
    n = ids(test_catalog)
    orders = [client.order_requested(n["rich"], [(n["widget"], 1)]) for _ in range(40)]
    producer = client.producer()
    for order in orders[:20]:
        client.send(producer, client.REQUEST_TOPIC, order.order_id, order)
    client.flush(producer)
    time.sleep(0.5)  # let some sagas get half way
    workers.kill("orchestrator")
    for order in orders[20:]:
        client.send(producer, client.REQUEST_TOPIC, order.order_id, order)
    client.flush(producer)
    workers.start("orchestrator")
    since = min(o.requested_at for o in orders)
    final: dict[str, str] = {}
    for event in client.follow_sagas([o.order_id for o in orders], since, 180):
        if event.terminal:
            final[event.saga_id] = f"{event.to_state} {event.reason or ''}".strip()
    assert len(final) == len(orders)
    assert set(final.values()) == {APPROVED}


def test_invariants_hold_after_hundreds_of_mixed_orders(
    workers: Workers, test_catalog: Catalog
) -> None:
    n = ids(test_catalog)
    rng = random.Random(7)
    orders = []
    for _ in range(300):
        customer = n["rich"] if rng.random() < 0.8 else n["poor"]
        items = [(n["widget"], rng.randint(1, 3))]
        if rng.random() < 0.2:
            items.append((n["pricey"], 1))
        if rng.random() < 0.1:
            items.append((n["scarce"], 1))
        orders.append(client.order_requested(customer, items))
    timelines = run_orders(orders, timeout=240)
    outcomes = {saga: states(events)[-1] for saga, events in timelines.items()}
    assert set(outcomes.values()) <= {APPROVED, REJECTED}
    assert APPROVED in outcomes.values() and REJECTED in outcomes.values()

    def stock_settled() -> None:
        stock_rows = client.table_rows("saga-product-stock-changelog")
        for key in (n["widget"], n["pricey"], n["scarce"]):
            row = stock_rows[key.encode()]
            assert isinstance(row, m.StockRow)
            assert stock_invariant_violations(row) == []
            for order in orders:
                if outcomes[order.order_id] == APPROVED and any(
                    i.product_id == key for i in order.items
                ):
                    assert row.settled.get(order.order_id) == "SOLD"
                assert order.order_id not in row.reservations  # nothing held once terminal

    # Approved reservations become sold shortly after the saga ends (from saga.events).
    eventually(stock_settled, timeout=120)
    accounts = client.table_rows("saga-payment-accounts-changelog")
    order_rows = client.table_rows("saga-order-orders-changelog")
    for key in (n["rich"], n["poor"]):
        account = accounts[key.encode()]
        assert isinstance(account, m.Account)
        assert account_invariant_violations(account) == []
        authorized = {p.saga_id for p in account.payments if p.status == "AUTHORIZED"}
        for order in orders:
            if order.customer_id == key:
                approved = outcomes[order.order_id] == APPROVED
                assert (order.order_id in authorized) == approved
    for order in orders:
        row = order_rows[order.order_id.encode()]
        assert isinstance(row, m.OrderRow)
        assert row.status == ("APPROVED" if outcomes[order.order_id] == APPROVED else "REJECTED")
