"""Input limits: what one request may hold, so that every record, row and sum derived from
it stays far inside what Kafka and Avro can carry.

The numbers are what a real shop needs, with room to spare:

- ids (order, customer, product, restock, top-up): 1 to 128 characters (a UUID has 36,
  SKUs and customer numbers fewer), none of them a control character. Keys of per-saga
  rows join two ids with a NUL (`row_key`), which no id can contain.
- an order: 1 to 200 lines; lines of the same product are merged into one item; each
  item's quantity 1 to 1,000,000.
- a unit price: 0 to 10,000,000.00; an amount of money (top-up, balance): at most
  1,000,000,000,000.00. A currency: three upper-case letters (ISO 4217 form).
- stock: at most 10^15 units ever restocked per product.
- reasons (why an order was rejected, a payment refused): cut to 1,000 characters.

With these, the largest legal order (200 items, 128-character ids) makes records of a few
tens of kilobytes (a record may have 1,000,000 bytes), the largest total fits Avro's
decimal(18, 2) (16 integer digits: 200 x 10^6 x 10^7 = 2 x 10^15), and counters stay far
from 2^63.

Requests that break a limit are refused where they enter: `saga order` says why and
exits non-zero; the orchestrator rejects the saga at once with the reason
(ORDER_REJECTED), or dead-letters a request whose order id cannot be a saga id. Admin
messages (Restock, TopUp) that break one are dead-lettered with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal

from schemas.messages import Money, OrderItem, OrderRequested

MAX_ID_LENGTH = 128
MAX_ORDER_LINES = 200
MAX_QUANTITY = 1_000_000
MAX_UNIT_PRICE = Decimal("10000000.00")
MAX_AMOUNT = Decimal("1000000000000.00")
MAX_STOCK = 10**15
MAX_REASON_LENGTH = 1000

_CURRENCY = re.compile(r"[A-Z]{3}")
# Unicode category Cc, all of it (C0, DEL, C1); one regex is ~8x faster than a
# per-character unicodedata.category walk, and ids are checked on every command.
CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")
KEY_SEPARATOR = b"\x00"


def id_problem(what: str, value: object) -> str | None:
    """Why `value` is not a valid id (None if it is)."""
    if not isinstance(value, str):
        return f"{what} must be a string"
    if not value:
        return f"{what} is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"{what} has {len(value)} characters, at most {MAX_ID_LENGTH}"
    if CONTROL_CHARACTER.search(value):
        return f"{what} contains a control character"
    return None


def currency_problem(currency: object) -> str | None:
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency):
        return f"currency {currency!r} is not an ISO 4217 code (three upper-case letters)"
    return None


def amount_problem(what: str, money: Money, maximum: Decimal = MAX_AMOUNT) -> str | None:
    """Why `money` is not a valid amount of at most `maximum` (None if it is)."""
    problem = currency_problem(money.currency)
    if problem is not None:
        return f"{what}: {problem}"
    if money.amount < 0:
        return f"{what} {money.amount} {money.currency} is negative"
    if money.amount > maximum:
        return f"{what} {money.amount} {money.currency} is more than {maximum}"
    return None


def merged_items(items: Iterable[OrderItem]) -> list[OrderItem]:
    """One item per product, quantities of repeated lines summed, in first-appearance order."""
    quantities: dict[str, int] = {}
    for item in items:
        quantities[item.product_id] = quantities.get(item.product_id, 0) + item.quantity
    return [OrderItem(product_id, quantity) for product_id, quantity in quantities.items()]


def items_problems(items: list[OrderItem]) -> list[str]:
    """Why an order's lines cannot be served (empty if they can)."""
    if not items:
        return ["the order has no lines"]
    if len(items) > MAX_ORDER_LINES:
        return [f"the order has {len(items)} lines, at most {MAX_ORDER_LINES}"]
    problems = []
    for item in items:
        problem = id_problem("product id", item.product_id)
        if problem is not None:
            problems.append(problem)
        elif not 1 <= item.quantity <= MAX_QUANTITY:
            problems.append(
                f"{item.product_id}: quantity {item.quantity} is not between 1 and {MAX_QUANTITY}"
            )
    if problems:
        return problems
    return [
        f"{item.product_id}: {item.quantity} ordered in all, at most {MAX_QUANTITY}"
        for item in merged_items(items)
        if item.quantity > MAX_QUANTITY
    ]


def request_problems(request: OrderRequested) -> list[str]:
    """Why an order request breaks the input limits (empty if it does not)."""
    problems = [
        problem
        for problem in (
            id_problem("order id", request.order_id),
            id_problem("customer id", request.customer_id),
        )
        if problem is not None
    ]
    return problems + items_problems(request.items)


def reason(text: str) -> str:
    """A reason cut to MAX_REASON_LENGTH characters."""
    return text if len(text) <= MAX_REASON_LENGTH else text[: MAX_REASON_LENGTH - 1] + "…"


def row_key(owner: str, kind: str, item: str) -> bytes:
    """Key of a row that belongs to another row's key `owner` (a product's hold for a saga,
    a customer's payment of a saga): the owner first, so both live in its partition's
    store side by side, then NULs, which no id contains."""
    return KEY_SEPARATOR.join((owner.encode(), kind.encode(), item.encode()))
