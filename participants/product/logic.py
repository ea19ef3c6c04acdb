"""Product Service business logic: pure functions over its rows. No I/O, no clock.

One table, `stock` (key product id), read from one topic, product.commands, keyed by
product id:
- one `StockRow` per product: its counters only, ~100 bytes whatever its history;
- one `StockHold` per (product, saga): what the saga holds (HELD), or how that ended
  (RELEASED, SOLD, REFUSED; RETURNED: sold, then given back by a cancelled order), so a
  late duplicate changes nothing;
- one `CommandApplied` per Restock, so it is applied once.

The saga's commands travel (a routing slip). ReserveProducts goes to the order's first
product (repeated lines merged), which reserves what it can and forwards the command to
the next product with its result added; the last one replies once: ProductsReserved with
the total, or ProductsUnavailable naming every missing product, after giving back what
was reserved (one ReleaseItem each). ReleaseProducts and SellProducts travel the same way;
the last ReleaseProducts hop replies ProductsReleased, SellProducts gets no reply. A
CancelOrderSaga's ReturnProducts travels the same way too: each hop gives back what the
order's CreateOrderSaga bought of its product (its hold: key product, "hold", order id),
and the last one replies ProductsReturned. So a
two-product saga costs the service four records (reserve and sell, two hops each) and no
per-saga state but the holds: no table of reservations to fan results back into.

A hop's work is bounded by the order's size (at most MAX_ORDER_LINES products, carried
along); the stock side of each hop is one product row and one hold.

Exact replays. A crash replays the records after the last committed offset onto a table
restored from the changelog, which may already hold some of their effects. A hop writes
the saga's hold first and the product's row last, recording the record's offset there;
the changelog keeps each key's newest value, in the order of their last writes
(messaging.tables). So:
- offset at or below the product's applied offset: everything was applied, and the
  outputs sent (they are acknowledged before rows are written back): nothing to do;
- else the product row is as it was before the record (once the records before it are
  replayed), but the hold may be further on: written back after this record's move and
  maybe a later one. A hold records the offset of each of its moves (reserved or
  refused, then released or sold, then returned), so the replay finds its own and
  applies the decision recorded there rather than deciding again from a state that is
  gone. (Found by tests/unit/test_product_replays.py.)

Duplicates (a re-sent command, a command travelling again after a crash) are different
records: they are answered from the holds, and change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

from schemas.limits import (
    MAX_STOCK,
    MAX_UNIT_PRICE,
    amount_problem,
    id_problem,
    items_problems,
    merged_items,
    row_key,
)
from schemas.messages import (
    CommandApplied,
    ForgetProducts,
    ItemResult,
    MissingItem,
    Money,
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

# StockHold.status
HELD = "HELD"
RELEASED = "RELEASED"
SOLD = "SOLD"
REFUSED = "REFUSED"
RETURNED = "RETURNED"  # sold, then given back by a cancelled order
HOLD_STATUSES = (HELD, RELEASED, SOLD, REFUSED, RETURNED)

DEFAULT_CURRENCY = "EUR"  # price of a product that does not exist

Travelling: TypeAlias = (
    ReserveProducts | ReleaseProducts | SellProducts | ReturnProducts | ForgetProducts
)
StockMessage: TypeAlias = Travelling | ReleaseItem
Reply: TypeAlias = ProductsReserved | ProductsUnavailable | ProductsReleased | ProductsReturned
Row: TypeAlias = StockRow | StockHold | CommandApplied
Move = str  # what a record does to a saga's hold: RESERVE, RELEASE, SELL or RETURN
RESERVE, RELEASE, SELL, RETURN = "reserve", "release", "sell", "return"


class InvalidRestock(ValueError):
    """A Restock that cannot be applied; the agent dead-letters it (it has no reply)."""


@dataclass(frozen=True)
class Effect:
    """What handling one record does: rows to write, in this order (the product's row
    last; None: delete it), records for product.commands (each keyed by its product) and
    a reply."""

    rows: tuple[tuple[bytes, Row | None], ...] = ()
    forward: tuple[StockMessage, ...] = ()
    reply: Reply | None = None


NOTHING = Effect()


def hold_key(product_id: str, saga_id: str) -> bytes:
    return row_key(product_id, "hold", saga_id)


def restock_key(product_id: str, restock_id: str) -> bytes:
    return row_key(product_id, "restock", restock_id)


def product_of(message: StockMessage | Restock) -> str:
    """The product a record of product.commands is for: its key."""
    if isinstance(message, (ReleaseItem, Restock)):
        return message.product_id
    items = merged_items(message.items)
    return items[message.hop].product_id if 0 <= message.hop < len(items) else ""


def owned_key(record: StockMessage | Restock) -> bytes:
    """Key of the row a record reads besides its product's: the saga's hold of it (for a
    ReturnProducts, the hold of the order's CreateOrderSaga, whose id is the order's), or,
    for a Restock, the mark that it was applied."""
    product = product_of(record)
    if isinstance(record, Restock):
        return restock_key(product, record.restock_id)
    if isinstance(record, ReturnProducts):
        return hold_key(product, record.order_id)
    return hold_key(product, record.saga_id)


def handle(
    record: StockMessage | Restock,
    stock: StockRow | None,
    owned: StockHold | CommandApplied | None,
    now: datetime,
    offset: int,
) -> Effect:
    """One record of product.commands read at `offset`, given the product's row and the
    row at `owned_key(record)`."""
    if isinstance(record, Restock):
        assert owned is None or isinstance(owned, CommandApplied)
        return restock(stock, owned, record, offset)
    assert owned is None or isinstance(owned, StockHold)
    if isinstance(record, ReserveProducts):
        return reserve_products(stock, owned, record, now, offset)
    if isinstance(record, ReleaseProducts):
        return release_products(stock, owned, record, now, offset)
    if isinstance(record, SellProducts):
        return sell_products(stock, owned, record, offset)
    if isinstance(record, ReturnProducts):
        return return_products(stock, owned, record, now, offset)
    if isinstance(record, ForgetProducts):
        return forget_products(stock, owned, record, offset)
    return release_item(stock, owned, record, offset)


# =====================================================================================
# the travelling commands
# =====================================================================================


def reserve_products(
    stock: StockRow | None,
    hold: StockHold | None,
    command: ReserveProducts,
    now: datetime,
    offset: int,
) -> Effect:
    """One hop of ReserveProducts: reserve this product if that much is available, else
    refuse; forward the command with the result, or, at the last product, reply.

    An order that breaks the input limits is refused at its first hop, nothing reserved.
    A product that does not exist is refused; its refused hold keeps it so.
    """
    if command.hop == 0 and items_problems(command.items):
        return Effect((), (), _unavailable(command, _bad_lines(command), now))
    items = merged_items(command.items)
    item = items[command.hop]
    move = _move(stock, hold, item.product_id, command.saga_id, RESERVE, item.quantity, offset)
    if move is None:
        return NOTHING  # a replay: what it did is done, its outputs were sent
    after, rows, moved = move
    # This hop reserved it (now, or before a crash), or the saga still holds it from an
    # earlier ReserveProducts (a duplicate).
    reserved = after.status != REFUSED if moved else after.status == HELD
    product = rows[-1][1] if rows else stock
    available, price = (0, _NO_PRICE) if not isinstance(product, StockRow) else (
        product.available, product.unit_price
    )  # fmt: skip
    result = ItemResult(command.saga_id, item.product_id, item.quantity, reserved, available, price)
    results = [*command.results, result]
    if command.hop + 1 < len(items):
        return Effect(rows, (replace(command, hop=command.hop + 1, results=results),))
    return Effect(rows, *_reserve_outcome(command, results, now))


def release_products(
    stock: StockRow | None,
    hold: StockHold | None,
    command: ReleaseProducts,
    now: datetime,
    offset: int,
) -> Effect:
    """One hop of ReleaseProducts (compensation): give back what the saga holds of this
    product; forward, or, at the last product, reply ProductsReleased. A release that
    comes before the reserve is remembered, so the reserve is refused when it comes."""
    items = merged_items(command.items)
    rows: tuple[tuple[bytes, Row], ...] = ()
    if items:
        product = items[command.hop].product_id
        move = _move(stock, hold, product, command.saga_id, RELEASE, 0, offset)
        if move is None:
            return NOTHING  # a replay
        rows = move[1]
    if command.hop + 1 < len(items):
        return Effect(rows, (replace(command, hop=command.hop + 1),))
    return Effect(rows, (), _released(command, now))


def sell_products(
    stock: StockRow | None, hold: StockHold | None, command: SellProducts, offset: int
) -> Effect:
    """One hop of SellProducts (the saga was approved): what the saga holds of this
    product becomes sold; forward to the next product. No reply."""
    items = merged_items(command.items)
    if not items:
        return NOTHING
    move = _move(stock, hold, items[command.hop].product_id, command.saga_id, SELL, 0, offset)
    if move is None:
        return NOTHING  # a replay
    if command.hop + 1 < len(items):
        return Effect(move[1], (replace(command, hop=command.hop + 1),))
    return Effect(move[1])


def return_products(
    stock: StockRow | None,
    hold: StockHold | None,
    command: ReturnProducts,
    now: datetime,
    offset: int,
) -> Effect:
    """One hop of ReturnProducts (a CancelOrderSaga; the order was approved): what the
    order's CreateOrderSaga bought of this product goes back to available (its hold SOLD
    -> RETURNED; the product's `returned` counts it, `sold` still does too); forward, or,
    at the last product, reply ProductsReturned.

    A HELD hold is an approved order whose SellProducts has not come yet (the cancel
    overtook it: the Order Service approved the order before the orchestrator sent the
    sale): it is sold and returned at once (RETURNED, settled by this record), so the
    late SellProducts finds it settled and sells nothing. A hold that is none of those
    (none, RELEASED, REFUSED, RETURNED already) changes nothing, and the command still
    travels on, so that the saga ends."""
    items = merged_items(command.items)
    rows: tuple[tuple[bytes, Row], ...] = ()
    if items:
        product = items[command.hop].product_id
        move = _move(stock, hold, product, command.order_id, RETURN, 0, offset)
        if move is None:
            return NOTHING  # a replay
        rows = move[1]
    if command.hop + 1 < len(items):
        return Effect(rows, (replace(command, hop=command.hop + 1),))
    return Effect(rows, (), _returned(command, now))


def forget_products(
    stock: StockRow | None, hold: StockHold | None, command: ForgetProducts, offset: int
) -> Effect:
    """One hop of ForgetProducts (the saga expired): delete the saga's hold of this
    product, keep the product's counters (recording the offset, so a replay changes and
    forwards nothing); forward to the next product. No reply.

    A HELD hold is kept: units still counted as reserved belong to a saga that can move
    them, and an ended saga has none (its sale or release came on this partition before
    this command, which the orchestrator sent after them). Nothing of the saga comes
    after: it sends no more commands, and a ReturnProducts of a cancel of its order can
    no longer begin (the Order Service forgot the order first)."""
    items = merged_items(command.items)
    if not items or not 0 <= command.hop < len(items):
        return NOTHING
    if stock is not None and offset <= stock.applied_offset:
        return NOTHING  # a replay
    rows: tuple[tuple[bytes, Row | None], ...] = ()
    if hold is not None and hold.status != HELD:
        rows = ((hold_key(items[command.hop].product_id, command.saga_id), None),)
        if stock is not None:
            rows += ((_key(stock), replace(stock, applied_offset=offset)),)
    if command.hop + 1 < len(items):
        return Effect(rows, (replace(command, hop=command.hop + 1),))
    return Effect(rows)


def release_item(
    stock: StockRow | None, hold: StockHold | None, message: ReleaseItem, offset: int
) -> Effect:
    """Give back what the saga holds of this product (sent by the last hop of a
    reservation that could not be completed)."""
    move = _move(stock, hold, message.product_id, message.saga_id, RELEASE, 0, offset)
    return NOTHING if move is None else Effect(move[1])


# ---- outcomes ----


def _reserve_outcome(
    command: ReserveProducts, results: list[ItemResult], now: datetime
) -> tuple[tuple[StockMessage, ...], Reply]:
    """The last hop: reply ProductsReserved with the total, or give back what was
    reserved and reply ProductsUnavailable naming what is missing."""
    currency = _order_currency(results)
    missing = [
        MissingItem(r.product_id, requested=r.requested, available=r.available)
        for r in results
        if not r.reserved or r.unit_price.currency != currency
    ]
    if missing:
        releases = tuple(ReleaseItem(r.saga_id, r.product_id) for r in results if r.reserved)
        return releases, _unavailable(command, missing, now)
    amount = sum((r.unit_price.amount * r.requested for r in results), Decimal("0"))
    total = Money(amount.quantize(Decimal("0.01")), currency)
    reply = ProductsReserved(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
        total=total,
    )
    return (), reply


def _order_currency(results: list[ItemResult]) -> str:
    """The currency of the order: that of the first reserved product."""
    return next((r.unit_price.currency for r in results if r.reserved), DEFAULT_CURRENCY)


def _unavailable(
    command: ReserveProducts, missing: list[MissingItem], now: datetime
) -> ProductsUnavailable:
    return ProductsUnavailable(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.FAILURE,
        replied_at=now,
        missing=missing,
    )


def _released(command: ReleaseProducts, now: datetime) -> ProductsReleased:
    return ProductsReleased(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
    )


def _returned(command: ReturnProducts, now: datetime) -> ProductsReturned:
    return ProductsReturned(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
    )


def _bad_lines(command: ReserveProducts) -> list[MissingItem]:
    """The lines of an order that breaks the input limits, as 'missing' (at most a few)."""
    bad = [i for i in command.items if id_problem("product id", i.product_id) or i.quantity < 1]
    return [MissingItem(i.product_id, requested=i.quantity, available=0) for i in bad[:10]]


# =====================================================================================
# a saga's hold of a product
# =====================================================================================

_NO_PRICE = Money(Decimal("0.00"), DEFAULT_CURRENCY)
_ABSENT = StockHold("", "", 0, REFUSED, -1, -1)  # no hold, for a product that does not exist
Moved = tuple[StockHold, tuple[tuple[bytes, Row], ...], bool]


def _move(
    stock: StockRow | None,
    hold: StockHold | None,
    product: str,
    saga_id: str,
    move: Move,
    quantity: int,
    offset: int,
) -> Moved | None:
    """Apply `move` of the saga's hold of `product` at `offset`.

    Returns (the hold after, the rows to write: the hold then the product, whether this
    record moved the hold), or None for a replay of a record whose effect is all applied.
    """
    if stock is None:
        return _move_absent(hold, product, saga_id, move, quantity, offset)
    if offset <= stock.applied_offset:
        return None
    if _recorded(hold, move, offset):  # written back after this move; the product not
        assert hold is not None
        after = hold
    else:
        moved = _next_hold(stock, hold, saga_id, move, quantity, offset)
        if moved is None:  # nothing changes (a duplicate): the hold as it is
            return hold or _ABSENT, (), False
        after = moved
    new_stock = replace(_with_change(stock, move, after), applied_offset=offset)
    return after, ((hold_key(product, saga_id), after), (_key(stock), new_stock)), True


def _move_absent(
    hold: StockHold | None, product: str, saga_id: str, move: Move, quantity: int, offset: int
) -> Moved:
    """A move of a saga's hold of a product that does not exist (yet): a reserve is
    refused, and a release remembered, in a hold of their own, so that a repeated reserve
    of the saga (re-sent on a deadline, or replayed) is refused even if the product was
    restocked since: the saga was told "unavailable" and will never release it."""
    if _recorded(hold, move, offset):  # a replay: the hold was written back
        assert hold is not None
        return hold, (), True
    if hold is not None or move in (SELL, RETURN):
        return hold or _ABSENT, (), False
    if move == RESERVE:
        after = StockHold(saga_id, product, quantity, REFUSED, offset, -1)
    else:
        after = StockHold(saga_id, product, 0, RELEASED, -1, offset)
    return after, ((hold_key(product, saga_id), after),), True


def _recorded(hold: StockHold | None, move: Move, offset: int) -> bool:
    """Did the record at `offset` already move `hold`? A hold records the offsets of its
    moves, so a replay finds its own even if the hold was written back later."""
    if hold is None:
        return False
    if move == RESERVE:
        return hold.reserve_offset == offset
    if move == RETURN:
        return hold.return_offset == offset
    return hold.settle_offset == offset


def _next_hold(
    stock: StockRow, hold: StockHold | None, saga: str, move: Move, quantity: int, offset: int
) -> StockHold | None:
    """The saga's hold after `move`, or None if the move changes nothing."""
    product = stock.product_id
    if move == RESERVE:
        if hold is not None:
            return None  # held already, or settled: a duplicate or a reserve after release
        status = HELD if 1 <= quantity <= stock.available else REFUSED
        return StockHold(saga, product, quantity, status, offset, -1)
    if move == RELEASE:
        if hold is None:  # before any reserve: the later reserve is refused
            return StockHold(saga, product, 0, RELEASED, -1, offset)
        if hold.status != HELD:
            return None
        return replace(hold, status=RELEASED, settle_offset=offset)
    if move == RETURN:
        if hold is None or hold.status not in (HELD, SOLD):
            return None  # nothing was sold to the order, or it was returned already
        if hold.status == HELD:  # the order's sale has not come yet: sold and returned now
            return replace(hold, status=RETURNED, settle_offset=offset, return_offset=offset)
        return replace(hold, status=RETURNED, return_offset=offset)
    if hold is not None and hold.status == HELD:  # SELL
        return replace(hold, status=SOLD, settle_offset=offset)
    return None


