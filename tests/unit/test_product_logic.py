"""Product Service logic: the commands travelling from product to product, the saga's
holds and the product's counters, unit by unit.

`Stock` keeps the table in a dict and plays the topic: it delivers each record, with
the next offset, to the product it is for, and follows every forwarded hop until the
reply. Replays and races are in test_product_replays.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from participants.product import logic
from participants.product.logic import (
    HELD,
    REFUSED,
    RELEASED,
    RETURNED,
    SOLD,
    Effect,
    InvalidRestock,
    hold_key,
    product_of,
    restock_key,
    stock_invariant_violations,
)
from schemas import codec
from schemas.limits import MAX_ORDER_LINES, MAX_QUANTITY, MAX_STOCK
from schemas.messages import (
    CommandApplied,
    ItemResult,
    MissingItem,
    Money,
    OrderItem,
    Outcome,
    ProductsReleased,
    ProductsReserved,
    ProductsReturned,
    ProductsUnavailable,
    ReleaseItem,
    ReleaseProducts,
    ReserveProducts,
    Restock,
    ReturnProducts,
    SellProducts,
    StockHold,
    StockRow,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SAGA = "saga-1"
RESERVE_ID = f"{SAGA}:verify_products"
RELEASE_ID = f"{SAGA}:release_products"
TWO_PRODUCTS = [OrderItem("p1", 2), OrderItem("p2", 1), OrderItem("p1", 1)]


def eur(amount: str) -> Money:
    return Money(Decimal(amount), "EUR")


def reserve_cmd(items: list[OrderItem], attempt: int = 1, saga: str = SAGA) -> ReserveProducts:
    return ReserveProducts(saga, f"{saga}:verify_products", attempt, T0, saga, items)


def release_cmd(items: list[OrderItem] = TWO_PRODUCTS, attempt: int = 1) -> ReleaseProducts:
    return ReleaseProducts(SAGA, RELEASE_ID, attempt, T0, SAGA, items)


def sell_cmd(items: list[OrderItem] = TWO_PRODUCTS) -> SellProducts:
    return SellProducts(SAGA, f"{SAGA}:sell_products", 1, T0, SAGA, items)


def return_cmd(
    items: list[OrderItem] = TWO_PRODUCTS, attempt: int = 1, cancel: str = "cancel-1"
) -> ReturnProducts:
    """A CancelOrderSaga's return of what the order (saga SAGA) bought."""
    return ReturnProducts(cancel, f"{cancel}:return_products", attempt, T0, SAGA, items)


class Stock:
    """The stock table as a dict, and product.commands as a list of records."""

    def __init__(self) -> None:
        self.rows: dict[bytes, Any] = {}
        self.offset = 0
        self.handled: list[tuple[str, str]] = []  # (record type, product) as delivered

    def add(self, product: str, quantity: int, price: str = "2.50") -> None:
        self.handle(Restock(f"r-{product}-{self.offset}", product, quantity, eur(price)))

    def handle(self, record: Any, offset: int | None = None) -> Effect:
        """One record, at the next offset (or `offset`): what the agent does with it."""
        if offset is None:
            offset, self.offset = self.offset, self.offset + 1
        product = product_of(record)
        self.handled.append((type(record).__name__, product))
        row, owned = self.rows.get(product.encode()), self.rows.get(logic.owned_key(record))
        effect = logic.handle(record, row, owned, T0, offset)
        for key, value in effect.rows:
            self.rows[key] = value
        return effect

    def run(self, command: Any) -> tuple[Any, list[Any]]:
        """Deliver `command` and every record it forwards; (the reply, the releases).
        A command visits each product of its order once: no more hops than products."""
        queue: list[Any] = [command]
        reply: Any = None
        releases: list[Any] = []
        for _hop in range(MAX_ORDER_LINES + 1):
            if not queue:
                break
            effect = self.handle(queue.pop(0))
            for record in effect.forward:
                (releases if isinstance(record, ReleaseItem) else queue).append(record)
            reply = effect.reply if effect.reply is not None else reply
        assert not queue, f"{type(command).__name__} still travelling after every product"
        for release in releases:
            self.handle(release)
        return reply, releases

    def product(self, product: str) -> StockRow:
        row = self.rows[product.encode()]
        assert isinstance(row, StockRow)
        return row

    def hold(self, product: str, saga: str = SAGA) -> StockHold | None:
        return self.rows.get(hold_key(product, saga))


