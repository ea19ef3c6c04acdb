"""The CreateOrderSaga end to end: four worker processes on a real Kafka broker."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import pytest

from chaos.invariants import split_rows
from messaging import client
from messaging.catalog import Catalog
from messaging.local_workers import Workers
from participants.payment.logic import account_invariant_violations, payment_key
from participants.product.logic import hold_key, stock_invariant_violations
from schemas import messages as m
from tests.integration.order_helpers import wait_consumed

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


def rows_after(changelog: str, *consumed: tuple[str, str]) -> dict[bytes, object]:
    """The rows of a table's changelog once each (group, topic) in `consumed` committed
    what the topic holds now: a worker flushes its changelogs before it commits."""
    for group, topic in consumed:
        wait_consumed(group, topic)
    return client.table_rows(changelog)


ORDERS = ("saga-order-orders-changelog", ("saga-order", "order.commands"))
STOCK = (
    "saga-product-stock-changelog",
    ("saga-product", "product.commands"),
)
ACCOUNTS = ("saga-payment-accounts-changelog", ("saga-payment", "payment.commands"))


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
    orders = rows_after(*ORDERS)
    row = orders[order.order_id.encode()]
    assert isinstance(row, m.OrderRow) and row.status == "APPROVED"


def test_unavailable_products_end_rejected(workers: Workers, test_catalog: Catalog) -> None:
    n = ids(test_catalog)
    order = client.order_requested(n["rich"], [(n["widget"], 1), ("no-such-product", 1)])
    [timeline] = run_orders([order]).values()
    assert states(timeline) == ["CREATING_ORDER", "VERIFYING_PRODUCTS", "REJECTING_ORDER", REJECTED]
    assert "no-such-product" in (timeline[-1].reason or "")
    stock = rows_after(*STOCK)
    hold = stock.get(hold_key(n["widget"], order.order_id))
    assert isinstance(hold, m.StockHold) and hold.status == "RELEASED"  # taken, given back


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
    hold = rows_after(*STOCK)[hold_key(n["widget"], order.order_id)]
    assert isinstance(hold, m.StockHold) and (hold.status, hold.quantity) == ("RELEASED", 3)
    accounts = rows_after(*ACCOUNTS)
    account = accounts[n["poor"].encode()]
    assert isinstance(account, m.Account)
    assert account.balance.amount == Decimal("1.00")
    payment = accounts[payment_key(n["poor"], order.order_id)]
    assert isinstance(payment, m.Payment) and payment.status == "FAILED"
    orders = rows_after(*ORDERS)
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
        stock = rows_after(*STOCK)[n["scarce"].encode()]
        assert isinstance(stock, m.StockRow)
        assert (stock.available, stock.reserved, stock.sold) == (0, 0, 1)

    eventually(sold_once)


def send_orders(orders: list[m.OrderRequested]) -> None:
    producer = client.producer()
    for order in orders:
        client.send(producer, client.REQUEST_TOPIC, order.order_id, order)
    client.flush(producer)


def wait_until_all_reach(orders: list[m.OrderRequested], state: str, timeout: float = 60) -> None:
    pending = {o.order_id for o in orders}
    for event in client.follow_sagas(pending, min(o.requested_at for o in orders), timeout):
        if event.to_state == state:
            pending.discard(event.saga_id)
            if not pending:
                return
    raise AssertionError(f"{len(pending)} saga(s) never reached {state}")


def assert_one_history(events: list[m.SagaEvent]) -> None:
    """Sequences 1..n, one transition each: a saga re-started from an empty table would
    begin again at 1; a re-sent event (at-least-once) must be the same transition."""
    transitions: dict[int, set[tuple[str | None, str]]] = defaultdict(set)
    for event in events:
        transitions[event.sequence].add((event.from_state, event.to_state))
    assert sorted(transitions) == list(range(1, len(transitions) + 1)), transitions
    assert all(len(t) == 1 for t in transitions.values()), transitions


def test_killed_orchestrator_recovers_its_table_and_finishes_every_saga(
    workers: Workers, test_catalog: Catalog
) -> None:
    n = ids(test_catalog)
    orders = [client.order_requested(n["rich"], [(n["widget"], 1)]) for _ in range(40)]
    first, second = orders[:20], orders[20:]
    # With the Payment Service down the first sagas wait at AUTHORIZING_PAYMENT, so when
    # the orchestrator dies their state is in its table and nowhere else ...
    workers.kill("payment")
    send_orders(first)
    wait_until_all_reach(first, "AUTHORIZING_PAYMENT")
    # ... and their requests are committed: a restart cannot rebuild them from those.
    wait_consumed("saga-orchestrator", client.REQUEST_TOPIC)
    workers.kill("orchestrator")
    send_orders(second)
    workers.start("orchestrator")
    workers.start("payment")
    workers.wait_ready(timeout=180)
    timelines: dict[str, list[m.SagaEvent]] = defaultdict(list)
    since = min(o.requested_at for o in orders)
    for event in client.follow_sagas([o.order_id for o in orders], since, 180):
        timelines[event.saga_id].append(event)
    final = {saga: states(events)[-1] for saga, events in timelines.items()}
    assert len(final) == len(orders)
    assert set(final.values()) == {APPROVED}, Counter(final.values())
    for events in timelines.values():
        assert_one_history(events)


@dataclass
class Settled:
    """Stock and money once no stock is held any more, read from the changelogs."""

    stock: dict[str, m.StockRow]
    holds: dict[str, dict[str, m.StockHold]]  # product -> saga -> hold
    accounts: dict[str, m.Account]
    payments: dict[str, dict[str, m.Payment]]  # customer -> saga -> payment


def settled_rows(products: list[str], customers: list[str]) -> Settled:
    """Stock and account rows once no stock is held any more (approved sagas' sales are
    applied shortly after they end), each checked against its invariants."""
    result: list[Settled] = []

    def nothing_held() -> None:
        stock_own, stock_owned = split_rows({k.decode(): r for k, r in rows_after(*STOCK).items()})
        account_own, account_owned = split_rows(
            {k.decode(): r for k, r in rows_after(*ACCOUNTS).items()}
        )
        holds, payments = stock_owned.get("hold", {}), account_owned.get("payment", {})
        settled = Settled({}, {}, {}, {})
        for product in products:
            row = stock_own[product]
            assert isinstance(row, m.StockRow)
            mine = holds.get(product, {})
            assert stock_invariant_violations(row, mine.values()) == []  # type: ignore[arg-type]
            assert row.reserved == 0, row
            settled.stock[product], settled.holds[product] = row, mine  # type: ignore[assignment]
        for customer in customers:
            account = account_own[customer]
            assert isinstance(account, m.Account)
            theirs = payments.get(customer, {})
            assert account_invariant_violations(account, list(theirs.values())) == []  # type: ignore[arg-type]
            settled.accounts[customer], settled.payments[customer] = account, theirs  # type: ignore[assignment]
        result[:] = [settled]

    eventually(nothing_held, timeout=120)
    return result[0]


def test_invariants_hold_after_hundreds_of_mixed_orders(
    workers: Workers, test_catalog: Catalog
) -> None:
    n = ids(test_catalog)
    prices = {r.product_id: r.unit_price.amount for r in test_catalog.restocks}
    products = [n["widget"], n["pricey"], n["scarce"]]
    customers = [n["rich"], n["poor"]]
    at_start = settled_rows(products, customers)
    stock_before, accounts_before = at_start.stock, at_start.accounts
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
    approved = [o for o in orders if outcomes[o.order_id] == APPROVED]

    after_all = settled_rows(products, customers)
    stock_after, accounts_after = after_all.stock, after_all.accounts
    for product in products:
        before, after = stock_before[product], stock_after[product]
        sold = sum(i.quantity for o in approved for i in o.items if i.product_id == product)
        assert after.restocked == before.restocked  # nothing restocked twice
        assert after.sold - before.sold == sold  # exactly the approved quantities, once
        assert before.available - after.available == sold  # the rest went back
        for order in orders:
            ordered = sum(i.quantity for i in order.items if i.product_id == product)
            hold = after_all.holds[product].get(order.order_id)
            if order in approved and ordered:
                assert hold is not None and (hold.status, hold.quantity) == ("SOLD", ordered)
            assert hold is None or hold.status != "HELD"  # nothing held once terminal
    for customer in customers:
        before_account, account = accounts_before[customer], accounts_after[customer]
        charged = sum(
            (prices[i.product_id] * i.quantity for o in approved for i in o.items
             if o.customer_id == customer),
            Decimal("0"),
        )  # fmt: skip
        assert account.topped_up == before_account.topped_up  # no top-up applied twice
        assert before_account.balance.amount - account.balance.amount == charged
        authorized = {
            saga for saga, p in after_all.payments[customer].items() if p.status == "AUTHORIZED"
        }
        for order in orders:
            if order.customer_id == customer:
                assert (order.order_id in authorized) == (order in approved)
    order_rows = rows_after(*ORDERS)
    for order in orders:
        row = order_rows[order.order_id.encode()]
        assert isinstance(row, m.OrderRow)
        assert row.status == ("APPROVED" if outcomes[order.order_id] == APPROVED else "REJECTED")