def _with_change(stock: StockRow, move: Move, hold: StockHold) -> StockRow:
    """The product's counters after `move` of the saga's hold, as `hold` (the hold after
    that move, or after a later one too) tells it."""
    q = hold.quantity
    if move == RESERVE and hold.status != REFUSED:  # it was HELD then
        return replace(stock, available=stock.available - q, reserved=stock.reserved + q)
    if move == RELEASE and hold.status == RELEASED:
        return replace(stock, available=stock.available + q, reserved=stock.reserved - q)
    if move == SELL and hold.status in (SOLD, RETURNED):  # RETURNED: it was SOLD then
        return replace(stock, reserved=stock.reserved - q, sold=stock.sold + q)
    if move == RETURN and hold.status == RETURNED:
        back = replace(stock, available=stock.available + q, returned=stock.returned + q)
        if hold.settle_offset == hold.return_offset:  # it was HELD: this return sold it too
            back = replace(back, reserved=back.reserved - q, sold=back.sold + q)
        return back
    return stock


def _key(stock: StockRow) -> bytes:
    return stock.product_id.encode()


# =====================================================================================
# restock
# =====================================================================================


def restock(
    stock: StockRow | None, applied: CommandApplied | None, command: Restock, offset: int
) -> Effect:
    """Add `quantity` (may be 0: a price change) and set the price. Applied once per
    restock_id. Raises InvalidRestock for a negative or too large quantity or price, a
    currency that is not an ISO 4217 code or not the product's, or a bad id: an admin
    message has no reply, so the agent dead-letters it rather than dropping it silently."""
    if stock is not None and offset <= stock.applied_offset:
        return NOTHING
    if applied is not None and applied.applied_offset != offset:
        return NOTHING  # the same restock id again
    problem = restock_problem(stock, command)
    if problem is not None:
        raise InvalidRestock(f"restock {command.restock_id} of {command.product_id}: {problem}")
    if stock is None:
        stock = StockRow(command.product_id, 0, 0, 0, 0, command.unit_price)
    new = replace(
        stock,
        available=stock.available + command.quantity,
        restocked=stock.restocked + command.quantity,
        unit_price=command.unit_price,
        applied_offset=offset,
    )
    marker = CommandApplied(command.restock_id, offset)
    return Effect(((restock_key(command.product_id, command.restock_id), marker), (_key(new), new)))