def stocked(p1: int = 5, p2: int = 5) -> Stock:
    stock = Stock()
    stock.add("p1", p1)
    stock.add("p2", p2, price="4.00")
    return stock


# =====================================================================================
# ReserveProducts
# =====================================================================================


def test_reserve_travels_product_by_product_and_the_last_one_replies() -> None:
    stock = stocked()
    reply, releases = stock.run(reserve_cmd(TWO_PRODUCTS))
    assert stock.handled[2:] == [("ReserveProducts", "p1"), ("ReserveProducts", "p2")]
    assert reply == ProductsReserved(SAGA, RESERVE_ID, 1, Outcome.SUCCESS, T0, eur("11.50"))
    assert releases == []
    assert stock.hold("p1") == StockHold(SAGA, "p1", 3, HELD, 2, -1)  # lines merged
    p1 = stock.product("p1")
    assert (p1.available, p1.reserved, p1.sold, p1.applied_offset) == (2, 3, 0, 2)


def test_a_hop_writes_the_hold_then_the_product_and_forwards_its_result() -> None:
    stock = stocked()
    effect = stock.handle(reserve_cmd(TWO_PRODUCTS))
    assert [key for key, _row in effect.rows] == [hold_key("p1", SAGA), b"p1"]  # product last
    (forwarded,) = effect.forward
    assert isinstance(forwarded, ReserveProducts) and forwarded.hop == 1
    assert forwarded.results == [ItemResult(SAGA, "p1", 3, True, 2, eur("2.50"))]
    assert product_of(forwarded) == "p2" and effect.reply is None


def test_a_missing_product_gives_back_what_was_reserved_and_names_every_miss() -> None:
    stock = stocked(p1=5, p2=0)
    items = [OrderItem("p1", 3), OrderItem("p2", 1), OrderItem("nope", 2)]
    reply, releases = stock.run(reserve_cmd(items))
    assert reply == ProductsUnavailable(
        SAGA,
        RESERVE_ID,
        1,
        Outcome.FAILURE,
        T0,
        [MissingItem("p2", 1, 0), MissingItem("nope", 2, 0)],
    )
    assert releases == [ReleaseItem(SAGA, "p1")]
    assert stock.product("p1").available == 5 and stock.product("p1").reserved == 0
    assert stock.hold("p1") == StockHold(SAGA, "p1", 3, RELEASED, 2, 5)
    assert stock.hold("p2") == StockHold(SAGA, "p2", 1, REFUSED, 3, -1)
    assert stock.hold("nope") == StockHold(SAGA, "nope", 2, REFUSED, 4, -1)
    assert b"nope" not in stock.rows  # a refusal creates no product


def test_a_reserve_re_sent_after_the_missing_product_arrived_is_refused_again() -> None:
    # Attempt 1 finds no product and the saga is rejected on its ProductsUnavailable;
    # the product is restocked before the re-sent attempt 2 (its deadline fired first)
    # reaches it. Reserving then would hold units for a saga that never releases them.
    stock = stocked()
    items = [OrderItem("late", 2)]
    first, _ = stock.run(reserve_cmd(items, attempt=1))
    stock.add("late", 10)
    second, releases = stock.run(reserve_cmd(items, attempt=2))
    assert isinstance(first, ProductsUnavailable) and isinstance(second, ProductsUnavailable)
    assert second.attempt == 2 and releases == []
    late = stock.product("late")
    assert (late.available, late.reserved) == (10, 0)
    assert stock.hold("late") == StockHold(SAGA, "late", 2, REFUSED, 2, -1)
    assert stock_invariant_violations(late, [stock.hold("late")]) == []  # type: ignore[list-item]


def test_a_release_at_a_product_that_does_not_exist_yet_refuses_a_later_reserve() -> None:
    stock = stocked()
    items = [OrderItem("late", 2)]
    reply, _ = stock.run(release_cmd(items))
    assert isinstance(reply, ProductsReleased)
    assert stock.hold("late") == StockHold(SAGA, "late", 0, RELEASED, -1, 2)
    stock.add("late", 10)
    reply, _ = stock.run(reserve_cmd(items))  # overtaken by its release: refused
    assert isinstance(reply, ProductsUnavailable)
    assert stock.product("late").reserved == 0


def test_a_reserve_after_its_release_at_a_product_still_missing_is_refused() -> None:
    stock = stocked()
    items = [OrderItem("late", 2)]
    stock.run(release_cmd(items))  # the release overtook the reserve
    reply, releases = stock.run(reserve_cmd(items))
    assert isinstance(reply, ProductsUnavailable) and releases == []
    assert reply.missing == [MissingItem("late", 2, 0)]


