"""Product Service business logic: pure functions over one table row. No I/O, no clock.

Two tables (DESIGN §3):
- `reservations` (key saga id): one `Reservation` per saga. It splits a ReserveProducts
  into one ReserveItem per product, collects the ItemResults and replies once.
- `stock` (key product id): one `StockRow` per product; reserves, releases and sells
  the quantity a saga holds.

Every reservation handler returns `(row, stock_messages, reply)`: the agent assigns the
row back (when not None), sends each stock message to product.stock keyed by its
product_id and the reply (when not None) to saga.replies keyed by saga id.

Idempotency:
- Replies are rebuilt from the reservation (status, results, kept command ids), so a
  duplicate command gets the same reply (its own attempt echoed, replied_at=now) and the
  row is unchanged. No reply bytes are stored: a reservation is one bounded row per saga.
- Stock messages are idempotent per (saga, product), so a duplicate command re-sends
  whatever the reservation still needs from the stock side. That heals a crash between
  writing the row and sending its messages (at-least-once redelivers the command, but
  the row already says the work was done).
- The stock row remembers each saga it dealt with (`reservations` while held, `settled`
  after), so a duplicate ReserveItem never reserves twice nor after a release.
  `settled` keeps the latest MAX_SETTLED sagas. Should an evicted saga still re-reserve,
  its ItemResult is unwanted and `collect_result` releases it again.
- A crash replays product.stock from the last commit onto a table restored with every
  change made since. `applied_offset` makes that exact however many sagas settled in
  between: a message at or below it was applied already and changes nothing
  (`apply_stock_message`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

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

# Reservation.status
COLLECTING = "COLLECTING"
RESERVED = "RESERVED"
UNAVAILABLE = "UNAVAILABLE"
RELEASED = "RELEASED"
SOLD = "SOLD"
RESERVATION_STATUSES = (COLLECTING, RESERVED, UNAVAILABLE, RELEASED, SOLD)

# StockRow.settled values
SETTLED_RELEASED = "RELEASED"
SETTLED_SOLD = "SOLD"
SETTLED_REFUSED = "REFUSED"

MAX_SETTLED = 1000
MAX_RESTOCK_IDS = 1000
DEFAULT_CURRENCY = "EUR"  # price of a product that does not exist

StockMessage: TypeAlias = ReserveItem | ReleaseItem | SellItem
ReserveReply: TypeAlias = ProductsReserved | ProductsUnavailable
Reply: TypeAlias = ProductsReserved | ProductsUnavailable | ProductsReleased


class InvalidRestock(ValueError):
    """A Restock that cannot be applied; the agent dead-letters it (it has no reply)."""


# =====================================================================================
# reservations table (key saga id)
# =====================================================================================


def start_reservation(
    res: Reservation | None, command: ReserveProducts, now: datetime
) -> tuple[Reservation, list[StockMessage], ReserveReply | None]:
    """Open the reservation: one ReserveItem per distinct product, no reply yet.

    An empty order or a line with quantity <= 0 is refused at once (ProductsUnavailable
    naming the bad lines, nothing sent to stock). A duplicate re-sends the outstanding
    ReserveItems while collecting, else the reply already given (if any). A saga that was
    released before its ReserveProducts ever came is left alone: no reservation, no reply
    (the orchestrator is past that step; replying would only be a stale message).
    """
    if res is None:
        return _open(command, now)
    if res.reserve_command_id is None:
        return res, [], None
    if command.attempt > res.reserve_attempt:
        res = replace(res, reserve_attempt=command.attempt)
    reply = None
    if _reserve_replied(res):
        reply = _reserve_reply(res, command.command_id, command.attempt, now)
    return res, _pending_stock_messages(res), reply


def collect_result(
    res: Reservation | None, result: ItemResult, now: datetime
) -> tuple[Reservation | None, list[StockMessage], Reply | None]:
    """Record the first result per product; reply once every product has one.

    All reserved (in one currency) -> RESERVED + ProductsReserved with the total.
    Otherwise -> UNAVAILABLE, release what was reserved, ProductsUnavailable.
    If a release was requested meanwhile, every reserved result is released as it comes
    and the completion answers the ReleaseProducts (ProductsReleased) instead.
    Any other result (duplicate, unknown saga or product, already complete) changes
    nothing, but stock it says is held and nobody wants is released again.
    """
    if res is None or not _accepts(res, result):
        return res, _release_unwanted(res, result), None
    res = replace(res, results=[*res.results, result], updated_at=now)
    messages: list[StockMessage] = []
    if res.release_requested and result.reserved:
        messages.append(_release(result))
    if not _is_complete(res):
        return res, messages, None
    return _complete(res, messages, now)


def release_reservation(
    res: Reservation | None, command: ReleaseProducts, now: datetime
) -> tuple[Reservation, list[StockMessage], ProductsReleased | None]:
    """Compensation: give back everything the saga holds, reply ProductsReleased.

    While results are still coming in, remember the request (release_requested) and
    reply when the last one arrives; outstanding ReserveItems are re-sent so every result
    does come back even if the originals were lost. An unknown saga is recorded RELEASED
    with nothing held, so a late ReserveProducts for it is ignored. A SOLD reservation is
    final: nothing is released and the reply says FAILURE.
    """
    if res is None:
        return _released_placeholder(command, now), [], _released_reply(command, now)
    if res.status == SOLD:
        return res, [], _released_reply(command, now, Outcome.FAILURE)
    res = _note_release(res, command, now)
    reply = None if res.status == COLLECTING else _released_reply(command, now)
    return res, _pending_stock_messages(res), reply


def sell_reservation(
    res: Reservation | None, now: datetime
) -> tuple[Reservation | None, list[SellItem]]:
    """The saga was approved: a RESERVED reservation becomes SOLD (one SellItem each).

    A SOLD one re-sends its SellItems (a no-op at stock if already sold); any other
    status has nothing to sell.
    """
    if res is None or res.status not in (RESERVED, SOLD):
        return res, []
    if res.status == RESERVED:
        res = replace(res, status=SOLD, updated_at=now)
    return res, [SellItem(saga_id=r.saga_id, product_id=r.product_id) for r in res.results]


# ---- reservation helpers ----


def requested_quantities(items: Iterable[OrderItem]) -> dict[str, int]:
    """Quantity per distinct product (duplicate lines summed), in first-appearance order."""
    quantities: dict[str, int] = {}
    for item in items:
        quantities[item.product_id] = quantities.get(item.product_id, 0) + item.quantity
    return quantities


def _invalid_lines(items: list[OrderItem]) -> list[OrderItem]:
    return [item for item in items if item.quantity <= 0]


def _open(
    command: ReserveProducts, now: datetime
) -> tuple[Reservation, list[StockMessage], ReserveReply | None]:
    res = Reservation(
        saga_id=command.saga_id,
        order_id=command.order_id,
        items=list(command.items),
        results=[],
        status=COLLECTING,
        release_requested=False,
        reserve_command_id=command.command_id,
        reserve_attempt=command.attempt,
        release_command_id=None,
        release_attempt=0,
        updated_at=now,
    )
    if not command.items or _invalid_lines(command.items):
        res = replace(res, status=UNAVAILABLE)
        return res, [], _reserve_reply(res, command.command_id, command.attempt, now)
    return res, _pending_stock_messages(res), None


def _released_placeholder(command: ReleaseProducts, now: datetime) -> Reservation:
    return Reservation(
        saga_id=command.saga_id,
        order_id=command.order_id,
        items=[],
        results=[],
        status=RELEASED,
        release_requested=False,
        reserve_command_id=None,
        reserve_attempt=0,
        release_command_id=command.command_id,
        release_attempt=command.attempt,
        updated_at=now,
    )


def _note_release(res: Reservation, command: ReleaseProducts, now: datetime) -> Reservation:
    """Remember the release; a completed reservation becomes RELEASED right away."""
    attempt = max(res.release_attempt, command.attempt)
    if res.release_command_id is not None:  # duplicate: only a newer attempt is news
        return res if attempt == res.release_attempt else replace(res, release_attempt=attempt)
    collecting = res.status == COLLECTING
    return replace(
        res,
        status=COLLECTING if collecting else RELEASED,
        release_requested=collecting,
        release_command_id=command.command_id,
        release_attempt=attempt,
        updated_at=now,
    )


def _reserve_replied(res: Reservation) -> bool:
    """Did the ReserveProducts get its reply? Not if a release overtook the collection."""
    return (
        res.reserve_command_id is not None
        and res.status != COLLECTING
        and not res.release_requested
    )


def _result_of(res: Reservation, product_id: str) -> ItemResult | None:
    return next((r for r in res.results if r.product_id == product_id), None)


def _accepts(res: Reservation, result: ItemResult) -> bool:
    """A new result: still collecting, a requested product, the first for it."""
    return (
        res.status == COLLECTING
        and result.product_id in requested_quantities(res.items)
        and _result_of(res, result.product_id) is None
    )


def _is_complete(res: Reservation) -> bool:
    return all(_result_of(res, p) is not None for p in requested_quantities(res.items))


def _is_releasing(res: Reservation) -> bool:
    """Does the saga want every held item back?"""
    return res.status in (UNAVAILABLE, RELEASED) or res.release_requested


def _release(result: ItemResult) -> ReleaseItem:
    return ReleaseItem(saga_id=result.saga_id, product_id=result.product_id)


def _releases(res: Reservation) -> list[StockMessage]:
    return [_release(r) for r in res.results if r.reserved]


def _pending_stock_messages(res: Reservation) -> list[StockMessage]:
    """What the stock side must still do for this reservation (all idempotent)."""
    messages: list[StockMessage] = []
    if res.status == COLLECTING:
        messages += [
            ReserveItem(saga_id=res.saga_id, product_id=product_id, quantity=quantity)
            for product_id, quantity in requested_quantities(res.items).items()
            if _result_of(res, product_id) is None
        ]
    if _is_releasing(res):
        messages += _releases(res)
    if res.status == SOLD:
        messages += [SellItem(saga_id=r.saga_id, product_id=r.product_id) for r in res.results]
    return messages


def _release_unwanted(res: Reservation | None, result: ItemResult) -> list[StockMessage]:
    """Releases due on a result that is not new: re-send the saga's releases (a crash may
    have lost them) and give back the reported stock if nobody wants it held."""
    messages = _releases(res) if res is not None and _is_releasing(res) else []
    if result.reserved and not _wants(res, result):
        release = _release(result)
        if release not in messages:
            messages.append(release)
    return messages


def _wants(res: Reservation | None, result: ItemResult) -> bool:
    """Should the stock `result` reports as held stay held for this saga?"""
    if res is None or _is_releasing(res):
        return False
    recorded = _result_of(res, result.product_id)
    return recorded is not None and recorded.reserved


def _complete(
    res: Reservation, messages: list[StockMessage], now: datetime
) -> tuple[Reservation, list[StockMessage], Reply]:
    """All results are in: settle the reservation and give its one reply."""
    release_id, reserve_id = res.release_command_id, res.reserve_command_id
    if res.release_requested:
        assert release_id is not None  # set together with release_requested
        reply = ProductsReleased(
            saga_id=res.saga_id,
            command_id=release_id,
            attempt=res.release_attempt,
            outcome=Outcome.SUCCESS,
            replied_at=now,
        )
        return replace(res, status=RELEASED), messages, reply
    assert reserve_id is not None  # only a ReserveProducts opens a collection
    if not _fully_reserved(res):
        res = replace(res, status=UNAVAILABLE)
        messages = [*messages, *_releases(res)]
    else:
        res = replace(res, status=RESERVED)
    return res, messages, _reserve_reply(res, reserve_id, res.reserve_attempt, now)


def _reserve_reply(res: Reservation, command_id: str, attempt: int, now: datetime) -> ReserveReply:
    """The answer to ReserveProducts, rebuilt from the reservation."""
    if not _fully_reserved(res):
        return ProductsUnavailable(
            saga_id=res.saga_id,
            command_id=command_id,
            attempt=attempt,
            outcome=Outcome.FAILURE,
            replied_at=now,
            missing=_missing(res),
        )
    return ProductsReserved(
        saga_id=res.saga_id,
        command_id=command_id,
        attempt=attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
        total=_total(res),
    )


def _released_reply(
    command: ReleaseProducts, now: datetime, outcome: Outcome = Outcome.SUCCESS
) -> ProductsReleased:
    return ProductsReleased(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=outcome,
        replied_at=now,
    )


def _results_in_request_order(res: Reservation) -> list[ItemResult]:
    found = (_result_of(res, p) for p in requested_quantities(res.items))
    return [r for r in found if r is not None]


def _order_currency(res: Reservation) -> str:
    """The currency of the order: that of the first reserved product (in request order)."""
    reserved = [r for r in _results_in_request_order(res) if r.reserved]
    return reserved[0].unit_price.currency if reserved else DEFAULT_CURRENCY


def _fully_reserved(res: Reservation) -> bool:
    """Is every requested product reserved, in one currency? (An empty order is not.)"""
    return bool(res.items) and _is_complete(res) and not _missing(res)


def _missing(res: Reservation) -> list[MissingItem]:
    """What stops the order: bad lines, refused products, or products priced in another
    currency than the first (the total must be in one currency)."""
    bad = _invalid_lines(res.items)
    if bad:
        return [MissingItem(i.product_id, requested=i.quantity, available=0) for i in bad]
    currency = _order_currency(res)
    return [
        MissingItem(r.product_id, requested=r.requested, available=r.available)
        for r in _results_in_request_order(res)
        if not r.reserved or r.unit_price.currency != currency
    ]


def _total(res: Reservation) -> Money:
    amount = sum(
        (r.unit_price.amount * r.requested for r in res.results if r.reserved), Decimal("0")
    )
    return Money(amount.quantize(Decimal("0.01")), _order_currency(res))


# =====================================================================================
# stock table (key product id)
# =====================================================================================


def apply_stock_message(
    stock: StockRow | None, message: StockMessage | Restock, offset: int
) -> tuple[StockRow | None, ItemResult | None]:
    """Apply one product.stock message read at `offset`; a ReserveItem gets its result.

    A replay (offset at or below the row's `applied_offset`) changes nothing; a replayed
    ReserveItem is answered from the row as it stands (held -> reserved, else refused).
    A row that changes records `offset`, so every earlier message counts as applied.
    """
    if stock is not None and offset <= stock.applied_offset:
        if isinstance(message, ReserveItem):
            held = message.saga_id in stock.reservations
            return stock, _item_result(message, held, stock.available, stock.unit_price)
        return stock, None
    result = None
    new: StockRow | None
    if isinstance(message, ReserveItem):
        new, result = reserve_item(stock, message)
    elif isinstance(message, ReleaseItem):
        new = release_item(stock, message)
    elif isinstance(message, SellItem):
        new = sell_item(stock, message)
    else:
        new = restock(stock, message)
    if new is not None and new is not stock:
        new = replace(new, applied_offset=offset)
    return new, result


def reserve_item(stock: StockRow | None, item: ReserveItem) -> tuple[StockRow | None, ItemResult]:
    """Hold `item.quantity` for the saga if that much is available, else refuse.

    Idempotent per saga: a saga already holding gets the same positive result; a saga
    already settled (released, sold, refused) is refused without touching the row, so a
    duplicate arriving after a release cannot reserve again. A refusal is itself recorded
    so that a duplicate after a restock stays refused (its first result was a refusal).
    A product that does not exist is refused with nothing available and a zero price.
    """
    if stock is None:
        return None, _item_result(item, False, 0, Money(Decimal("0.00"), DEFAULT_CURRENCY))
    if item.saga_id in stock.reservations:
        return stock, _item_result(item, True, stock.available, stock.unit_price)
    if item.saga_id in stock.settled:
        return stock, _item_result(item, False, stock.available, stock.unit_price)
    if item.quantity <= 0 or stock.available < item.quantity:
        stock = _settle(stock, item.saga_id, SETTLED_REFUSED)
        return stock, _item_result(item, False, stock.available, stock.unit_price)
    stock = replace(
        stock,
        available=stock.available - item.quantity,
        reserved=stock.reserved + item.quantity,
        reservations={**stock.reservations, item.saga_id: item.quantity},
    )
    return stock, _item_result(item, True, stock.available, stock.unit_price)


def release_item(stock: StockRow | None, item: ReleaseItem) -> StockRow | None:
    """Return the quantity the saga holds to `available`; the saga is settled RELEASED.

    Idempotent. A release for a saga that holds nothing and was never settled (it came
    before the reserve) still records RELEASED, so the later reserve is refused. An
    already settled saga (e.g. SOLD) stays as it is.
    """
    if stock is None or item.saga_id in stock.settled:
        return stock
    held = stock.reservations.get(item.saga_id, 0)
    stock = replace(
        stock,
        available=stock.available + held,
        reserved=stock.reserved - held,
        reservations=_without(stock.reservations, item.saga_id),
    )
    return _settle(stock, item.saga_id, SETTLED_RELEASED)


def sell_item(stock: StockRow | None, item: SellItem) -> StockRow | None:
    """The saga was approved: what it holds becomes sold. Idempotent; no-op if not held."""
    if stock is None or item.saga_id not in stock.reservations:
        return stock
    held = stock.reservations[item.saga_id]
    stock = replace(
        stock,
        reserved=stock.reserved - held,
        sold=stock.sold + held,
        reservations=_without(stock.reservations, item.saga_id),
    )
    return _settle(stock, item.saga_id, SETTLED_SOLD)


def restock(stock: StockRow | None, command: Restock) -> StockRow:
    """Add `quantity` (may be 0: a price change) and set the price. Idempotent on
    restock_id (the latest MAX_RESTOCK_IDS are remembered).

    Raises InvalidRestock for a negative quantity or price: an admin message has no
    reply, so the agent dead-letters it rather than dropping it silently.
    """
    if command.quantity < 0 or command.unit_price.amount < 0:
        raise InvalidRestock(
            f"restock {command.restock_id} of {command.product_id}: quantity "
            f"{command.quantity} and unit price {command.unit_price.amount} must be >= 0"
        )
    if stock is None:
        stock = StockRow(
            product_id=command.product_id,
            available=0,
            reserved=0,
            sold=0,
            restocked=0,
            unit_price=command.unit_price,
        )
    elif command.restock_id in stock.restock_ids:
        return stock
    return replace(
        stock,
        available=stock.available + command.quantity,
        restocked=stock.restocked + command.quantity,
        unit_price=command.unit_price,
        restock_ids=[*stock.restock_ids, command.restock_id][-MAX_RESTOCK_IDS:],
    )


def stock_invariant_violations(row: StockRow) -> list[str]:
    """Broken stock invariants of one row (empty when sound)."""
    problems = [
        f"{name} is negative: {value}"
        for name, value in (
            ("available", row.available),
            ("reserved", row.reserved),
            ("sold", row.sold),
        )
        if value < 0
    ]
    if row.available + row.reserved + row.sold != row.restocked:
        problems.append(
            f"available {row.available} + reserved {row.reserved} + sold {row.sold}"
            f" != restocked {row.restocked}"
        )
    held = sum(row.reservations.values())
    if held != row.reserved:
        problems.append(f"reserved {row.reserved} != sum of reservations {held}")
    problems += [
        f"saga {saga} holds {quantity}"
        for saga, quantity in row.reservations.items()
        if quantity <= 0
    ]
    problems += [
        f"saga {saga} both holds stock and is settled {row.settled[saga]}"
        for saga in row.reservations
        if saga in row.settled
    ]
    return problems


# ---- stock helpers ----


def _item_result(item: ReserveItem, reserved: bool, available: int, price: Money) -> ItemResult:
    return ItemResult(
        saga_id=item.saga_id,
        product_id=item.product_id,
        requested=item.quantity,
        reserved=reserved,
        available=available,
        unit_price=price,
    )


def _settle(stock: StockRow, saga_id: str, outcome: str) -> StockRow:
    """Record how the saga ended here; keep only the latest MAX_SETTLED (oldest dropped)."""
    settled = {**stock.settled, saga_id: outcome}
    while len(settled) > MAX_SETTLED:
        del settled[next(iter(settled))]
    return replace(stock, settled=settled)


def _without(mapping: dict[str, int], key: str) -> dict[str, int]:
    return {k: v for k, v in mapping.items() if k != key}
