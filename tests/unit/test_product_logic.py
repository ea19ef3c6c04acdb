"""Product Service logic: reservations (per saga) and stock (per product).

Unit tests per function, the documented races, and a property test that runs whole
sagas through both tables with messages delivered in random order and duplicated.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from participants.product import logic
from participants.product.logic import (
    COLLECTING,
    RELEASED,
    RESERVED,
    SETTLED_REFUSED,
    SETTLED_RELEASED,
    SETTLED_SOLD,
    SOLD,
    UNAVAILABLE,
    InvalidRestock,
    collect_result,
    release_item,
    release_reservation,
    requested_quantities,
    reserve_item,
    restock,
    sell_item,
    sell_reservation,
    start_reservation,
    stock_invariant_violations,
)
from schemas.messages import (
    ItemResult,
    MissingItem,
    Money,
    OrderItem,
    Outcome,
    ProductsReleased,
    ProductsReserved,
    ProductsUnavailable,
    ReleaseItem,
    ReleaseProducts,
    Reservation,
    ReserveItem,
    ReserveProducts,
    Restock,
    SellItem,
    StockRow,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(seconds=3)
T2 = T0 + timedelta(seconds=9)
SAGA = "saga-1"
RESERVE_ID = f"{SAGA}:verify_products"
RELEASE_ID = f"{SAGA}:release_products"


def eur(amount: str) -> Money:
    return Money(Decimal(amount), "EUR")


def reserve_cmd(items: list[OrderItem], attempt: int = 1, saga: str = SAGA) -> ReserveProducts:
    return ReserveProducts(saga, f"{saga}:verify_products", attempt, T0, saga, items)


def release_cmd(attempt: int = 1, saga: str = SAGA) -> ReleaseProducts:
    return ReleaseProducts(saga, f"{saga}:release_products", attempt, T0, saga)


def result(
    product: str, requested: int, reserved: bool = True, available: int = 5, price: str = "2.50"
) -> ItemResult:
    return ItemResult(SAGA, product, requested, reserved, available, eur(price))


TWO_PRODUCTS = [OrderItem("p1", 2), OrderItem("p2", 1), OrderItem("p1", 1)]


def collecting() -> Reservation:
    """A reservation for p1 x3 (two lines) and p2 x1, no result yet."""
    return start_reservation(None, reserve_cmd(TWO_PRODUCTS), T0)[0]


def feed(res: Reservation, *results: ItemResult) -> tuple[Reservation, list[object], object]:
    """Collect `results` in order; all stock messages and the last reply given."""
    messages: list[object] = []
    reply: object = None
    for r in results:
        new, out, answer = collect_result(res, r, T1)
        assert new is not None
        res, reply = new, answer if answer is not None else reply
        messages += out
    return res, messages, reply


def reserved_res() -> Reservation:
    return feed(collecting(), result("p1", 3), result("p2", 1, price="4.00"))[0]


def unavailable_res() -> Reservation:
    return feed(collecting(), result("p1", 3), result("p2", 1, False, 0))[0]


# =====================================================================================
# start_reservation
# =====================================================================================


def test_start_sends_one_reserve_item_per_distinct_product_with_summed_quantity() -> None:
    res, messages, reply = start_reservation(None, reserve_cmd(TWO_PRODUCTS), T0)
    assert messages == [ReserveItem(SAGA, "p1", 3), ReserveItem(SAGA, "p2", 1)]
    assert reply is None
    assert (res.status, res.items, res.results, res.release_requested) == (
        COLLECTING,
        TWO_PRODUCTS,
        [],
        False,
    )
    assert (res.reserve_command_id, res.reserve_attempt, res.updated_at) == (RESERVE_ID, 1, T0)
    assert requested_quantities(TWO_PRODUCTS) == {"p1": 3, "p2": 1}


def test_start_with_no_items_is_unavailable_at_once() -> None:
    res, messages, reply = start_reservation(None, reserve_cmd([]), T0)
    assert res.status == UNAVAILABLE and messages == []
    assert isinstance(reply, ProductsUnavailable)
    assert (reply.outcome, reply.missing, reply.command_id) == (Outcome.FAILURE, [], RESERVE_ID)


def test_start_with_non_positive_quantity_names_the_bad_lines() -> None:
    items = [OrderItem("p1", 2), OrderItem("p2", 0), OrderItem("p3", -1)]
    res, messages, reply = start_reservation(None, reserve_cmd(items), T0)
    assert res.status == UNAVAILABLE and messages == []
    assert isinstance(reply, ProductsUnavailable)
    assert reply.missing == [MissingItem("p2", 0, 0), MissingItem("p3", -1, 0)]


def test_duplicate_start_while_collecting_resends_only_outstanding_items() -> None:
    res, _, _ = feed(collecting(), result("p1", 3))
    again, messages, reply = start_reservation(res, reserve_cmd(TWO_PRODUCTS), T1)
    assert again is res
    assert messages == [ReserveItem(SAGA, "p2", 1)]
    assert reply is None


def test_retried_start_while_collecting_makes_the_reply_echo_the_new_attempt() -> None:
    res, _, _ = start_reservation(collecting(), reserve_cmd(TWO_PRODUCTS, attempt=2), T1)
    assert res.reserve_attempt == 2
    _, _, reply = feed(res, result("p1", 3), result("p2", 1))
    assert isinstance(reply, ProductsReserved) and reply.attempt == 2


def test_duplicate_start_after_reply_gets_the_same_reply() -> None:
    res, _, first = feed(collecting(), result("p1", 3), result("p2", 1, price="4.00"))
    again, messages, second = start_reservation(res, reserve_cmd(TWO_PRODUCTS, attempt=2), T2)
    assert again is not None and again.status == RESERVED and messages == []
    assert second == replace(first, attempt=2, replied_at=T2)  # type: ignore[type-var]


def test_duplicate_start_after_unavailable_replies_again_and_resends_releases() -> None:
    res = unavailable_res()
    again, messages, reply = start_reservation(res, reserve_cmd(TWO_PRODUCTS), T2)
    assert again is res
    assert messages == [ReleaseItem(SAGA, "p1")]
    assert isinstance(reply, ProductsUnavailable)
    assert reply.missing == [MissingItem("p2", 1, 0)]


# =====================================================================================
# collect_result
# =====================================================================================


def test_no_reply_until_every_product_has_a_result() -> None:
    res, messages, reply = collect_result(collecting(), result("p1", 3), T1)
    assert res is not None and res.status == COLLECTING
    assert res.results == [result("p1", 3)] and res.updated_at == T1
    assert (messages, reply) == ([], None)


def test_all_reserved_replies_products_reserved_with_the_total() -> None:
    res, messages, reply = feed(collecting(), result("p2", 1, price="4.00"), result("p1", 3))
    assert res.status == RESERVED and messages == []
    assert reply == ProductsReserved(SAGA, RESERVE_ID, 1, Outcome.SUCCESS, T1, eur("11.50"))


def test_a_refused_item_releases_the_reserved_ones_and_names_the_missing() -> None:
    res, messages, reply = feed(
        collecting(), result("p1", 3), result("p2", 1, reserved=False, available=0)
    )
    assert res.status == UNAVAILABLE
    assert messages == [ReleaseItem(SAGA, "p1")]
    assert reply == ProductsUnavailable(
        SAGA, RESERVE_ID, 1, Outcome.FAILURE, T1, [MissingItem("p2", 1, 0)]
    )


def test_products_priced_in_different_currencies_cannot_be_totalled() -> None:
    usd = ItemResult(SAGA, "p2", 1, True, 4, Money(Decimal("1.00"), "USD"))
    res, messages, reply = feed(collecting(), result("p1", 3), usd)
    assert res.status == UNAVAILABLE
    assert messages == [ReleaseItem(SAGA, "p1"), ReleaseItem(SAGA, "p2")]
    assert isinstance(reply, ProductsUnavailable) and reply.missing == [MissingItem("p2", 1, 4)]


def test_duplicate_result_is_ignored() -> None:
    res, _, _ = feed(collecting(), result("p1", 3))
    again, messages, reply = collect_result(res, result("p1", 3, available=1), T2)
    assert again is res and (messages, reply) == ([], None)


def test_duplicate_result_after_unavailable_resends_the_releases() -> None:
    res = unavailable_res()
    again, messages, reply = collect_result(res, result("p1", 3), T2)
    assert again is res and messages == [ReleaseItem(SAGA, "p1")] and reply is None


def test_result_for_a_product_not_ordered_is_given_back() -> None:
    res = collecting()
    again, messages, reply = collect_result(res, result("p9", 1), T1)
    assert again is res and messages == [ReleaseItem(SAGA, "p9")] and reply is None
    _, refused, _ = collect_result(res, result("p9", 1, reserved=False), T1)
    assert refused == []


def test_result_for_an_unknown_saga_is_given_back() -> None:
    assert collect_result(None, result("p1", 1), T1) == (None, [ReleaseItem(SAGA, "p1")], None)
    assert collect_result(None, result("p1", 1, reserved=False), T1) == (None, [], None)


def test_duplicate_reserved_result_after_sale_stays_held() -> None:
    sold, _ = sell_reservation(reserved_res(), T2)
    assert sold is not None
    again, messages, reply = collect_result(sold, result("p1", 3), T2)
    assert again is sold and (messages, reply) == ([], None)


# =====================================================================================
# release_reservation
# =====================================================================================


def test_release_of_a_reserved_reservation_gives_everything_back() -> None:
    res, messages, reply = release_reservation(reserved_res(), release_cmd(), T2)
    assert (res.status, res.release_command_id, res.release_requested) == (
        RELEASED,
        RELEASE_ID,
        False,
    )
    assert messages == [ReleaseItem(SAGA, "p1"), ReleaseItem(SAGA, "p2")]
    assert reply == ProductsReleased(SAGA, RELEASE_ID, 1, Outcome.SUCCESS, T2)


def test_release_of_an_unavailable_reservation_releases_again_and_replies() -> None:
    res, messages, reply = release_reservation(unavailable_res(), release_cmd(), T2)
    assert res.status == RELEASED and messages == [ReleaseItem(SAGA, "p1")]
    assert reply is not None and reply.outcome is Outcome.SUCCESS


def test_duplicate_release_replies_again_without_change() -> None:
    res, first_messages, _ = release_reservation(reserved_res(), release_cmd(), T2)
    again, messages, reply = release_reservation(res, release_cmd(attempt=2), T2)
    assert again is not None and again.status == RELEASED
    assert again.release_attempt == 2 and replace(again, release_attempt=1) == res
    assert messages == first_messages  # idempotent at stock: re-sent in case they were lost
    assert reply == ProductsReleased(SAGA, RELEASE_ID, 2, Outcome.SUCCESS, T2)
    same, _, _ = release_reservation(again, release_cmd(attempt=2), T2)
    assert same is again


def test_release_during_collection_replies_once_when_the_last_result_comes() -> None:
    res, _, _ = feed(collecting(), result("p1", 3))
    res, messages, no_reply = release_reservation(res, release_cmd(), T1)
    assert (res.status, res.release_requested, no_reply) == (COLLECTING, True, None)
    # what is held goes back now; the outstanding item is asked again so its result comes
    assert messages == [ReserveItem(SAGA, "p2", 1), ReleaseItem(SAGA, "p1")]

    done, messages, reply = collect_result(res, result("p2", 1), T2)
    assert done is not None and done.status == RELEASED
    assert messages == [ReleaseItem(SAGA, "p2")]
    assert reply == ProductsReleased(SAGA, RELEASE_ID, 1, Outcome.SUCCESS, T2)

    late, messages, late_reply = collect_result(done, result("p2", 1), T2)  # the re-sent one
    assert late is done and late_reply is None
    assert messages == [ReleaseItem(SAGA, "p1"), ReleaseItem(SAGA, "p2")]


def test_release_during_collection_then_refused_item_still_replies_released() -> None:
    res, _, _ = release_reservation(collecting(), release_cmd(), T1)
    res, _, _ = feed(res, result("p1", 3, reserved=False))
    _, messages, reply = collect_result(res, result("p2", 1), T2)
    assert messages == [ReleaseItem(SAGA, "p2")]
    assert isinstance(reply, ProductsReleased)


def test_reserve_overtaken_by_release_never_gets_its_own_reply() -> None:
    res, _, _ = release_reservation(collecting(), release_cmd(), T1)
    res, _, _ = feed(res, result("p1", 3), result("p2", 1))
    assert res.status == RELEASED
    again, _, reply = start_reservation(res, reserve_cmd(TWO_PRODUCTS), T2)
    assert again is res and reply is None


def test_release_of_unknown_saga_replies_and_blocks_a_late_reserve() -> None:
    res, messages, reply = release_reservation(None, release_cmd(), T1)
    assert (res.status, res.reserve_command_id, res.items, messages) == (RELEASED, None, [], [])
    assert reply == ProductsReleased(SAGA, RELEASE_ID, 1, Outcome.SUCCESS, T1)
    late = start_reservation(res, reserve_cmd(TWO_PRODUCTS), T2)
    assert late == (res, [], None)


def test_release_of_a_sold_reservation_is_refused() -> None:
    sold, _ = sell_reservation(reserved_res(), T2)
    assert sold is not None
    res, messages, reply = release_reservation(sold, release_cmd(), T2)
    assert res is sold and messages == []
    assert reply is not None and reply.outcome is Outcome.FAILURE


# =====================================================================================
# sell_reservation
# =====================================================================================


def test_sell_turns_a_reserved_reservation_into_sold() -> None:
    res, messages = sell_reservation(reserved_res(), T2)
    assert res is not None and (res.status, res.updated_at) == (SOLD, T2)
    assert messages == [SellItem(SAGA, "p1"), SellItem(SAGA, "p2")]


def test_sell_is_idempotent() -> None:
    sold, first = sell_reservation(reserved_res(), T2)
    again, messages = sell_reservation(sold, T2)
    assert again is sold and messages == first  # no-ops at stock; re-sent in case lost


@pytest.mark.parametrize("status", [COLLECTING, UNAVAILABLE, RELEASED])
def test_nothing_to_sell_unless_reserved(status: str) -> None:
    res = replace(reserved_res(), status=status)
    assert sell_reservation(res, T2) == (res, [])
    assert sell_reservation(None, T2) == (None, [])


# =====================================================================================
# stock
# =====================================================================================


def stocked(quantity: int = 5, price: str = "2.50", product: str = "p1") -> StockRow:
    return restock(None, Restock(f"r-{product}", product, quantity, eur(price)))


def test_restock_creates_adds_and_sets_the_price() -> None:
    row = stocked(5)
    assert (row.available, row.restocked, row.unit_price, row.restock_ids) == (
        5,
        5,
        eur("2.50"),
        ["r-p1"],
    )
    more = restock(row, Restock("r2", "p1", 3, eur("3.00")))
    assert (more.available, more.restocked, more.unit_price) == (8, 8, eur("3.00"))
    assert restock(more, Restock("r2", "p1", 3, eur("3.00"))) is more


def test_restock_rejects_negative_quantity_or_price() -> None:
    with pytest.raises(InvalidRestock):
        restock(None, Restock("r", "p1", -1, eur("1.00")))
    with pytest.raises(InvalidRestock):
        restock(stocked(), Restock("r", "p1", 1, eur("-1.00")))


def test_restock_ids_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logic, "MAX_RESTOCK_IDS", 2)
    row = stocked(1)
    for n in range(3):
        row = restock(row, Restock(f"x{n}", "p1", 1, eur("1.00")))
    assert row.restock_ids == ["x1", "x2"] and row.restocked == 4


def test_reserve_item_holds_the_quantity() -> None:
    row, res = reserve_item(stocked(5), ReserveItem(SAGA, "p1", 3))
    assert row is not None
    assert (row.available, row.reserved, row.reservations) == (2, 3, {SAGA: 3})
    assert res == ItemResult(SAGA, "p1", 3, True, 2, eur("2.50"))


def test_reserve_item_refuses_more_than_available_and_remembers_it() -> None:
    start = stocked(2)
    row, res = reserve_item(start, ReserveItem(SAGA, "p1", 3))
    assert row is not None
    assert (row.available, row.reserved, row.settled) == (2, 0, {SAGA: SETTLED_REFUSED})
    assert res == ItemResult(SAGA, "p1", 3, False, 2, eur("2.50"))
    # a duplicate after a restock is still refused: the saga already got its answer
    restocked = restock(row, Restock("r2", "p1", 10, eur("2.50")))
    again, res2 = reserve_item(restocked, ReserveItem(SAGA, "p1", 3))
    assert again is restocked and not res2.reserved


def test_reserve_item_refuses_a_non_positive_quantity() -> None:
    row, res = reserve_item(stocked(5), ReserveItem(SAGA, "p1", 0))
    assert row is not None and row.available == 5 and not res.reserved


def test_duplicate_reserve_item_gets_the_same_positive_result() -> None:
    row, first = reserve_item(stocked(5), ReserveItem(SAGA, "p1", 3))
    again, second = reserve_item(row, ReserveItem(SAGA, "p1", 3))
    assert again is row and second == first


def test_reserve_item_of_unknown_product_is_refused_with_zero_price() -> None:
    row, res = reserve_item(None, ReserveItem(SAGA, "p9", 1))
    assert row is None
    assert res == ItemResult(SAGA, "p9", 1, False, 0, eur("0.00"))


def test_release_item_returns_the_held_quantity_once() -> None:
    held, _ = reserve_item(stocked(5), ReserveItem(SAGA, "p1", 3))
    row = release_item(held, ReleaseItem(SAGA, "p1"))
    assert row is not None
    assert (row.available, row.reserved, row.reservations) == (5, 0, {})
    assert row.settled == {SAGA: SETTLED_RELEASED}
    assert release_item(row, ReleaseItem(SAGA, "p1")) is row


def test_duplicate_reserve_item_after_release_is_refused() -> None:
    held, _ = reserve_item(stocked(5), ReserveItem(SAGA, "p1", 3))
    released = release_item(held, ReleaseItem(SAGA, "p1"))
    row, res = reserve_item(released, ReserveItem(SAGA, "p1", 3))
    assert row is released and not res.reserved and res.available == 5


def test_release_before_reserve_makes_the_reserve_refused() -> None:
    row = release_item(stocked(5), ReleaseItem(SAGA, "p1"))
    assert row is not None and row.settled == {SAGA: SETTLED_RELEASED} and row.available == 5
    after, res = reserve_item(row, ReserveItem(SAGA, "p1", 1))
    assert after is row and not res.reserved


def test_sell_item_moves_held_to_sold_once() -> None:
    held, _ = reserve_item(stocked(5), ReserveItem(SAGA, "p1", 3))
    row = sell_item(held, SellItem(SAGA, "p1"))
    assert row is not None
    assert (row.available, row.reserved, row.sold, row.reservations) == (2, 0, 3, {})
    assert row.settled == {SAGA: SETTLED_SOLD}
    assert sell_item(row, SellItem(SAGA, "p1")) is row
    assert release_item(row, ReleaseItem(SAGA, "p1")) is row  # a sale is final


def test_sell_or_release_of_nothing_changes_nothing() -> None:
    row = stocked(5)
    assert sell_item(row, SellItem(SAGA, "p1")) is row
    assert sell_item(None, SellItem(SAGA, "p1")) is None
    assert release_item(None, ReleaseItem(SAGA, "p1")) is None


def test_settled_sagas_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logic, "MAX_SETTLED", 2)
    row: StockRow | None = stocked(5)
    for saga in ("a", "b", "c"):
        row = release_item(row, ReleaseItem(saga, "p1"))
    assert row is not None and list(row.settled) == ["b", "c"]


def replay_crash_window(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[tuple[int, ReserveItem | SellItem | ReleaseItem]], StockRow | None]:
    """SAGA reserves and is sold, then more sagas settle than `settled` remembers.

    Returns the messages with their offsets and the row after all of them: what a
    worker killed before its commit restores from the changelog, then reads again.
    """
    monkeypatch.setattr(logic, "MAX_SETTLED", 2)
    messages: list[tuple[int, ReserveItem | SellItem | ReleaseItem]] = [
        (10, ReserveItem(SAGA, "p1", 3)),
        (11, SellItem(SAGA, "p1")),
        *((12 + n, ReleaseItem(f"other-{n}", "p1")) for n in range(3)),
    ]
    row: StockRow | None = stocked(10)
    for offset, message in messages:
        row, _ = logic.apply_stock_message(row, message, offset)
    return messages, row


def test_replay_after_a_crash_changes_nothing_even_once_settled_forgot_the_saga(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    messages, row = replay_crash_window(monkeypatch)
    assert row is not None and SAGA not in row.settled and row.applied_offset == 14
    assert (row.available, row.sold) == (7, 3)
    replayed: StockRow | None = row
    results = []
    for offset, message in messages:
        replayed, result = logic.apply_stock_message(replayed, message, offset)
        results.append(result)
    assert replayed is row  # sold once, not twice
    assert results[0] == ItemResult(SAGA, "p1", 3, False, 7, eur("2.50"))
    assert results[1:] == [None] * 4


def test_without_the_offset_a_forgotten_saga_would_be_sold_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why applied_offset exists: `settled` alone cannot tell the replay."""
    _, row = replay_crash_window(monkeypatch)
    assert row is not None
    again, _ = reserve_item(row, ReserveItem(SAGA, "p1", 3))
    again = sell_item(again, SellItem(SAGA, "p1"))
    assert again is not None and again.sold == 6