def test_duplicates_at_a_product_that_does_not_exist_write_nothing() -> None:
    stock = stocked()
    items = [OrderItem("nope", 2)]
    stock.run(reserve_cmd(items))
    refused = stock.hold("nope")
    again = stock.handle(reserve_cmd(items, attempt=2))  # re-sent on its deadline
    assert isinstance(again.reply, ProductsUnavailable) and again.rows == ()
    assert stock.handle(release_cmd(items)).rows == ()  # the saga's compensation
    assert stock.hold("nope") == refused


def test_selling_at_a_product_that_does_not_exist_writes_nothing() -> None:
    stock = stocked()
    assert stock.handle(sell_cmd([OrderItem("gone", 1)])) == Effect()
    assert stock.hold("gone") is None


def test_products_priced_in_different_currencies_cannot_be_totalled() -> None:
    stock = stocked()
    stock.handle(Restock("r-usd", "p3", 5, Money(Decimal("1.00"), "USD")))
    reply, releases = stock.run(reserve_cmd([OrderItem("p1", 1), OrderItem("p3", 1)]))
    assert isinstance(reply, ProductsUnavailable) and reply.missing == [MissingItem("p3", 1, 4)]
    assert releases == [ReleaseItem(SAGA, "p1"), ReleaseItem(SAGA, "p3")]


@pytest.mark.parametrize(
    ("items", "missing"),
    [
        ([], []),
        ([OrderItem("p1", 2), OrderItem("p2", 0)], [MissingItem("p2", 0, 0)]),
        ([OrderItem("p3", -1)], [MissingItem("p3", -1, 0)]),
        ([OrderItem("p1", MAX_QUANTITY), OrderItem("p1", 1)], []),  # merged: too many
        ([OrderItem(f"p{i}", 1) for i in range(MAX_ORDER_LINES + 1)], []),
    ],
)
def test_an_order_breaking_the_limits_is_unavailable_at_its_first_hop(
    items: list[OrderItem], missing: list[MissingItem]
) -> None:
    stock = stocked()
    effect = logic.reserve_products(None, None, reserve_cmd(items), T0, 10)
    assert effect.reply == ProductsUnavailable(SAGA, RESERVE_ID, 1, Outcome.FAILURE, T0, missing)
    assert (effect.rows, effect.forward) == ((), ())
    assert stock.hold("p1") is None


def test_an_order_with_many_bad_lines_names_ten_of_them() -> None:
    items = [OrderItem(f"p{i}", 0) for i in range(12)]
    effect = logic.reserve_products(None, None, reserve_cmd(items), T0, 10)
    assert isinstance(effect.reply, ProductsUnavailable)
    assert effect.reply.missing == [MissingItem(f"p{i}", 0, 0) for i in range(10)]


def test_a_hop_past_the_orders_last_product_is_for_no_product() -> None:
    # The agent dead-letters a record whose key is not its product: such a hop has none.
    # TWO_PRODUCTS: three lines, two products once merged.
    hops = {hop: product_of(replace(reserve_cmd(TWO_PRODUCTS), hop=hop)) for hop in (1, 2, -1)}
    assert hops == {1: "p2", 2: "", -1: ""}
    assert product_of(replace(sell_cmd(), hop=2)) == ""
    assert product_of(replace(release_cmd([OrderItem("p1", 1)]), hop=1)) == ""


def test_reserving_exactly_the_available_units_succeeds_and_one_more_does_not() -> None:
    stock = stocked(p1=3)
    reply, _ = stock.run(reserve_cmd([OrderItem("p1", 3)]))
    assert isinstance(reply, ProductsReserved)
    assert (stock.product("p1").available, stock.product("p1").reserved) == (0, 3)
    short = stocked(p1=3)
    reply, _ = short.run(reserve_cmd([OrderItem("p1", 4)]))
    assert isinstance(reply, ProductsUnavailable) and reply.missing == [MissingItem("p1", 4, 3)]
    assert short.product("p1").available == 3


def test_a_duplicate_reserve_gets_the_same_answer_and_holds_once() -> None:
    stock = stocked()
    first, _ = stock.run(reserve_cmd(TWO_PRODUCTS))
    again, _ = stock.run(reserve_cmd(TWO_PRODUCTS, attempt=2))
    assert again == ProductsReserved(SAGA, RESERVE_ID, 2, Outcome.SUCCESS, T0, eur("11.50"))
    assert stock.product("p1").reserved == 3 and first is not None


