"""The Product Service under crashes and duplicates: whole sagas run through a model of the
worker (tests/unit/worker_model.py) that crashes at random points, even in the middle of a
commit, and replays from the last committed offsets onto tables restored from what the
changelog got. A driver plays the orchestrator, re-sending commands at random.

Some approved orders are then cancelled: a CancelOrderSaga returns what they bought, its
ReturnProducts re-sent now and then, and sometimes sent before the order's SellProducts
(the cancel overtook the sale).

Whatever happened, each product's stock adds up, what approved sagas bought is sold
exactly once, what cancelled ones bought is returned exactly once and nothing else stays
held.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from participants.product import logic
from participants.product.logic import HELD, RETURNED, SOLD
from schemas.limits import merged_items
from schemas.messages import (
    Money,
    OrderItem,
    ProductsReleased,
    ProductsReserved,
    ProductsReturned,
    ProductsUnavailable,
    ReleaseProducts,
    ReserveProducts,
    Restock,
    ReturnProducts,
    SellProducts,
    StockHold,
    StockRow,
)
from tests.unit.worker_model import ModelWorker, Send

T0 = datetime(2025, 1, 1, tzinfo=UTC)
COMMANDS, REPLIES = "product.commands", "saga.replies"
PRODUCTS = {"p0": 6, "p1": 4, "p2": 3}  # initial stock: scarce, so some orders fail
LATE = "p3"  # exists only from a random point on: reserves before it are refused
ALL_PRODUCTS = {**PRODUCTS, LATE: 5}


def handle(topic: str, key: bytes, message: object, offset: int, rows: dict[bytes, Any]) -> Any:
    """What the Product Service's agent does with a record (participants/product/app.py)."""
    assert key == logic.product_of(message).encode()  # type: ignore[arg-type]
    owned = rows.get(logic.owned_key(message))  # type: ignore[arg-type]
    effect = logic.handle(message, rows.get(key), owned, T0, offset)  # type: ignore[arg-type]
    sends: list[Send] = [(COMMANDS, logic.product_of(r).encode(), r) for r in effect.forward]
    if effect.reply is not None:
        sends.append((REPLIES, effect.reply.saga_id.encode(), effect.reply))
    return list(effect.rows), sends


class Driver:
    """The orchestrator's part: reserve each order; once reserved, sell it (approved) or
    release it (payment failed); sometimes release while it is still being reserved (a
    deadline); cancel some approved orders (return what they bought, later, or even before
    the sale); re-send commands now and then, as retries do."""

    def __init__(self, worker: ModelWorker, rng: random.Random, orders: list[list[OrderItem]]):
        self.worker, self.rng = worker, rng
        self.orders = {f"s{i}": items for i, items in enumerate(orders)}
        fates = ["approve", "approve", "release", "early-release", "cancel", "cancel-early"]
        self.fate = {s: rng.choice(fates) for s in self.orders}
        self.read = 0
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.sold: set[str] = set()
        self.released: set[str] = set()
        self.unavailable: set[str] = set()
        self.reserved: set[str] = set()
        self.to_return: list[str] = []  # sold, to be cancelled
        self.returning: set[str] = set()  # cancelled: ReturnProducts sent
        self.returned: set[str] = set()  # ProductsReturned came
        self.again: list[object] = []

    def send(self, command: Any) -> None:
        self.attempts[(command.saga_id, type(command).__name__)] += 1
        self.worker.append(COMMANDS, logic.product_of(command).encode(), command)
        if self.rng.random() < 0.2:
            self.again.append(command)

    def start(self) -> None:
        for saga, items in self.orders.items():
            self.send(ReserveProducts(saga, f"{saga}:verify_products", 1, T0, saga, items))

    def react(self) -> None:
        if self.again and self.rng.random() < 0.3:
            command = self.again.pop(self.rng.randrange(len(self.again)))
            attempt = self.attempts[(command.saga_id, type(command).__name__)] + 1  # type: ignore[attr-defined]
            again = _with_attempt(command, attempt)
            self.worker.append(COMMANDS, logic.product_of(again).encode(), again)
        for saga, fate in self.fate.items():
            if fate == "early-release" and self.rng.random() < 0.05 and saga not in self.released:
                self._release(saga)
        for saga in list(self.to_return):
            if self.rng.random() < 0.3:
                self.to_return.remove(saga)
                self._return(saga)
        replies = self.worker.log(REPLIES)
        while self.read < len(replies):
            _key, reply = replies[self.read]
            self.read += 1
            saga = reply.saga_id  # type: ignore[attr-defined]
            if isinstance(reply, ProductsReserved) and saga not in self.reserved:
                self.reserved.add(saga)
                if self.fate[saga].startswith(("approve", "cancel")):
                    self.sold.add(saga)
                    items = self.orders[saga]
                    if self.fate[saga] == "cancel-early":  # the cancel overtakes the sale
                        self._return(saga)
                    self.send(SellProducts(saga, f"{saga}:sell_products", 1, T0, saga, items))
                    if self.fate[saga] == "cancel" and self.rng.random() < 0.5:
                        self._return(saga)  # at once: the sale and the return adjacent
                    elif self.fate[saga] == "cancel":
                        self.to_return.append(saga)
                else:
                    self._release(saga)
            elif isinstance(reply, ProductsUnavailable):
                self.unavailable.add(saga)
            elif isinstance(reply, ProductsReturned):
                order = saga.removeprefix("cancel-")
                assert order in self.returning, f"{order} returned without being cancelled"
                self.returned.add(order)
            elif isinstance(reply, ProductsReleased):
                assert saga in self.released, f"{saga} released without being asked"

    def _return(self, saga: str) -> None:
        self.returning.add(saga)
        cancel, items = f"cancel-{saga}", self.orders[saga]
        self.send(ReturnProducts(cancel, f"{cancel}:return_products", 1, T0, saga, items))

    def _release(self, saga: str) -> None:
        if saga not in self.released and saga not in self.sold:
            self.released.add(saga)
            items = self.orders[saga]
            self.send(ReleaseProducts(saga, f"{saga}:release_products", 1, T0, saga, items))


