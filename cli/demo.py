"""The demo of `saga up --demo`: three sample orders whose outcomes are known in advance.

It runs on whatever the local system holds (products of the test suite, stock bought by
earlier demos, a user's restocks), so before placing the orders it looks at what they
need, through the product and payment workers' web views:

- the example catalog's products and customers that do not exist are seeded (the
  catalog's own Restock/TopUp ids, so seeding again changes nothing); existing ones are
  left as they are;
- the "approved" sample's stock and money are topped up (added to, never set) when
  earlier orders used them up;
- the quantities of the two failing samples are chosen from the current stock and
  balance, so that they fail for their reason even after a user restocked or topped up.

Deciding is pure (`seed_plan`, `plan_samples`, `outcome_problem`); reading and sending
sit in `read_state` and `cli.up_cmd`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from messaging.catalog import Catalog
from schemas import messages as m
from schemas.limits import MAX_QUANTITY


@dataclass(frozen=True)
class Product:
    available: int
    unit_price: m.Money


Stock = Mapping[str, Product]  # product id -> its row; absent: no such product
Balances = Mapping[str, m.Money]  # customer id -> balance; absent: no account


@dataclass(frozen=True)
class Sample:
    label: str
    customer: str
    items: tuple[tuple[str, int], ...]
    expected_state: str
    expected_reason: str = ""  # how the reason of a rejection starts


@dataclass(frozen=True)
class SamplePlan:
    samples: list[Sample]
    restocks: list[m.Restock] = field(default_factory=list)
    top_ups: list[m.TopUp] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was adjusted, and why


APPROVED, OUT_OF_STOCK, INSUFFICIENT_FUNDS = "approved", "out of stock", "insufficient funds"
# Products and customers of examples/catalog.yaml the samples use.
BUYER, BUYER_ITEMS = "alice", (("widget", 1), ("gizmo", 2))
SCARCE_BUYER, SCARCE_PRODUCT = "bob", "rare-gem"
POOR_BUYER, POOR_BUYS = "carol", "widget"
SAMPLE_PRODUCTS = {*dict(BUYER_ITEMS), SCARCE_PRODUCT, POOR_BUYS}
SAMPLE_CUSTOMERS = {BUYER, SCARCE_BUYER, POOR_BUYER}


def seed_plan(catalog: Catalog, stock: Stock, balances: Balances) -> Catalog:
    """The catalog's products and customers that do not exist yet."""
    return Catalog(
        restocks=[r for r in catalog.restocks if r.product_id not in stock],
        top_ups=[t for t in catalog.top_ups if t.customer_id not in balances],
    )


def after_seeding(seeded: Catalog, stock: Stock, balances: Balances) -> tuple[Stock, Balances]:
    """The state once the seeded products and customers are applied (they did not exist)."""
    return (
        {**stock, **{r.product_id: Product(r.quantity, r.unit_price) for r in seeded.restocks}},
        {**balances, **{t.customer_id: t.amount for t in seeded.top_ups}},
    )