def test_a_refused_product_stays_refused_after_a_restock() -> None:
    stock = stocked(p1=2)
    stock.run(reserve_cmd([OrderItem("p1", 3)]))
    stock.add("p1", 10)
    reply, _ = stock.run(reserve_cmd([OrderItem("p1", 3)], attempt=2))
    assert isinstance(reply, ProductsUnavailable)
    assert stock.product("p1").available == 12


def test_the_largest_order_costs_each_hop_only_its_own_product() -> None:
    items = [OrderItem(f"p{i:03d}", 1) for i in range(MAX_ORDER_LINES)]
    stock = Stock()
    for item in items:
        stock.add(item.product_id, 5)
    reply, _ = stock.run(reserve_cmd(items))
    assert isinstance(reply, ProductsReserved)
    assert reply.total == eur(str(Decimal("2.50") * MAX_ORDER_LINES))
    assert all(stock.product(i.product_id).reserved == 1 for i in items)
    largest = reserve_cmd(items)
    forwarded = logic.reserve_products(None, None, largest, T0, 0).forward[0]
    assert len(codec.encode(forwarded)) < 100_000  # far below a record's 1,000,000 bytes


# =====================================================================================
# ReleaseProducts, ReleaseItem
# =====================================================================================


def test_release_gives_everything_back_and_the_last_hop_replies() -> None:
    stock = stocked()
    stock.run(reserve_cmd(TWO_PRODUCTS))
    reply, _ = stock.run(release_cmd())
    assert reply == ProductsReleased(SAGA, RELEASE_ID, 1, Outcome.SUCCESS, T0)
    for product in ("p1", "p2"):
        row = stock.product(product)
        assert (row.available, row.reserved) == (5, 0)
        hold = stock.hold(product)
        assert hold is not None and hold.status == RELEASED
    again, _ = stock.run(release_cmd(attempt=2))  # a duplicate: the same answer
    assert again == ProductsReleased(SAGA, RELEASE_ID, 2, Outcome.SUCCESS, T0)
    assert stock.product("p1").available == 5


def test_a_release_hop_gives_back_its_product_and_forwards_to_the_next() -> None:
    stock = stocked()
    stock.run(reserve_cmd(TWO_PRODUCTS))
    effect = stock.handle(release_cmd())
    assert [key for key, _row in effect.rows] == [hold_key("p1", SAGA), b"p1"]
    (forwarded,) = effect.forward
    assert isinstance(forwarded, ReleaseProducts) and forwarded.hop == 1
    assert product_of(forwarded) == "p2" and effect.reply is None


def test_a_release_of_an_order_without_lines_replies_and_writes_nothing() -> None:
    effect = logic.release_products(None, None, release_cmd([]), T0, 3)
    assert effect == Effect((), (), ProductsReleased(SAGA, RELEASE_ID, 1, Outcome.SUCCESS, T0))


def test_a_release_before_the_reserve_makes_the_reserve_refused() -> None:
    stock = stocked()
    reply, _ = stock.run(release_cmd())
    assert isinstance(reply, ProductsReleased)
    assert stock.hold("p1") == StockHold(SAGA, "p1", 0, RELEASED, -1, 2)
    late, releases = stock.run(reserve_cmd(TWO_PRODUCTS))
    assert isinstance(late, ProductsUnavailable) and releases == []
    assert stock.product("p1").available == 5


def test_release_item_gives_back_a_held_product_once() -> None:
    stock = stocked()
    stock.run(reserve_cmd([OrderItem("p1", 3)]))
    stock.handle(ReleaseItem(SAGA, "p1"))
    stock.handle(ReleaseItem(SAGA, "p1"))
    assert (stock.product("p1").available, stock.product("p1").reserved) == (5, 0)


# =====================================================================================
# SellProducts
# =====================================================================================


def test_sell_makes_what_the_saga_holds_sold_once() -> None:
    stock = stocked()
    stock.run(reserve_cmd(TWO_PRODUCTS))
    reply, _ = stock.run(sell_cmd())
    assert reply is None  # a notification: no reply
    stock.run(sell_cmd())  # a duplicate
    stock.run(reserve_cmd(TWO_PRODUCTS, attempt=2))  # a late duplicate: no second sale
    stock.run(sell_cmd())
    p1 = stock.product("p1")
    assert (p1.available, p1.reserved, p1.sold) == (2, 0, 3)
    assert stock.hold("p1") == StockHold(SAGA, "p1", 3, SOLD, 2, 4)
    holds = [stock.hold("p1")]
    assert stock_invariant_violations(p1, holds) == []  # type: ignore[arg-type]