def test_a_replayed_reserve_of_a_saga_still_holding_is_answered_reserved() -> None:
    row, first = logic.apply_stock_message(stocked(5), ReserveItem(SAGA, "p1", 3), 7)
    assert row is not None and row.applied_offset == 7
    again, second = logic.apply_stock_message(row, ReserveItem(SAGA, "p1", 3), 7)
    assert again is row and second == first


def test_new_messages_apply_and_unchanged_rows_keep_their_offset() -> None:
    row, _ = logic.apply_stock_message(stocked(5), Restock("r2", "p1", 1, eur("2.50")), 3)
    assert row is not None and (row.available, row.applied_offset) == (6, 3)
    same, _ = logic.apply_stock_message(row, Restock("r2", "p1", 1, eur("2.50")), 4)
    assert same is row  # a duplicate restock id: nothing written
    released, _ = logic.apply_stock_message(row, ReleaseItem(SAGA, "p1"), 5)
    assert released is not None and released.applied_offset == 5
    missing, result = logic.apply_stock_message(None, ReserveItem(SAGA, "p9", 1), 6)
    assert missing is None and result is not None and not result.reserved


def test_stock_invariant_violations() -> None:
    good, _ = reserve_item(stocked(5), ReserveItem(SAGA, "p1", 3))
    assert good is not None and stock_invariant_violations(good) == []
    assert stock_invariant_violations(replace(good, available=-1, restocked=2)) == [
        "available is negative: -1"
    ]
    assert "restocked" in stock_invariant_violations(replace(good, sold=1))[0]
    assert stock_invariant_violations(replace(good, reservations={SAGA: 2, "x": 1})) == []
    assert "sum of reservations" in stock_invariant_violations(replace(good, reservations={}))[0]
    assert "settled" in stock_invariant_violations(replace(good, settled={SAGA: "SOLD"}))[0]


