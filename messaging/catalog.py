"""Seed files (YAML: products with stock and price, customers with balance) as admin messages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from participants.payment.logic import top_up_problem
from participants.product.logic import restock_problem
from schemas import limits
from schemas import messages as m
from schemas.limits import MAX_STOCK

EXAMPLE_CATALOG = Path(__file__).resolve().parents[1] / "examples" / "catalog.yaml"
STOCK_TOPIC = "product.commands"  # Restock, key product id
PAYMENT_TOPIC = "payment.commands"  # TopUp, key customer id


class CatalogError(ValueError):
    """The seed file is malformed; the message says where."""


def seeded_id(batch: str, entry_id: str) -> str:
    """The id of the Restock or TopUp of a product or customer of the file `batch`.

    Do not change it: services ignore an id they applied already, which is what makes
    seeding the same file again (after an upgrade too) change nothing.
    """
    return f"seed:{batch}:{entry_id}"


BATCH_LENGTH = 16  # hex digits of the file's SHA-256
# A seeded id is the entry's id and this many characters more; it must be a valid id.
LONGEST_SEEDABLE_ID = limits.MAX_ID_LENGTH - len(seeded_id("0" * BATCH_LENGTH, ""))


@dataclass(frozen=True)
class Catalog:
    restocks: list[m.Restock]
    top_ups: list[m.TopUp]


def _money(value: Any, currency: str, where: str, maximum: Decimal) -> m.Money:
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise CatalogError(f"{where}: {value!r} is not a decimal amount") from exc
    if not amount.is_finite() or amount < 0 or amount != amount.quantize(Decimal("0.01")):
        raise CatalogError(f"{where}: {value!r} must be >= 0 with at most 2 decimal places")
    money = m.Money(amount=amount.quantize(Decimal("0.01")), currency=currency)
    problem = limits.amount_problem(where, money, maximum)
    if problem is not None:
        raise CatalogError(problem)
    return money


def _entries(data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    entries = data.get(name) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CatalogError(f"'{name}' must be a list of mappings")
    return entries


def _id(entry: dict[str, Any], where: str) -> str:
    value = entry.get("id")
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where}: 'id' must be a non-empty string")
    problem = limits.id_problem("'id'", value)
    if problem is not None:
        raise CatalogError(f"{where}: {problem}")
    return value


def _listed_once(first_positions: dict[str, int], section: str, i: int, entry_id: str) -> None:
    """Raise CatalogError if `entry_id` was listed before in `section`: both entries would
    get the same seeded id, so the service would apply the first and ignore the other."""
    first = first_positions.setdefault(entry_id, i)
    if first != i:
        kind = "product" if section == "products" else "customer"
        raise CatalogError(
            f"{kind} {entry_id!r} is listed twice: {section}[{first}] and {section}[{i}]"
            f" (only the first would be applied; merge them into one entry)"
        )


def _refused_by_worker(where: str, entry_id: str, problem: str | None) -> None:
    """Raise CatalogError if the worker would refuse an entry's message (`problem`): it
    would dead-letter it, unseen by `saga seed`, which would report it seeded."""
    if problem is None:
        return
    if len(entry_id) > LONGEST_SEEDABLE_ID:  # the likely cause: say what to do about it
        problem += (
            f" (a seeded id is 'seed:<batch>:<id>', {limits.MAX_ID_LENGTH - LONGEST_SEEDABLE_ID}"
            f" characters more than the id: ids in a seed file may have at most"
            f" {LONGEST_SEEDABLE_ID} characters)"
        )
    raise CatalogError(f"{where}: {problem}")


def parse(text: str) -> Catalog:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError(f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError("the seed file must be a mapping with 'products' and/or 'customers'")
    currency = data.get("currency", "EUR")
    if limits.currency_problem(currency) is not None:
        raise CatalogError(f"'currency' must be an ISO 4217 code like EUR, got {currency!r}")
    # Ids derive from the file's content: seeding the same file twice changes nothing.
    batch = hashlib.sha256(text.encode()).hexdigest()[:BATCH_LENGTH]
    # Every message is checked as its worker will check it, so that the whole file is
    # refused here, before anything is published, rather than part of it dead-lettered.
    restocks = []
    product_positions: dict[str, int] = {}
    for i, entry in enumerate(_entries(data, "products")):
        product_id = _id(entry, f"products[{i}]")
        _listed_once(product_positions, "products", i, product_id)
        where = f"product {product_id!r}"
        stock = entry.get("stock")
        if isinstance(stock, bool) or not isinstance(stock, int) or not 0 <= stock <= MAX_STOCK:
            raise CatalogError(
                f"{where}: 'stock' must be an integer from 0 to {MAX_STOCK}, got {stock!r}"
            )
        restock = m.Restock(
            restock_id=seeded_id(batch, product_id),
            product_id=product_id,
            quantity=stock,
            unit_price=_money(
                entry.get("price"), currency, f"{where}: 'price'", limits.MAX_UNIT_PRICE
            ),
        )
        _refused_by_worker(where, product_id, restock_problem(None, restock))
        restocks.append(restock)
    top_ups = []
    customer_positions: dict[str, int] = {}
    for i, entry in enumerate(_entries(data, "customers")):
        customer_id = _id(entry, f"customers[{i}]")
        _listed_once(customer_positions, "customers", i, customer_id)
        where = f"customer {customer_id!r}"
        balance = _money(entry.get("balance"), currency, f"{where}: 'balance'", limits.MAX_AMOUNT)
        if balance.amount == 0:
            # A top-up of nothing is refused by the Payment Service, and a customer who
            # never received money is unknown to it anyway: there is no empty account.
            raise CatalogError(
                f"{where}: 'balance' must be more than 0 (a customer exists once money is"
                " topped up: leave out one who has none; their orders fail as 'unknown"
                " customer')"
            )
        top_up = m.TopUp(
            top_up_id=seeded_id(batch, customer_id), customer_id=customer_id, amount=balance
        )
        _refused_by_worker(where, customer_id, top_up_problem(None, top_up))
        top_ups.append(top_up)
    return Catalog(restocks=restocks, top_ups=top_ups)


def load(path: Path) -> Catalog:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc}") from exc
    try:
        return parse(text)
    except CatalogError as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def publish(catalog: Catalog) -> None:
    """Send Restock to product.commands (key product id) and TopUp to payment.commands."""
    from messaging import client

    producer = client.producer()
    for restock in catalog.restocks:
        client.send(producer, STOCK_TOPIC, restock.product_id, restock)
    for top_up in catalog.top_ups:
        client.send(producer, PAYMENT_TOPIC, top_up.customer_id, top_up)
    client.flush(producer)