def test_a_sell_hop_sells_its_product_and_forwards_to_the_next() -> None:
    stock = stocked()
    stock.run(reserve_cmd(TWO_PRODUCTS))
    effect = stock.handle(sell_cmd())
    assert [key for key, _row in effect.rows] == [hold_key("p1", SAGA), b"p1"]
    (forwarded,) = effect.forward
    assert isinstance(forwarded, SellProducts) and forwarded.hop == 1
    assert product_of(forwarded) == "p2" and effect.reply is None


def test_a_sale_is_never_released_and_nothing_unheld_is_sold() -> None:
    stock = stocked()
    stock.run(reserve_cmd([OrderItem("p1", 9)]))  # refused
    stock.run(sell_cmd([OrderItem("p1", 9)]))
    assert stock.product("p1").sold == 0
    stock.run(reserve_cmd([OrderItem("p2", 1)], saga="s2"))
    sale = SellProducts("s2", "s2:sell_products", 1, T0, "s2", [OrderItem("p2", 1)])
    stock.run(sale)
    stock.run(ReleaseProducts("s2", "s2:release_products", 1, T0, "s2", [OrderItem("p2", 1)]))
    assert (stock.product("p2").sold, stock.product("p2").available) == (1, 4)


def test_the_product_row_stays_small_whatever_its_history() -> None:
    stock = stocked(p1=1_000_000)
    for i in range(2000):
        saga = f"saga-{i:05d}-0123456789abcdef0123456789ab"
        items = [OrderItem("p1", 2)]
        stock.run(ReserveProducts(saga, f"{saga}:verify_products", 1, T0, saga, items))
        settle = SellProducts if i % 2 else ReleaseProducts
        stock.run(settle(saga, f"{saga}:x", 1, T0, saga, items))
    row = stock.product("p1")
    assert (row.available, row.sold) == (1_000_000 - 2000, 2000)
    assert len(codec.encode(row)) < 100


# =====================================================================================
# ReturnProducts
# =====================================================================================


def test_return_gives_back_what_the_order_bought_and_the_last_hop_replies() -> None:
    stock = stocked()
    stock.run(reserve_cmd(TWO_PRODUCTS))
    stock.run(sell_cmd())
    stock.handled.clear()
    reply, releases = stock.run(return_cmd(attempt=2))
    assert stock.handled == [("ReturnProducts", "p1"), ("ReturnProducts", "p2")]
    assert reply == ProductsReturned("cancel-1", "cancel-1:return_products", 2, Outcome.SUCCESS, T0)
    assert releases == []
    assert stock.hold("p1") == StockHold(SAGA, "p1", 3, RETURNED, 2, 4, return_offset=6)
    assert stock.rows.get(hold_key("p1", "cancel-1")) is None  # the order's hold, not its own
    p1, p2 = stock.product("p1"), stock.product("p2")
    assert (p1.available, p1.reserved, p1.sold, p1.returned, p1.applied_offset) == (5, 0, 3, 3, 6)
    assert (p2.available, p2.reserved, p2.sold, p2.returned) == (5, 0, 1, 1)
    for product in ("p1", "p2"):
        holds = [stock.hold(product)]
        assert stock_invariant_violations(stock.product(product), holds) == []  # type: ignore[arg-type]


def test_a_hop_writes_the_hold_then_the_product_and_forwards() -> None:
    stock = stocked()
    stock.run(reserve_cmd(TWO_PRODUCTS))
    stock.run(sell_cmd())
    effect = stock.handle(return_cmd())
    assert [key for key, _row in effect.rows] == [hold_key("p1", SAGA), b"p1"]
    (forward,) = effect.forward
    assert isinstance(forward, ReturnProducts) and forward.hop == 1 and effect.reply is None
    assert logic.owned_key(forward) == hold_key("p2", SAGA)


def test_a_duplicate_return_gives_back_once_and_is_answered_again() -> None:
    stock = stocked()
    stock.run(reserve_cmd(TWO_PRODUCTS))
    stock.run(sell_cmd())
    stock.run(return_cmd())
    before = dict(stock.rows)
    reply, _ = stock.run(return_cmd(attempt=2))
    assert isinstance(reply, ProductsReturned) and reply.attempt == 2
    assert stock.rows == before
    stock.run(sell_cmd())  # a late sale of the create saga: nothing is sold again
    stock.run(release_cmd())
    assert stock.rows == before


