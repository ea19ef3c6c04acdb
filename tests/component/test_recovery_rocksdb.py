"""RowTable on a real RocksDB store (rocksdict), as a worker runs it: what Faust's
recovery writes from the changelog is what the table answers afterwards, and a write-back
records how far the changelog is applied. No broker: changelog records are handed to the
table the way Faust's recovery hands them over."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faust.types import TP

from messaging.faust_workarounds import processing
from participants.product.app import ProductService
from participants.product.logic import hold_key
from schemas import codec
from schemas import messages as m

EUR = m.Money(Decimal("2.50"), "EUR")
CHANGELOG = "saga-product-stock-changelog"


class Record:
    """A record as Faust's stream and recovery hand it over (what the store reads)."""

    def __init__(self, partition: int, offset: int, key: bytes, value: bytes | None) -> None:
        tp = TP(CHANGELOG, partition)
        self.message = SimpleNamespace(
            topic=tp.topic, partition=partition, offset=offset, tp=tp, key=key, value=value
        )
        self.key, self.value = key, value


def record(partition: int, offset: int, key: bytes, value: bytes | None) -> Any:
    return Record(partition, offset, key, value)


@pytest.fixture
def product(tmp_path: Path) -> Iterator[ProductService]:
    service = ProductService(web_port=6989, store="rocksdb://", datadir=str(tmp_path))
    store: Any = service.stock.data
    store._db_for_partition(0)  # what assigning partition 0 opens
    yield service


def test_a_key_read_while_its_partition_recovers_is_read_again_after(
    product: ProductService,
) -> None:
    stock = product.stock
    recovered = m.StockRow("widget", 7, 3, 0, 10, EUR, applied_offset=41)
    assert stock.row(b"widget") is None  # a web view asks during recovery
    stock.apply_changelog_batch([record(0, 12, b"widget", codec.encode(recovered))])
    assert stock.row(b"widget") == recovered
    assert stock.get(b"widget") == recovered and b"widget" in stock
    stock.apply_changelog_batch([record(0, 13, b"widget", None)])  # a tombstone
    assert stock.row(b"widget") is None


def test_a_restock_after_recovery_keeps_the_units_sagas_hold(product: ProductService) -> None:
    stock = product.stock
    held = m.StockHold("saga-1", "widget", 3, "HELD", 40, -1)
    recovered = m.StockRow("widget", 7, 3, 0, 10, EUR, applied_offset=41)
    stock.row(b"widget")  # read before recovery
    stock.apply_changelog_batch(
        [
            record(0, 12, hold_key("widget", "saga-1"), codec.encode(held)),
            record(0, 13, b"widget", codec.encode(recovered)),
        ]
    )
    restock = m.Restock("r-1", "widget", 5, EUR)
    with processing(record(0, 42, b"widget", codec.encode(restock))):
        product._handle(b"widget", restock, 42)
    assert stock.row(b"widget") == m.StockRow("widget", 12, 3, 0, 15, EUR, applied_offset=42)


class Changelog:
    """Takes changelog records as the producer does and acknowledges each at once, the
    next offset of its partition from `first_offset` on."""

    def __init__(self, first_offset: int) -> None:
        self.sent: list[Any] = []
        self.next = first_offset

    def send(self, topic: str, key: bytes, value: bytes, **kwargs: Any) -> None:
        self.sent.append((topic, key, kwargs["partition"]))
        offset, self.next = self.next, self.next + 1
        if kwargs["on_delivery"] is not None:
            kwargs["on_delivery"]((kwargs["partition"], offset))


def test_a_write_back_reaches_the_store_and_records_the_changelog_offset(
    product: ProductService,
) -> None:
    stock = product.stock
    row = m.StockRow("widget", 7, 0, 0, 7, EUR, applied_offset=3)
    with processing(record(0, 3, b"widget", b"")):
        stock[b"widget"] = row
    changes = stock.take_changes()
    changelog = Changelog(first_offset=57)
    assert stock.send_changes(changes, cast(Any, changelog)) == 1
    assert changelog.sent == [(CHANGELOG, b"widget", 0)]
    store: Any = stock.data
    assert store._db_for_partition(0).get(b"widget") is None  # not before write_back
    assert store.persisted_offset(TP(CHANGELOG, 0)) is None
    stock.write_back(changes)
    assert codec.decode(store._db_for_partition(0).get(b"widget")) == row
    assert store.persisted_offset(TP(CHANGELOG, 0)) == 57
    stock.forget_cached_rows()
    assert stock.row(b"widget") == row  # read from RocksDB
    store._dbs_for_actives = lambda: [store._db_for_partition(0)]  # partition 0 assigned
    # Faust keeps the changelog offset among the rows: the listings leave it out.
    assert list(stock.items()) == [(b"widget", row)]
    assert list(stock.scan()) == [(b"widget", row)]


def test_the_first_record_of_a_changelog_partition_counts_as_applied(
    product: ProductService,
) -> None:
    # Recorded as offset 0: a restart reads the changelog from offset 1 on, neither
    # skipping the record at 1 nor applying the first again.
    stock = product.stock
    with processing(record(0, 0, b"widget", b"")):
        stock[b"widget"] = m.StockRow("widget", 7, 0, 0, 7, EUR, applied_offset=0)
    changes = stock.take_changes()
    stock.send_changes(changes, cast(Any, Changelog(first_offset=0)))
    stock.write_back(changes)
    store: Any = stock.data
    assert store.persisted_offset(TP(CHANGELOG, 0)) == 0