def plan_samples(
    catalog: Catalog, stock: Stock, balances: Balances, *, top_up: bool = True
) -> SamplePlan:
    """The three sample orders for the current stock and balances, and (with `top_up`)
    the Restock/TopUp messages the approved one needs first."""
    notes: list[str] = []
    # Insufficient funds: one more widget than the customer's balance pays for.
    poor_quantity = 1
    price = stock[POOR_BUYS].unit_price.amount if POOR_BUYS in stock else None
    balance = balances[POOR_BUYER].amount if POOR_BUYER in balances else None
    if price and balance is not None and balance >= price:
        poor_quantity = int(balance // price) + 1
        if poor_quantity > MAX_QUANTITY:
            poor_quantity = 1
            notes.append(f"{POOR_BUYER} can pay for more than {MAX_QUANTITY} {POOR_BUYS}s")
        else:
            notes.append(
                f"{POOR_BUYER} has {balance}: the insufficient-funds sample orders "
                f"{poor_quantity} {POOR_BUYS}s"
            )
    # Out of stock: one more than there is.
    scarce_quantity = 2
    if SCARCE_PRODUCT in stock and stock[SCARCE_PRODUCT].available >= scarce_quantity:
        scarce_quantity = min(stock[SCARCE_PRODUCT].available + 1, MAX_QUANTITY)
        notes.append(
            f"{SCARCE_PRODUCT} has {stock[SCARCE_PRODUCT].available} in stock: the "
            f"out-of-stock sample orders {scarce_quantity}"
        )
    samples = [
        Sample(APPROVED, BUYER, BUYER_ITEMS, "ORDER_APPROVED"),
        Sample(
            OUT_OF_STOCK, SCARCE_BUYER, ((SCARCE_PRODUCT, scarce_quantity),),
            "ORDER_REJECTED", "products unavailable",
        ),
        Sample(
            INSUFFICIENT_FUNDS, POOR_BUYER, ((POOR_BUYS, poor_quantity),),
            "ORDER_REJECTED", "payment failed: insufficient funds",
        ),
    ]  # fmt: skip
    if not top_up:
        return SamplePlan(samples, notes=notes)
    # The approved sample's stock must last while the insufficient-funds one holds widgets.
    needed = dict(BUYER_ITEMS)
    needed[POOR_BUYS] = needed.get(POOR_BUYS, 0) + poor_quantity
    restocks = [
        _refill(catalog, product_id, quantity, stock.get(product_id))
        for product_id, quantity in needed.items()
        if product_id not in stock or stock[product_id].available < quantity
    ]
    notes += [
        f"{r.product_id} restocked with {r.quantity} for the approved sample" for r in restocks
    ]
    top_ups = []
    cost = sum((stock[p].unit_price.amount * q for p, q in BUYER_ITEMS if p in stock), Decimal(0))
    if BUYER in balances and balances[BUYER].amount < cost:
        top_ups.append(_top_up(catalog, balances[BUYER], cost))
        notes.append(f"{BUYER} topped up with {top_ups[0].amount.amount} for the approved sample")
    return SamplePlan(samples, restocks, top_ups, notes)


def _refill(catalog: Catalog, product_id: str, needed: int, row: Product | None) -> m.Restock:
    """As much as the catalog stocks (at least what is needed); at the current price."""
    seeded = next((r for r in catalog.restocks if r.product_id == product_id), None)
    quantity = max(needed, seeded.quantity if seeded else 0)
    price = row.unit_price if row else seeded.unit_price if seeded else None
    if price is None:
        raise ValueError(f"no price for {product_id}: not in stock, not in the catalog")
    return m.Restock(f"demo:{uuid.uuid4()}", product_id, quantity, price)


def _top_up(catalog: Catalog, balance: m.Money, needed: Decimal) -> m.TopUp:
    seeded = next((t for t in catalog.top_ups if t.customer_id == BUYER), None)
    amount = max(needed, seeded.amount.amount if seeded else Decimal(0))
    return m.TopUp(f"demo:{uuid.uuid4()}", BUYER, m.Money(amount, balance.currency))


def outcome_problem(sample: Sample, final: m.SagaEvent | None) -> str | None:
    """Why the sample's saga did not end as its label says (None if it did)."""
    if final is None:
        return f"the {sample.label!r} sample did not finish"
    reason = final.reason or ""
    if final.to_state == sample.expected_state and reason.startswith(sample.expected_reason):
        return None
    expected = sample.expected_state + (
        f" ({sample.expected_reason} ...)" if sample.expected_reason else ""
    )
    got = final.to_state + (f" ({reason})" if reason else "")
    return f"the {sample.label!r} sample ended {got}, expected {expected}"


# ---- reading the state (I/O) ----


class ViewError(RuntimeError):
    """A worker's web view did not answer as expected."""


def _get_json(url: str) -> dict[str, object] | None:
    """The JSON of a view; None for 404 (no such row)."""
    try:
        with urllib.request.urlopen(url + "?format=json", timeout=10) as response:
            payload = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise ViewError(f"{url}: HTTP {exc.code}") from exc
    except OSError as exc:
        raise ViewError(f"{url}: {exc}") from exc
    if not isinstance(payload, dict):
        raise ViewError(f"{url}: not a JSON object")
    return payload


def _money(value: object) -> m.Money:
    if not isinstance(value, dict):
        raise ViewError(f"not an amount of money: {value!r}")
    return m.Money(Decimal(str(value["amount"])), str(value["currency"]))


def read_state(
    product_port: int, payment_port: int, products: list[str], customers: list[str]
) -> tuple[Stock, Balances]:
    """The rows of `products` and accounts of `customers` that exist, from the views."""
    stock: dict[str, Product] = {}
    for product_id in products:
        row = _get_json(f"http://127.0.0.1:{product_port}/stock/{urllib.parse.quote(product_id)}")
        if row is not None:
            stock[product_id] = Product(int(str(row["available"])), _money(row["unit_price"]))
    balances: dict[str, m.Money] = {}
    for customer_id in customers:
        quoted = urllib.parse.quote(customer_id)
        account = _get_json(f"http://127.0.0.1:{payment_port}/accounts/{quoted}")
        if account is not None:
            balances[customer_id] = _money(account["balance"])
    return stock, balances