@pytest.mark.parametrize("settled", ["none", "released", "refused", "missing product"])
def test_a_return_of_what_was_not_sold_changes_nothing_and_still_replies(settled: str) -> None:
    stock = stocked(p1=5, p2=5)
    items = [OrderItem("p1", 2), OrderItem("p2", 1)]
    if settled == "missing product":
        items = [OrderItem("p1", 2), OrderItem("p9", 1)]
    elif settled == "refused":
        items = [OrderItem("p1", 9), OrderItem("p2", 1)]
    if settled in ("released", "refused"):
        stock.run(reserve_cmd(items))
    if settled == "released":
        stock.run(release_cmd(items))
    before = dict(stock.rows)
    reply, _ = stock.run(return_cmd(items))
    assert isinstance(reply, ProductsReturned) and reply.outcome is Outcome.SUCCESS
    assert stock.rows == before


def test_a_return_that_overtakes_the_sale_sells_and_returns_at_once() -> None:
    # The Order Service approved the order and the cancel ran before the orchestrator's
    # SellProducts came: the units are still HELD for the order.
    stock = stocked()
    stock.run(reserve_cmd(TWO_PRODUCTS))
    reply, _ = stock.run(return_cmd())
    assert isinstance(reply, ProductsReturned)
    assert stock.hold("p1") == StockHold(SAGA, "p1", 3, RETURNED, 2, 4, return_offset=4)
    p1 = stock.product("p1")
    assert (p1.available, p1.reserved, p1.sold, p1.returned) == (5, 0, 3, 3)
    before = dict(stock.rows)
    stock.run(sell_cmd())  # the late sale sells nothing
    assert stock.rows == before
    for product in ("p1", "p2"):
        holds = [stock.hold(product)]
        assert stock_invariant_violations(stock.product(product), holds) == []  # type: ignore[arg-type]


def test_a_return_of_part_of_an_order_returns_what_each_product_sold() -> None:
    stock = stocked()
    stock.run(reserve_cmd(TWO_PRODUCTS))
    stock.run(sell_cmd())
    # the quantities come from the holds, whatever the command says
    reply, _ = stock.run(return_cmd([OrderItem("p1", 1)]))
    assert isinstance(reply, ProductsReturned)
    assert (stock.product("p1").available, stock.product("p1").returned) == (5, 3)
    assert (stock.product("p2").available, stock.product("p2").returned) == (4, 0)


def test_returned_units_can_be_sold_again() -> None:
    stock = stocked(p1=3, p2=1)
    stock.run(reserve_cmd(TWO_PRODUCTS))
    stock.run(sell_cmd())
    assert stock.product("p1").available == 0
    stock.run(return_cmd())
    reply, _ = stock.run(reserve_cmd(TWO_PRODUCTS, saga="s2"))
    assert isinstance(reply, ProductsReserved)
    p1 = stock.product("p1")
    assert (p1.available, p1.reserved, p1.sold, p1.returned, p1.restocked) == (0, 3, 3, 3, 3)
    assert stock_invariant_violations(p1) == []


# =====================================================================================
# replays
# =====================================================================================


def test_a_replay_of_what_was_all_applied_does_nothing() -> None:
    stock = stocked()
    stock.handle(reserve_cmd(TWO_PRODUCTS))  # offset 2 at p1
    before = dict(stock.rows)
    assert stock.handle(reserve_cmd(TWO_PRODUCTS), offset=2) == Effect()
    assert stock.rows == before


def test_a_replay_applies_the_sale_and_the_return_its_returned_hold_recorded() -> None:
    """A crash wrote the hold back RETURNED, but not the product's counters, which saw
    neither the sale nor the return: replaying both applies both once."""
    stock = stocked()
    items = [OrderItem("p1", 3)]
    stock.handle(reserve_cmd(items), offset=7)
    before = stock.product("p1")
    stock.handle(sell_cmd(items), offset=8)
    stock.handle(return_cmd(items), offset=9)
    assert stock.hold("p1") == StockHold(SAGA, "p1", 3, RETURNED, 7, 8, return_offset=9)
    stock.rows[b"p1"] = before
    stock.handle(sell_cmd(items), offset=8)
    row = stock.product("p1")
    assert (row.available, row.reserved, row.sold, row.returned) == (2, 0, 3, 0)
    effect = stock.handle(return_cmd(items), offset=9)
    assert isinstance(effect.reply, ProductsReturned)
    row = stock.product("p1")
    assert (row.available, row.reserved, row.sold, row.returned, row.applied_offset) == (
        5,
        0,
        3,
        3,
        9,
    )
    assert stock.handle(return_cmd(items), offset=9) == Effect()  # all applied now


