"""RowTable (messaging.tables) and the commit hook (messaging.faust_app.flush_before_commit):
the changelog is batched, last value per key in the order of last writes, and sent only
after the outputs of the records that wrote the rows are acknowledged. No broker."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from messaging.faust_app import (
    STOP_FLUSH_SECONDS,
    create_app,
    flush_before_commit,
    processing,
    typed_table,
)
from messaging.tables import RowTable
from schemas import codec
from schemas import messages as m

EUR = m.Money(amount=Decimal("1.00"), currency="EUR")


def stock(product: str, available: int) -> m.StockRow:
    return m.StockRow(product, available, 0, 0, available, EUR)


class Event:
    """What the table reads of Faust's current event: the record's partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition, topic="t", offset=0)


def event(partition: int) -> Any:
    return Event(partition)


class FakeProducer:
    """Records what is sent; deliveries resolve when the test says so."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.flushes = 0
        self.pending: list[asyncio.Future[None]] = []

    def send(
        self, topic: str, key: Any, value: Any, *, partition: int | None = None, **_: Any
    ) -> asyncio.Future[tuple[int, int]]:
        self.sent.append((topic, key, value, partition))
        self.log.append(f"send {topic} {key!r}")
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        future.set_result((partition or 0, len(self.sent)))
        return future

    async def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        self.log.append("flush")


@pytest.fixture
def table() -> RowTable:
    app = create_app("saga-product", web_port=6998, store="memory://")
    return typed_table(app, "stock")


def test_a_write_is_read_back_at_once_and_staged_for_the_changelog(table: RowTable) -> None:
    with processing(event(2)):
        table[b"widget"] = stock("widget", 5)
        assert table.row(b"widget") == stock("widget", 5)
        assert table.row(b"gizmo") is None
    assert table.unsent_changes == 1
    assert table.take_changes() == {2: {b"widget": codec.encode(stock("widget", 5))}}
    assert table.unsent_changes == 0


def test_changes_keep_the_last_value_per_key_in_the_order_of_last_writes(table: RowTable) -> None:
    with processing(event(1)):
        table[b"a"] = stock("a", 1)
        table[b"b"] = stock("b", 1)
        table[b"a"] = stock("a", 2)  # written again: its newest value, after b
        del table[b"b"]
    with processing(event(3)):
        table[b"c"] = stock("c", 1)
    changes = table.take_changes()
    assert list(changes) == [1, 3]
    assert list(changes[1].items()) == [(b"a", codec.encode(stock("a", 2))), (b"b", None)]
    assert table.row(b"b") is None


def test_a_write_outside_a_record_is_refused(table: RowTable) -> None:
    with pytest.raises(RuntimeError, match="outside the processing of a record"):
        table[b"a"] = stock("a", 1)


async def test_send_changes_writes_each_partition_of_the_changelog(table: RowTable) -> None:
    with processing(event(0)):
        table[b"a"] = stock("a", 1)
    with processing(event(3)):
        table[b"b"] = stock("b", 1)
    producer = FakeProducer()
    assert table.send_changes(table.take_changes(), producer) == 2  # type: ignore[arg-type]
    changelog = "saga-product-stock-changelog"
    assert [(t, k, p) for t, k, _v, p in producer.sent] == [
        (changelog, b"a", 0),
        (changelog, b"b", 3),
    ]


async def test_commit_flush_sends_outputs_then_rows_then_lets_faust_commit() -> None:
    app = create_app("saga-product", web_port=6997, store="memory://")
    table = typed_table(app, "stock")
    producer = FakeProducer()
    log = producer.log
    faust_producer: Any = app.producer

    async def faust_flush() -> None:
        log.append("faust flush")

    faust_producer.flush = faust_flush
    flush_before_commit(app, producer)  # type: ignore[arg-type]
    with processing(event(1)):
        table[b"a"] = stock("a", 1)
    await app.producer.flush()
    assert log == ["flush", "send saga-product-stock-changelog b'a'", "flush", "faust flush"]
    log.clear()
    await app.producer.flush()  # nothing changed since: no changelog records
    assert log == ["flush", "faust flush"]


async def test_commit_flush_of_a_stopping_worker_gives_up_without_committing() -> None:
    # The broker may be away while the worker stops: waiting for ever would end in the
    # stop watchdog's kill. Giving up must not let Faust commit the offsets.
    app = create_app("saga-product", web_port=6996, store="memory://")
    producer = FakeProducer()
    timeouts: list[float | None] = []

    async def never_delivered(timeout: float | None = None) -> None:
        timeouts.append(timeout)
        raise TimeoutError

    producer.flush = never_delivered  # type: ignore[method-assign]
    faust_producer: Any = app.producer
    faust_flushes: list[str] = []

    async def faust_flush() -> None:
        faust_flushes.append("faust flush")

    faust_producer.flush = faust_flush
    flush_before_commit(app, producer)  # type: ignore[arg-type]
    app._stopped.set()  # what stopping the worker sets
    assert app.should_stop
    with pytest.raises(TimeoutError):
        await app.producer.flush()
    assert timeouts == [STOP_FLUSH_SECONDS] and faust_flushes == []