def restock_problem(stock: StockRow | None, command: Restock) -> str | None:
    """Why a Restock cannot be applied (None if it can)."""
    for what, value in (("product id", command.product_id), ("restock id", command.restock_id)):
        problem = id_problem(what, value)
        if problem is not None:
            return problem
    problem = amount_problem("unit price", command.unit_price, MAX_UNIT_PRICE)
    if problem is not None:
        return problem
    # The currency is fixed once the product exists: switching it would make every later
    # order mixing this product with others "unavailable" (_reserve_outcome).
    currency = command.unit_price.currency
    if stock is not None and currency != stock.unit_price.currency:
        return (
            f"price in {currency}, the product is priced in {stock.unit_price.currency}"
            " (a product's currency cannot change)"
        )
    restocked = 0 if stock is None else stock.restocked
    if command.quantity < 0 or restocked + command.quantity > MAX_STOCK:
        return f"quantity {command.quantity} must be >= 0, {MAX_STOCK} units at most in all"
    return None


def stock_invariant_violations(
    row: StockRow, holds: Iterable[StockHold] | None = None
) -> list[str]:
    """Broken stock invariants of one product (empty when sound): no counter negative,
    available + reserved + sold == restocked + returned (sold counts every unit ever sold,
    returned the ones cancelled orders gave back), at most what was sold returned; with
    its holds, also that the quantity held by HELD holds is what the product counts as
    reserved, that sold is what SOLD and RETURNED holds took, and returned what RETURNED
    holds gave back."""
    problems = [
        f"{name} is negative: {value}"
        for name, value in (
            ("available", row.available),
            ("reserved", row.reserved),
            ("sold", row.sold),
            ("returned", row.returned),
        )
        if value < 0
    ]
    if row.available + row.reserved + row.sold != row.restocked + row.returned:
        problems.append(
            f"available {row.available} + reserved {row.reserved} + sold {row.sold}"
            f" != restocked {row.restocked} + returned {row.returned}"
        )
    if row.returned > row.sold:
        problems.append(f"returned {row.returned} > sold {row.sold}")
    if holds is not None:
        holds = list(holds)
        held = sum(h.quantity for h in holds if h.status == HELD)
        if held != row.reserved:
            problems.append(f"reserved {row.reserved} != quantity held by sagas {held}")
        sold = sum(h.quantity for h in holds if h.status in (SOLD, RETURNED))
        if sold != row.sold:
            problems.append(f"sold {row.sold} != quantity sold to sagas {sold}")
        returned = sum(h.quantity for h in holds if h.status == RETURNED)
        if returned != row.returned:
            problems.append(f"returned {row.returned} != quantity returned by sagas {returned}")
        for h in holds:
            if h.quantity < 0:
                problems.append(f"saga {h.saga_id} holds {h.quantity}")
            if h.status not in HOLD_STATUSES:
                problems.append(f"saga {h.saga_id}: unknown hold status {h.status}")
    return problems