def test_a_replay_of_a_return_that_overtook_the_sale_sells_and_returns_once() -> None:
    stock = stocked()
    items = [OrderItem("p1", 3)]
    stock.handle(reserve_cmd(items), offset=7)
    before = stock.product("p1")
    stock.handle(return_cmd(items), offset=8)
    stock.handle(sell_cmd(items), offset=9)  # late: sells nothing
    assert stock.hold("p1") == StockHold(SAGA, "p1", 3, RETURNED, 7, 8, return_offset=8)
    stock.rows[b"p1"] = before  # the hold written back, the counters not
    stock.handle(return_cmd(items), offset=8)
    stock.handle(sell_cmd(items), offset=9)
    row = stock.product("p1")
    assert (row.available, row.reserved, row.sold, row.returned) == (5, 0, 3, 3)
    assert stock_invariant_violations(row, [stock.hold("p1")]) == []  # type: ignore[list-item]


def test_a_replay_applies_the_moves_its_hold_recorded() -> None:
    """A crash wrote the hold back after its reserve and its release, but not the
    product's counters (which saw neither): replaying both applies both moves once."""
    stock = stocked()
    before = stock.product("p1")
    items = [OrderItem("p1", 3)]
    stock.handle(reserve_cmd(items), offset=7)
    stock.handle(release_cmd(items), offset=8)
    assert stock.hold("p1") == StockHold(SAGA, "p1", 3, RELEASED, 7, 8)
    stock.rows[b"p1"] = before  # the counters' change was lost, the hold's not
    effect = stock.handle(reserve_cmd(items), offset=7)
    assert effect.reply is not None and isinstance(effect.reply, ProductsReserved)
    assert (stock.product("p1").available, stock.product("p1").reserved) == (2, 3)
    stock.handle(release_cmd(items), offset=8)
    row = stock.product("p1")
    assert (row.available, row.reserved, row.applied_offset) == (5, 0, 8)


# =====================================================================================
# restock
# =====================================================================================


def test_restock_creates_the_product_and_is_applied_once_per_id() -> None:
    stock = Stock()
    effect = stock.handle(Restock("r1", "p1", 4, eur("2.50")))
    stock.handle(Restock("r1", "p1", 4, eur("2.50")))  # the same restock again
    stock.handle(Restock("r2", "p1", 0, eur("3.00")))  # a price change
    assert stock.product("p1") == StockRow("p1", 4, 0, 0, 4, eur("3.00"), applied_offset=2)
    # The mark that it was applied first, the product last, with the record's offset.
    assert effect.rows == (
        (restock_key("p1", "r1"), CommandApplied("r1", 0)),
        (b"p1", StockRow("p1", 4, 0, 0, 4, eur("2.50"), applied_offset=0)),
    )


def test_a_product_may_be_restocked_up_to_the_limit_and_not_a_unit_more() -> None:
    stock = Stock()
    stock.handle(Restock("r1", "p1", MAX_STOCK, eur("1.00")))  # a new product, all at once
    assert stock.product("p1").available == MAX_STOCK
    with pytest.raises(InvalidRestock, match=f"{MAX_STOCK} units at most in all"):
        stock.handle(Restock("r2", "p1", 1, eur("1.00")))


NOT_ISO = "unit price: currency {!r} is not an ISO 4217 code (three upper-case letters)"
TOO_MANY = "must be >= 0, 1000000000000000 units at most in all"


@pytest.mark.parametrize(
    ("quantity", "price", "problem"),
    [
        (-1, eur("1.00"), f"quantity -1 {TOO_MANY}"),
        (1, eur("-1.00"), "unit price -1.00 EUR is negative"),
        (1, eur("10000000.01"), "unit price 10000000.01 EUR is more than 10000000.00"),
        (10**15 + 1, eur("1.00"), f"quantity 1000000000000001 {TOO_MANY}"),
        (1, Money(Decimal("1.00"), ""), NOT_ISO.format("")),
        (1, Money(Decimal("1.00"), "eur"), NOT_ISO.format("eur")),
        (1, Money(Decimal("1.00"), "NOT-A-CURRENCY"), NOT_ISO.format("NOT-A-CURRENCY")),
    ],
)
def test_a_restock_that_cannot_be_applied_is_refused(
    quantity: int, price: Money, problem: str
) -> None:
    # The message is the dead letter's reason: what the operator reads.
    with pytest.raises(InvalidRestock) as refused:
        Stock().handle(Restock("r1", "p1", quantity, price))
    assert str(refused.value) == f"restock r1 of p1: {problem}"