def _with_attempt(command: Any, attempt: int) -> Any:
    from dataclasses import replace

    return replace(command, attempt=attempt)


st_order = st.lists(
    st.builds(OrderItem, st.sampled_from(sorted(ALL_PRODUCTS)), st.integers(1, 3)),
    min_size=1,
    max_size=3,
)


@settings(max_examples=400, deadline=None)
@given(
    orders=st.lists(st_order, min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
    crash_every=st.sampled_from([0.0, 0.05, 0.2]),
)
def test_stock_adds_up_after_crashes_and_duplicates(
    orders: list[list[OrderItem]], seed: int, crash_every: float
) -> None:
    rng = random.Random(seed)
    worker = ModelWorker([COMMANDS], handle, rng)

    def restock(product: str) -> None:
        restock = Restock(
            f"r-{product}", product, ALL_PRODUCTS[product], Money(Decimal("1"), "EUR")
        )
        worker.append(COMMANDS, product.encode(), restock)
        if rng.random() < 0.3:
            worker.append(COMMANDS, product.encode(), restock)  # seeded twice

    for product in PRODUCTS:
        restock(product)
    driver = Driver(worker, rng, orders)
    driver.start()
    late_from = rng.randrange(0, 60)
    for step in range(200):
        if step == late_from:
            restock(LATE)
        worker.run(steps=5, crash_every=crash_every)
        driver.react()
    for _ in range(100):  # to the end, without crashes
        worker.drain()
        driver.react()
        if not worker.pending():
            break
    check(worker.memory, driver)


def check(rows: dict[bytes, Any], driver: Driver) -> None:
    stock = {k.decode(): r for k, r in rows.items() if isinstance(r, StockRow)}
    holds = [r for r in rows.values() if isinstance(r, StockHold)]
    assert set(stock) == set(ALL_PRODUCTS)
    bought: Counter[str] = Counter()
    returned: Counter[str] = Counter()
    for saga in driver.sold:
        bought.update({i.product_id: i.quantity for i in merged_items(driver.orders[saga])})
    for saga in driver.returning:
        returned.update({i.product_id: i.quantity for i in merged_items(driver.orders[saga])})
    assert driver.returned == driver.returning  # every cancel was answered
    for product, row in stock.items():
        mine = [h for h in holds if h.product_id == product]
        assert logic.stock_invariant_violations(row, mine) == [], product
        assert (row.restocked, row.reserved, row.sold, row.returned) == (
            ALL_PRODUCTS[product],
            0,
            bought[product],
            returned[product],
        )
    for saga in driver.orders:
        assert not [h for h in holds if h.saga_id == saga and h.status == HELD], saga
        if saga in driver.sold:
            status = RETURNED if saga in driver.returning else SOLD
            for item in merged_items(driver.orders[saga]):
                hold = next(
                    h for h in holds if (h.saga_id, h.product_id) == (saga, item.product_id)
                )
                assert (hold.status, hold.quantity) == (status, item.quantity)
        else:
            assert saga in driver.released or saga in driver.unavailable, saga
            assert not [h for h in holds if h.saga_id == saga and h.status == SOLD], saga
