"""Rows written by earlier releases (schemas/state.py): every released row schema is
classified, those read exactly lose nothing, and those refused are refused wherever a
row is read, with a message that names the row and what to do. The rows here are
encoded with the released schemas of schemas/history, as the earlier release wrote them."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest
from click.testing import CliRunner
from faust.types import TP

from cli import up_cmd, worker_cmd
from messaging import exit_codes, tables
from messaging.faust_app import create_app, stop_worker, typed_table
from participants.payment import logic as payment
from participants.product import logic as product
from schemas import codec
from schemas import messages as m
from schemas.state import (
    READ_EXACTLY,
    REFUSED,
    ROW_TYPES,
    StateFromEarlierRelease,
    UnreadableState,
    refused_schema,
)

HISTORY = codec.HISTORY_DIR
EUR = {"amount": Decimal("2.50"), "currency": "EUR"}


def released(name: str) -> dict[str, Any]:
    return json.loads((HISTORY / f"{name}.avsc").read_text())


def encode_released(name: str, record: dict[str, Any]) -> bytes:
    """`record` as the release that had schema `name` (e.g. "StockRow.v2") wrote it."""
    schema = fastavro.parse_schema(released(name))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    return codec.MAGIC + codec.released_fingerprints()[name] + body.getvalue()


def row_schemas_in_history() -> set[str]:
    row_names = {cls.__name__ for cls in ROW_TYPES}
    return {
        path.name.removesuffix(".avsc")
        for path in HISTORY.glob("*.avsc")
        if path.name.split(".", 1)[0] in row_names
    }


def test_every_released_row_schema_is_read_exactly_or_refused() -> None:
    # The rule for a release that changes a row (README, "Upgrading"): its released
    # schema is classified here, with a reason, and tested from rows it encoded.
    assert row_schemas_in_history() == set(READ_EXACTLY) | set(REFUSED)
    assert not set(READ_EXACTLY) & set(REFUSED)


@pytest.mark.parametrize("name", sorted(READ_EXACTLY))
def test_a_row_schema_read_exactly_drops_no_field(name: str) -> None:
    cls = next(c for c in ROW_TYPES if c.__name__ == name.split(".")[0])
    old = {f["name"]: f for f in released(name)["fields"]}
    current = {f["name"]: f for f in codec.schema_of(cls)["fields"]}
    assert set(old) <= set(current), f"{name} held fields the current row drops"
    for field in set(current) - set(old):
        assert "default" in current[field], f"{cls.__name__}.{field} has no default"


STOCK_V2 = {
    "product_id": "widget",
    "available": 7,
    "reserved": 3,
    "sold": 0,
    "restocked": 10,
    "unit_price": EUR,
    "reservations": {"saga-1": 3},
    "settled": {},
    "restock_ids": ["seed:1:widget"],
    "applied_offset": 812,
}
ACCOUNT_V1 = {
    "customer_id": "alice",
    "balance": {"amount": Decimal("90.00"), "currency": "EUR"},
    "topped_up": {"amount": Decimal("100.00"), "currency": "EUR"},
    "captured_archived": {"amount": Decimal("0.00"), "currency": "EUR"},
    "payments": [
        {
            "saga_id": "saga-1",
            "amount": {"amount": Decimal("10.00"), "currency": "EUR"},
            "status": "AUTHORIZED",
            "reason": None,
        }
    ],
    "top_up_ids": ["seed:1:alice"],
}
STOCK_V1 = {k: v for k, v in STOCK_V2.items() if k != "applied_offset"}
EARLIER_ROWS: dict[str, dict[str, Any]] = {
    "StockRow.v1": STOCK_V1,
    "StockRow.v2": STOCK_V2,
    "Account.v1": ACCOUNT_V1,
}


def test_every_refused_row_schema_has_a_row_here() -> None:
    assert set(EARLIER_ROWS) == set(REFUSED)


@pytest.mark.parametrize("name", sorted(EARLIER_ROWS))
def test_a_refused_row_is_recognised_from_its_header(name: str) -> None:
    raw = encode_released(name, EARLIER_ROWS[name])
    assert refused_schema(raw) == name
    codec.decode(raw)  # the codec alone would read it, losing what it held


@pytest.mark.parametrize(
    ("key_of", "owner", "item", "stored"),
    [
        (product.hold_key, "widget", "saga-1", b"widget\x00hold\x00saga-1"),
        (product.restock_key, "widget", "r-1", b"widget\x00restock\x00r-1"),
        (payment.payment_key, "alice", "saga-1", b"alice\x00payment\x00saga-1"),
        (payment.top_up_key, "alice", "t-1", b"alice\x00top-up\x00t-1"),
    ],
)
def test_rows_are_kept_under_the_keys_earlier_releases_wrote(
    key_of: Any, owner: str, item: str, stored: bytes
) -> None:
    # A row looked for under another key is a row lost: a re-sent reserve would hold
    # twice, a re-sent authorize charge twice, a seed published again credit twice.
    assert key_of(owner, item) == stored


def test_a_current_row_is_not_refused() -> None:
    row = codec.decode(encode_released("StockRow.v2", STOCK_V2))
    assert refused_schema(codec.encode(row)) is None


class Event:
    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition, topic="t", offset=0)


@pytest.fixture
def stock(tmp_path: Path) -> Any:
    app = create_app("saga-product", web_port=6988, store="rocksdb://", datadir=str(tmp_path))
    table = typed_table(app, "stock")
    store: Any = table.data
    db = store._db_for_partition(2)
    db[b"widget"] = encode_released("StockRow.v2", STOCK_V2)  # as the old release left it
    db[b"gizmo"] = codec.encode(codec.decode(encode_released("StockRow.v2", STOCK_V2)))
    store._dbs_for_actives = lambda: [db]  # partition 2 is assigned to this worker
    return table


def test_reading_a_refused_row_raises_with_what_to_do(stock: Any) -> None:
    with pytest.raises(StateFromEarlierRelease) as refused:
        stock.row(b"widget")
    message = str(refused.value)
    assert "table stock holds a StockRow.v2 row (key b'widget')" in message
    assert "product.stock" in message and "README, 'Upgrading'" in message
    for read in (lambda: list(stock.items()), lambda: list(stock.scan())):
        with pytest.raises(StateFromEarlierRelease, match=REFUSED_WIDGET):
            read()
    assert stock.row(b"gizmo") is not None  # rows of this release read as ever


REFUSED_WIDGET = r"^table stock holds a StockRow\.v2 row \(key b'widget'\), "


def test_a_store_with_a_refused_row_is_refused_once_recovered(stock: Any) -> None:
    with pytest.raises(StateFromEarlierRelease, match=REFUSED_WIDGET):
        stock.check_rows({0, 1, 2, 3})
    stock.check_rows({0, 1, 3})  # the partitions without one pass


def test_a_store_with_a_row_no_schema_reads_is_refused_once_recovered(stock: Any) -> None:
    """A row of a later release (or an unreleased build): a fingerprint of no schema here."""
    db = stock.data._db_for_partition(1)
    good = codec.encode(codec.decode(encode_released("StockRow.v2", STOCK_V2)))
    db[b"later"] = good[:2] + bytes(8) + good[10:]
    with pytest.raises(UnreadableState) as refused:
        stock.check_rows({1})
    message = str(refused.value)
    assert message.startswith("table stock holds a row this release cannot read (key b'later'")
    assert "fingerprint 0000000000000000" in message and "README, 'Upgrading'" in message
    assert codec.header_problem(good) is None
    del db[b"later"]
    stock.check_rows({1})


def test_rows_after_faust_s_offset_key_are_checked_too(stock: Any) -> None:
    """Faust keeps how far it applied the changelog among a partition's rows; it is
    skipped, not taken for the end of the partition (its key sorts before most rows)."""
    db = stock.data._db_for_partition(3)
    db[tables.FAUST_OFFSET_KEY] = b"41"
    db[b"zz-later"] = encode_released("StockRow.v2", STOCK_V2)
    assert next(key for key, _ in db.items()) == tables.FAUST_OFFSET_KEY
    with pytest.raises(StateFromEarlierRelease, match=r"\(key b'zz-later'\)"):
        stock.check_rows({3})


async def test_a_refused_row_stops_the_worker_instead_of_dead_lettering(stock: Any) -> None:
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    app = SimpleNamespace(crash=crash)
    error = StateFromEarlierRelease("stock", b"widget", "StockRow.v2")
    await stop_worker(app, error)  # type: ignore[arg-type]
    assert crashed == [error]


def test_the_worker_exits_78_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = StateFromEarlierRelease("accounts", b"alice", "Account.v1")
    app = SimpleNamespace(crash_reason=refused)

    class Worker:
        def execute_from_commandline(self) -> None:
            raise SystemExit(1)  # what Faust's worker does after a crash

    monkeypatch.setattr(
        worker_cmd, "build_service", lambda *_args, **_options: SimpleNamespace(app=app)
    )
    monkeypatch.setattr("messaging.faust_workarounds.quiet_worker", lambda *_: Worker())
    monkeypatch.setattr(
        "messaging.faust_workarounds.discard_tables_after_crash", lambda _app: False
    )
    monkeypatch.setattr("messaging.faust_workarounds.exit_if_stop_hangs", lambda _app: None)
    monkeypatch.setattr(worker_cmd, "_topics_problem", lambda: None)  # no broker here
    result = CliRunner().invoke(worker_cmd.worker, ["payment"])
    assert result.exit_code == exit_codes.STATE_REFUSED
    assert "payment: refusing to run: table accounts holds a Account.v1 row" in result.output


def test_saga_up_does_not_restart_a_worker_that_refuses_its_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = SimpleNamespace(name="product", process=SimpleNamespace(returncode=78))
    restarted: list[str] = []
    workers: Any = SimpleNamespace(dead=lambda: [worker], restart=restarted.append)
    with pytest.raises(RuntimeError, match="product refuses to run"):
        up_cmd.watch(workers)
    assert restarted == []


async def test_recovery_of_a_partition_holding_a_refused_row_stops_the_worker(
    stock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    monkeypatch.setattr(stock.app, "crash", crash)
    changelog = stock.changelog_topic.get_topic_name()
    await stock.on_recovery_completed({TP(changelog, 0)}, set())
    assert crashed == []  # a partition of this release's rows only
    await stock.on_recovery_completed({TP(changelog, 0), TP(changelog, 2)}, set())
    assert [type(e) for e in crashed] == [StateFromEarlierRelease]


async def test_a_partition_is_checked_once_each_time_it_is_assigned(
    stock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checking reads every row of the partition's store: not at every recovery.
    changelog = stock.changelog_topic.get_topic_name()
    p0, p1 = TP(changelog, 0), TP(changelog, 1)
    price = m.Money(Decimal("2.50"), "EUR")
    rows = {p: codec.encode(m.StockRow(f"p{p}", p, 0, 0, p, price)) for p in (0, 1)}
    for partition, row in rows.items():
        stock.data._db_for_partition(partition)[f"p{partition}".encode()] = row
    read: list[bytes] = []
    refused = tables.refused_schema

    def reading(raw: bytes) -> str | None:
        read.append(raw)
        return refused(raw)

    monkeypatch.setattr(tables, "refused_schema", reading)
    await stock.on_recovery_completed({p0}, set())
    await stock.on_recovery_completed({p1}, set())
    await stock.on_recovery_completed({p0, p1}, set())
    assert read == [rows[0], rows[1]]
    # The store is told of each rebalance (here it keeps its databases open: RocksDB
    # would reopen partition 0's, which another worker may have rebuilt meanwhile).
    rebalances: list[tuple[Any, ...]] = []

    async def store_rebalance(*args: Any) -> None:
        rebalances.append(args)

    monkeypatch.setattr(stock.data, "on_rebalance", store_rebalance)
    await stock.on_rebalance({p1}, {p0}, set(), 2)  # partition 0 moved to another worker
    await stock.on_rebalance({p0, p1}, set(), {p0}, 3)  # and came back: checked again
    assert rebalances == [({p1}, {p0}, set(), 2), ({p0, p1}, set(), {p0}, 3)]
    await stock.on_recovery_completed({p0, p1}, set())
    assert read == [rows[0], rows[1], rows[0]]