# =====================================================================================
# property: whole sagas, messages in any order, any message duplicated
# =====================================================================================

PRODUCTS = ["p1", "p2", "p3"]


@dataclass(frozen=True)
class Approved:
    """Stands for the terminal ORDER_APPROVED SagaEvent."""

    saga_id: str


@dataclass
class ProductWorld:
    stock: dict[str, StockRow]
    reservations: dict[str, Reservation] = field(default_factory=dict)
    in_flight: list[object] = field(default_factory=list)
    reserve_replies: dict[str, list[object]] = field(default_factory=lambda: defaultdict(list))
    released_replies: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def deliver(self, message: object) -> None:
        if isinstance(message, (ReserveItem, ReleaseItem, SellItem, Restock)):
            self._to_stock(message)
        else:
            self._to_reservations(message)

    def _to_stock(self, message: object) -> None:
        key = message.product_id  # type: ignore[attr-defined]
        row = self.stock.get(key)
        if isinstance(message, ReserveItem):
            row, item_result = reserve_item(row, message)
            self.in_flight.append(item_result)
        elif isinstance(message, ReleaseItem):
            row = release_item(row, message)
        elif isinstance(message, SellItem):
            row = sell_item(row, message)
        elif isinstance(message, Restock):
            row = restock(row, message)
        if row is not None:
            self.stock[key] = row

    def _to_reservations(self, message: object) -> None:
        key = message.saga_id  # type: ignore[attr-defined]
        res = self.reservations.get(key)
        reply: object = None
        out: list[logic.StockMessage] | list[SellItem] = []
        if isinstance(message, ReserveProducts):
            res, out, reply = start_reservation(res, message, T1)
        elif isinstance(message, ReleaseProducts):
            res, out, reply = release_reservation(res, message, T1)
        elif isinstance(message, ItemResult):
            res, out, reply = collect_result(res, message, T1)
        elif isinstance(message, Approved):
            res, out = sell_reservation(res, T1)
        if res is not None:
            self.reservations[key] = res
        self.in_flight += out
        if isinstance(reply, ProductsReleased):
            self.released_replies[key] += isinstance(message, ItemResult)
        elif reply is not None:
            self.reserve_replies[key].append(replace(reply, attempt=1))  # type: ignore[type-var]

    def check_stock(self, sagas: dict[str, list[OrderItem]]) -> None:
        for row in self.stock.values():
            assert stock_invariant_violations(row) == []
            for saga, held in row.reservations.items():  # never more than ordered
                assert held == requested_quantities(sagas[saga]).get(row.product_id)