@pytest.mark.parametrize(
    ("product", "restock_id", "problem"),
    [("", "r1", "product id is empty"), ("p1", "", "restock id is empty")],
)
def test_a_restock_with_a_bad_id_is_refused(product: str, restock_id: str, problem: str) -> None:
    with pytest.raises(InvalidRestock) as refused:
        logic.restock(None, None, Restock(restock_id, product, 1, eur("1.00")), 0)
    assert str(refused.value) == f"restock {restock_id} of {product}: {problem}"


def test_a_restock_in_another_currency_than_the_products_is_refused() -> None:
    # Switching a product's currency would make later orders mixing it with the others
    # "unavailable" (a total cannot mix currencies): the currency is fixed once it exists.
    stock = stocked()
    before = dict(stock.rows)
    with pytest.raises(InvalidRestock) as refused:
        stock.handle(Restock("r-usd", "p1", 5, Money(Decimal("3.00"), "USD")))
    assert str(refused.value) == (
        "restock r-usd of p1: price in USD, the product is priced in EUR"
        " (a product's currency cannot change)"
    )
    assert stock.rows == before  # no stock, no price, no mark that it was applied


def test_invariants_name_what_is_wrong() -> None:
    row = StockRow("p1", 3, 2, 1, 7, eur("1.00"))
    assert stock_invariant_violations(row) == [
        "available 3 + reserved 2 + sold 1 != restocked 7 + returned 0"
    ]
    holds = [StockHold("s1", "p1", 1, HELD, 0, -1), StockHold("s2", "p1", 1, SOLD, 1, 2)]
    assert stock_invariant_violations(StockRow("p1", 3, 2, 1, 6, eur("1.00")), holds) == [
        "reserved 2 != quantity held by sagas 1"
    ]


def test_invariants_count_returned_units() -> None:
    # restocked 10; s1 bought 3, s2 bought 2 and returned them; s3 holds 1
    holds = [
        StockHold("s1", "p1", 3, SOLD, 0, 1),
        StockHold("s2", "p1", 2, RETURNED, 2, 3, return_offset=4),
        StockHold("s3", "p1", 1, HELD, 5, -1),
    ]
    sound = StockRow("p1", 6, 1, 5, 10, eur("1.00"), returned=2)
    assert stock_invariant_violations(sound, holds) == []
    not_counted = StockRow("p1", 6, 1, 5, 10, eur("1.00"), returned=0)  # back, not counted
    assert stock_invariant_violations(not_counted, holds) == [
        "available 6 + reserved 1 + sold 5 != restocked 10 + returned 0",
        "returned 0 != quantity returned by sagas 2",
    ]
    unsold = StockRow("p1", 6, 1, 3, 10, eur("1.00"), returned=0)  # the sale taken back
    assert stock_invariant_violations(unsold, holds) == [
        "sold 3 != quantity sold to sagas 5",
        "returned 0 != quantity returned by sagas 2",
    ]
    assert stock_invariant_violations(StockRow("p1", 12, 0, 1, 10, eur("1.00"), returned=3)) == [
        "returned 3 > sold 1"
    ]
    assert stock_invariant_violations(StockRow("p1", 0, 0, 0, 1, eur("1.00"), returned=-1)) == [
        "returned is negative: -1"
    ]


def test_invariants_name_every_broken_counter_and_hold() -> None:
    row = StockRow("p1", -1, -2, -3, -6, eur("1.00"))
    holds = [StockHold("s1", "p1", -2, HELD, 0, -1), StockHold("s2", "p1", 1, "LOST", 1, -1)]
    assert stock_invariant_violations(row, holds) == [
        "available is negative: -1",
        "reserved is negative: -2",
        "sold is negative: -3",
        "returned 0 > sold -3",
        "sold -3 != quantity sold to sagas 0",
        "saga s1 holds -2",
        "saga s2: unknown hold status LOST",
    ]


def test_a_hold_of_nothing_is_sound() -> None:
    # What a release that came before the reserve leaves (and a refusal of zero units).
    row = StockRow("p1", 5, 0, 0, 5, eur("1.00"))
    holds = [StockHold("s1", "p1", 0, RELEASED, -1, 3), StockHold("s2", "p1", 0, REFUSED, 4, -1)]
    assert stock_invariant_violations(row, holds) == []
