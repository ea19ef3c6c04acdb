"""RowTable (messaging.tables) and the commit hook (messaging.faust_app.flush_before_commit):
the changelog is batched, last value per key in the order of last writes, and sent only
after the outputs of the records that wrote the rows are acknowledged. No broker."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from messaging.faust_app import (
    STOP_FLUSH_SECONDS,
    create_app,
    flush_before_commit,
    typed_table,
)
from messaging.faust_workarounds import processing
from messaging.tables import RowTable
from participants.product.logic import hold_key
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
    assert table.unwritten_rows == 1
    changes = table.take_changes()
    assert changes == {2: {b"widget": codec.encode(stock("widget", 5))}}
    assert table.unwritten_rows == 1  # taken, not yet written back
    assert table.row(b"widget") == stock("widget", 5) and b"widget" not in table.data
    table.write_back(changes)
    assert table.unwritten_rows == 0 and table.data[b"widget"] == stock("widget", 5)


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


def test_a_rewritten_aggregate_row_goes_to_the_changelog_after_every_row_written_before_it(
    table: RowTable,
) -> None:
    # Two records each write a saga's hold, then the product's row. If the product row
    # kept its first place, a changelog cut after it would hold the second record's
    # product row (its offset: "applied") without the second hold: a replay would skip
    # the record and the hold would be lost.
    with processing(event(0)):
        table[b"widget\x00hold\x00s1"] = stock("hold-1", 1)
        table[b"widget"] = stock("widget", 9)
        table[b"widget\x00hold\x00s2"] = stock("hold-2", 1)
        table[b"widget"] = stock("widget", 8)
    assert list(table.take_changes()[0]) == [
        b"widget\x00hold\x00s1",
        b"widget\x00hold\x00s2",
        b"widget",
    ]


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
    assert producer.sent == [
        (changelog, b"a", codec.encode(stock("a", 1)), 0),
        (changelog, b"b", codec.encode(stock("b", 1)), 3),
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


async def test_a_stopping_worker_gives_its_changelog_records_a_bounded_time_too() -> None:
    app = create_app("saga-product", web_port=6985, store="memory://")
    table = typed_table(app, "stock")
    producer = FakeProducer()
    timeouts: list[float | None] = []

    async def changelog_never_acknowledged(timeout: float | None = None) -> None:
        timeouts.append(timeout)
        if len(timeouts) == 2:  # the outputs were acknowledged, the changelog is not
            raise TimeoutError

    producer.flush = changelog_never_acknowledged  # type: ignore[method-assign]
    faust_producer: Any = app.producer
    faust_flushes: list[str] = []

    async def faust_flush() -> None:
        faust_flushes.append("faust flush")

    faust_producer.flush = faust_flush
    flush_before_commit(app, producer)  # type: ignore[arg-type]
    with processing(event(1)):
        table[b"a"] = stock("a", 1)
    app._stopped.set()
    with pytest.raises(TimeoutError):
        await app.producer.flush()
    assert timeouts == [STOP_FLUSH_SECONDS, STOP_FLUSH_SECONDS] and faust_flushes == []
    assert table.data == {}  # nothing written back


@pytest.mark.parametrize("rebalance", ["on_partitions_revoked", "on_partitions_assigned"])
async def test_rows_read_before_a_rebalance_are_read_again_after_it(rebalance: str) -> None:
    app = create_app("saga-product", web_port=6984, store="memory://")
    table = typed_table(app, "stock")
    flush_before_commit(app, FakeProducer())  # type: ignore[arg-type]
    table.data[b"a"] = stock("a", 1)
    assert table.row(b"a") == stock("a", 1)
    # While its partition was away, another worker changed the row, and the store
    # has its new value (restored from the changelog).
    table.data[b"a"] = stock("a", 2)
    await getattr(app, rebalance).send(set())
    assert table.row(b"a") == stock("a", 2)


class GatedProducer(FakeProducer):
    """A flush returns only when the test opens its gate (the broker acknowledges)."""

    def __init__(self) -> None:
        super().__init__()
        self.gates: list[asyncio.Event] = []
        self.failure: BaseException | None = None

    async def flush(self, timeout: float | None = None) -> None:
        await super().flush(timeout)
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.failure is not None:
            raise self.failure

    async def acknowledge(self, flushes: int) -> None:
        """Wait until `flushes` flushes were asked for, and let the last one return."""
        for _ in range(100):
            if len(self.gates) >= flushes:
                break
            await asyncio.sleep(0)
        assert len(self.gates) == flushes, self.log
        self.gates[-1].set()
        for _ in range(5):
            await asyncio.sleep(0)


def committing_app(web_port: int) -> tuple[Any, RowTable, GatedProducer]:
    app = create_app("saga-product", web_port=web_port, store="memory://")
    table = typed_table(app, "stock")
    producer = GatedProducer()
    faust_producer: Any = app.producer

    async def faust_flush() -> None:
        producer.log.append("faust flush")

    faust_producer.flush = faust_flush
    flush_before_commit(app, producer)  # type: ignore[arg-type]
    return app, table, producer


async def test_the_store_gets_a_row_only_once_its_outputs_and_changelog_record_are_in_kafka() -> (
    None
):
    app, table, producer = committing_app(6995)
    with processing(event(1)):
        table[b"a"] = stock("a", 1)
    commit = asyncio.ensure_future(app.producer.flush())
    await producer.acknowledge(1)  # the outputs of the records
    assert b"a" not in table.data and table.row(b"a") == stock("a", 1)
    assert producer.log == ["flush", "send saga-product-stock-changelog b'a'", "flush"]
    await producer.acknowledge(2)  # the changelog record
    await commit
    assert table.data[b"a"] == stock("a", 1) and table.unwritten_rows == 0
    assert producer.log[-1] == "faust flush"


async def test_rows_written_during_a_flush_wait_for_the_next_one() -> None:
    app, table, producer = committing_app(6994)
    with processing(event(1)):
        table[b"a"] = stock("a", 1)
    commit = asyncio.ensure_future(app.producer.flush())
    await producer.acknowledge(1)
    with processing(event(1)):  # a record processed while the flush waits
        table[b"b"] = stock("b", 1)
        table[b"a"] = stock("a", 2)
    await producer.acknowledge(2)
    await commit
    # Its outputs were not part of the flush: its rows stay out of the store.
    assert table.data == {b"a": stock("a", 1)}
    assert table.row(b"a") == stock("a", 2) and table.unwritten_rows == 2
    commit = asyncio.ensure_future(app.producer.flush())
    await producer.acknowledge(3)
    await producer.acknowledge(4)
    await commit
    assert table.data == {b"a": stock("a", 2), b"b": stock("b", 1)}


async def test_a_flush_that_fails_writes_nothing_and_the_next_takes_its_rows_again() -> None:
    app, table, producer = committing_app(6993)
    with processing(event(1)):
        table[b"hold"] = stock("hold", 1)
        table[b"a"] = stock("a", 1)
    producer.failure = TimeoutError("broker away")
    commit = asyncio.ensure_future(app.producer.flush())
    await producer.acknowledge(1)
    with pytest.raises(TimeoutError):
        await commit
    assert table.data == {} and "faust flush" not in producer.log  # nothing committed
    assert table.row(b"a") == stock("a", 1) and table.unwritten_rows == 2
    producer.failure = None
    with processing(event(1)):
        table[b"hold-2"] = stock("hold-2", 1)
        table[b"a"] = stock("a", 2)
    changes = table.take_changes()
    assert list(changes[1]) == [b"hold", b"hold-2", b"a"]  # older first, the newest last
    assert changes[1][b"a"] == codec.encode(stock("a", 2))


async def test_flushes_run_one_at_a_time() -> None:
    app, table, producer = committing_app(6992)
    with processing(event(1)):
        table[b"a"] = stock("a", 1)
    first = asyncio.ensure_future(app.producer.flush())
    second = asyncio.ensure_future(app.producer.flush())  # e.g. a rebalance during a commit
    await producer.acknowledge(1)
    # The second waits until the first wrote its rows back: it would otherwise take the
    # same rows again, and the two would write them back in either order.
    assert producer.log == ["flush", "send saga-product-stock-changelog b'a'", "flush"]
    await producer.acknowledge(2)
    await first
    await producer.acknowledge(3)
    await asyncio.wait_for(second, 5)  # nothing left to send: no changelog flush to wait for
    assert producer.log == [
        "flush",
        "send saga-product-stock-changelog b'a'",
        "flush",
        "faust flush",
        "flush",
        "faust flush",
    ]


# ---- reading: the memory store (tests) and RocksDB (workers) answer alike ----


@pytest.fixture(params=["memory", "rocksdb"])
def any_table(request: pytest.FixtureRequest, tmp_path: Path) -> RowTable:
    store = f"{request.param}://"
    app = create_app("saga-product", web_port=6987, store=store, datadir=str(tmp_path))
    table = typed_table(app, "stock")
    data: Any = table.data
    if request.param == "rocksdb":  # partitions 0 and 1 are assigned to this worker
        data._dbs_for_actives = lambda: [data._db_for_partition(p) for p in (0, 1)]
    return table


def hold(product: str, saga: str, quantity: int = 1) -> m.StockHold:
    return m.StockHold(saga, product, quantity, "HELD", 0, -1)


def store_rows(table: RowTable, partition: int, rows: dict[bytes, Any]) -> None:
    """Write `rows` as a commit would (changelog acknowledged, then the store), and
    forget what was read: the next reads come from the store."""
    with processing(event(partition)):
        for key, row in rows.items():
            table[key] = row
    table.write_back(table.take_changes())
    table.forget_cached_rows()


def first(rows: Iterable[tuple[bytes, Any]], at_most: int = 50) -> list[bytes]:
    """The keys of the first rows listed (at most `at_most`: a listing must end)."""
    return [key for key, _row in itertools.islice(rows, at_most)]


def products(table: RowTable) -> None:
    """Products p1, p12, p2 (partition 0), p15 and "q 1" (partition 1: ids may hold
    spaces), most with holds, and changes not written back yet: p3 and its hold added,
    p2 deleted."""
    store_rows(
        table,
        0,
        {
            b"p1": stock("p1", 1),
            hold_key("p1", "s1"): hold("p1", "s1"),
            hold_key("p1", "s2"): hold("p1", "s2"),
            b"p12": stock("p12", 1),
            b"p2": stock("p2", 1),
            hold_key("p2", "s1"): hold("p2", "s1"),
        },
    )
    store_rows(
        table,
        1,
        {
            b"p15": stock("p15", 1),
            b"q 1": stock("q 1", 1),
            hold_key("q 1", "s1"): hold("q 1", "s1"),
        },
    )
    with processing(event(0)):
        table[b"p3"] = stock("p3", 1)
        table[hold_key("p3", "s3")] = hold("p3", "s3")
        del table[b"p2"]


def test_scan_lists_every_partitions_rows_with_a_prefix_but_not_the_rows_they_own(
    any_table: RowTable,
) -> None:
    products(any_table)
    assert first(any_table.scan()) == [b"p1", b"p12", b"p15", b"q 1", b"p3"]
    assert first(any_table.scan(b"p1")) == [b"p1", b"p12", b"p15"]
    assert first(any_table.scan(b"p")) == [b"p1", b"p12", b"p15", b"p3"]
    assert dict(any_table.scan(b"q"))[b"q 1"] == stock("q 1", 1)


def test_items_lists_every_row_the_owned_ones_too(any_table: RowTable) -> None:
    products(any_table)
    assert sorted(first(any_table.items())) == sorted(
        [
            b"p1",
            hold_key("p1", "s1"),
            hold_key("p1", "s2"),
            b"p12",
            hold_key("p2", "s1"),  # the product deleted, its hold not
            b"p15",
            b"q 1",
            hold_key("q 1", "s1"),
            b"p3",
            hold_key("p3", "s3"),
        ]
    )


def test_owned_lists_an_owners_rows_of_one_kind_in_key_order_up_to_the_limit(
    any_table: RowTable,
) -> None:
    holds = {hold_key("p1", f"s{i}"): hold("p1", f"s{i}") for i in range(1, 6)}
    store_rows(any_table, 0, {**holds, b"p12\x00hold\x00s1": hold("p12", "s1")})
    store_rows(any_table, 0, {b"p1\x00restock\x00r1": m.CommandApplied("r1", 0)})
    with processing(event(0)):
        any_table[hold_key("p1", "s9")] = hold("p1", "s9")  # not written back yet
        any_table[hold_key("p1", "s3")] = hold("p1", "s3", quantity=7)
    owned = any_table.owned
    assert owned(b"p1", "hold", 3) == [hold("p1", "s1"), hold("p1", "s2"), hold("p1", "s3", 7)]
    assert [h.saga_id for h in owned(b"p1", "hold", 10)] == ["s1", "s2", "s3", "s4", "s5", "s9"]
    assert owned(b"p1", "hold", 10, item="s3") == [hold("p1", "s3", 7)]
    assert owned(b"p1", "hold", 10, item="s7") == []
    assert owned(b"p1", "restock", 10) == [m.CommandApplied("r1", 0)]
    assert owned(b"p12", "hold", 10) == [hold("p12", "s1")]


def test_owned_reads_no_more_rows_of_the_store_than_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A product's holds are never pruned: a view of a few must not read them all.
    app = create_app("saga-product", web_port=6986, store="rocksdb://", datadir=str(tmp_path))
    table = typed_table(app, "stock")
    data: Any = table.data
    data._dbs_for_actives = lambda: [data._db_for_partition(0)]
    store_rows(table, 0, {hold_key("p1", f"s{i}"): hold("p1", f"s{i}") for i in range(20)})
    decoded: list[bytes] = []
    decode = codec.decode

    def counted(raw: bytes) -> Any:
        decoded.append(raw)
        return decode(raw)

    monkeypatch.setattr(codec, "decode", counted)
    assert len(table.owned(b"p1", "hold", 3)) == 3
    assert len(decoded) == 3


def test_a_table_reads_like_a_mapping(any_table: RowTable) -> None:
    store_rows(any_table, 0, {b"p1": stock("p1", 1)})
    assert any_table.get(b"p1") == stock("p1", 1) and b"p1" in any_table
    assert any_table.get(b"p2") is None and any_table.get(b"p2", "none") == "none"
    assert b"p2" not in any_table and "p1" not in any_table  # keys are bytes
    with pytest.raises(KeyError) as missing:
        any_table[b"p2"]
    assert missing.value.args == (b"p2",)


def test_a_row_read_before_a_change_reads_as_changed_after_its_write_back(
    any_table: RowTable,
) -> None:
    store_rows(any_table, 0, {b"p1": stock("p1", 1)})
    assert any_table.row(b"p1") == stock("p1", 1)  # read (and kept) before the change
    with processing(event(0)):
        any_table[b"p1"] = stock("p1", 2)
    any_table.write_back(any_table.take_changes())
    assert any_table.row(b"p1") == stock("p1", 2)
    any_table.forget_cached_rows()
    assert any_table.row(b"p1") == stock("p1", 2)  # from the store


def test_a_deleted_row_is_gone_from_the_store_once_written_back(any_table: RowTable) -> None:
    store_rows(any_table, 0, {b"p1": stock("p1", 1), b"p2": stock("p2", 1)})
    with processing(event(0)):
        del any_table[b"p1"]
        any_table[b"p3"] = stock("p3", 1)
        del any_table[b"p3"]  # written and deleted before the write-back: never stored
    any_table.write_back(any_table.take_changes())
    any_table.forget_cached_rows()
    assert any_table.row(b"p1") is None and any_table.row(b"p3") is None
    assert first(any_table.scan()) == [b"p2"]