ORDERS = st.lists(
    st.builds(OrderItem, st.sampled_from(PRODUCTS), st.integers(0, 4)), min_size=0, max_size=3
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    sagas=st.lists(ORDERS, min_size=1, max_size=4),
    initial=st.lists(st.integers(0, 6), min_size=3, max_size=3),
    data=st.data(),
)
def test_random_interleavings_keep_stock_sound(
    sagas: list[list[OrderItem]], initial: list[int], data: st.DataObject
) -> None:
    orders = {f"s{n}": items for n, items in enumerate(sagas)}
    world = ProductWorld(
        stock={
            p: restock(None, Restock(f"init-{p}", p, q, eur("1.25")))
            for p, q in zip(PRODUCTS, initial, strict=True)
        }
    )
    for saga, items in orders.items():
        world.in_flight.append(reserve_cmd(items, saga=saga))
        ending = data.draw(st.sampled_from(["release", "approve", "both", "none"]))
        if ending in ("release", "both"):
            world.in_flight.append(release_cmd(saga=saga))
        if ending in ("approve", "both"):
            world.in_flight.append(Approved(saga))
    world.in_flight.append(Restock("more", "p1", 2, eur("1.25")))
    world.in_flight.append(Restock("more", "p1", 2, eur("1.25")))  # a duplicate restock

    for _ in range(data.draw(st.integers(0, 80))):  # random order, random duplicates
        if not world.in_flight:
            break
        index = data.draw(st.integers(0, len(world.in_flight) - 1))
        message = world.in_flight[index]
        if not data.draw(st.booleans()):  # half the time it is delivered again later
            world.in_flight.pop(index)
        world.deliver(message)
        world.check_stock(orders)
    while world.in_flight:  # then everything still in flight arrives, in order
        world.deliver(world.in_flight.pop(0))
        world.check_stock(orders)

    sold_per_product: dict[str, int] = defaultdict(int)
    for saga, items in orders.items():
        res = world.reservations[saga]
        assert res.status != COLLECTING  # every collection completes
        held = {p: row.reservations.get(saga, 0) for p, row in world.stock.items()}
        if res.status == RESERVED:
            assert {p: q for p, q in held.items() if q} == requested_quantities(items)
        else:  # unavailable, released or sold: the saga holds nothing
            assert not any(held.values()), (res.status, held)
        if res.status == SOLD:
            for product, quantity in requested_quantities(items).items():
                sold_per_product[product] += quantity
        # every answer to ReserveProducts (first or duplicate) is the same; at most one
        # ProductsReleased comes from collecting
        assert len({repr(r) for r in world.reserve_replies[saga]}) <= 1
        assert world.released_replies[saga] <= 1
    for product, row in world.stock.items():
        assert row.sold == sold_per_product[product]
