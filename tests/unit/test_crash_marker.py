"""The crash marker (messaging.faust_workarounds): a worker trusts its local stores at start only
after a stop that wrote every row back and had every output acknowledged; otherwise it
discards them and restores the tables from the changelogs. No broker."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from click.testing import CliRunner

from cli import worker_cmd
from messaging import exit_codes
from messaging.faust_app import create_app, typed_table
from messaging.faust_workarounds import (
    CLEAN_SHUTDOWN_MARKER,
    discard_tables_after_crash,
    mark_clean_shutdown,
    processing,
    unclean_stop,
)
from messaging.producer import producer_of
from schemas import messages as m

EUR = m.Money(amount=Decimal("1.00"), currency="EUR")


class Event:
    """What the table reads of Faust's current event: the record's partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition, topic="t", offset=0)


@pytest.fixture
def app(tmp_path: Path) -> Any:
    app = create_app("saga-product", web_port=6990, store="memory://", datadir=str(tmp_path))
    typed_table(app, "stock")
    return app


def stored_tables(app: Any) -> Path:
    tables = Path(app.conf.tabledir)
    tables.mkdir(parents=True)
    (tables / "stock-0.db").write_text("rows")
    return tables


def test_stores_are_discarded_after_a_stop_that_left_no_marker(app: Any) -> None:
    tables = stored_tables(app)
    assert discard_tables_after_crash(app) is True
    assert not tables.exists()


def test_stores_are_kept_after_a_clean_stop_and_the_marker_is_used_once(app: Any) -> None:
    tables = stored_tables(app)
    assert mark_clean_shutdown(app) is True
    assert discard_tables_after_crash(app) is False
    assert (tables / "stock-0.db").exists()
    # From the start on, a crash is not a clean stop.
    assert not (Path(app.conf.datadir) / CLEAN_SHUTDOWN_MARKER).exists()
    assert discard_tables_after_crash(app) is True


def test_a_stop_with_rows_not_written_back_is_not_clean(app: Any) -> None:
    table = app.tables["stock"]
    with processing(cast(Any, Event(0))):
        table[b"widget"] = m.StockRow("widget", 1, 0, 0, 1, EUR)
    assert unclean_stop(app) == "1 row(s) of table stock were not written back"
    table.take_changes()  # taken for the changelog, never acknowledged
    assert unclean_stop(app) is not None
    assert mark_clean_shutdown(app) is False
    assert not (Path(app.conf.datadir) / CLEAN_SHUTDOWN_MARKER).exists()


async def test_a_stop_with_outputs_not_acknowledged_is_not_clean(app: Any) -> None:
    producer = producer_of(app)
    producer.send("saga.replies", b"k", b"v")  # never handed to a broker here
    assert unclean_stop(app) == "1 record(s) sent were not acknowledged"
    assert mark_clean_shutdown(app) is False


def test_a_stop_after_the_producer_failed_is_not_clean(app: Any) -> None:
    producer_of(app).failure = RuntimeError("fenced")
    assert unclean_stop(app) == "the producer failed: fenced"
    assert mark_clean_shutdown(app) is False


def test_a_stop_with_everything_in_kafka_is_clean(app: Any) -> None:
    assert unclean_stop(app) is None


@pytest.mark.parametrize("clean", [True, False])
def test_the_worker_exits_non_zero_and_leaves_no_marker_after_an_unclean_stop(
    app: Any, monkeypatch: pytest.MonkeyPatch, clean: bool
) -> None:
    class Worker:
        def execute_from_commandline(self) -> None:
            raise SystemExit(0)  # what Faust's worker does when stopped by SIGTERM

    monkeypatch.setattr(
        worker_cmd, "build_service", lambda *_args, **_options: SimpleNamespace(app=app)
    )
    monkeypatch.setattr("messaging.faust_workarounds.quiet_worker", lambda *_: Worker())
    monkeypatch.setattr("messaging.faust_workarounds.exit_if_stop_hangs", lambda _app: None)
    monkeypatch.setattr(worker_cmd, "_topics_problem", lambda: None)  # no broker here
    if not clean:
        producer_of(app).failure = RuntimeError("broker away")
    result = CliRunner().invoke(worker_cmd.worker, ["product"])
    assert result.exit_code == (0 if clean else exit_codes.UNCLEAN_STOP)
    assert (Path(app.conf.datadir) / CLEAN_SHUTDOWN_MARKER).exists() is clean


def test_stores_are_discarded_after_a_clean_stop_longer_ago_than_tombstones_live(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compaction drops a deleted row's tombstone after delete.retention.ms: a store
    stopped for longer may have missed it, and would bring an expired row back."""
    import os
    import time

    from messaging import faust_workarounds

    assert faust_workarounds.tombstones_kept_seconds() == 86_400  # topics.yaml's changelogs
    tables = stored_tables(app)
    marker = Path(app.conf.datadir) / CLEAN_SHUTDOWN_MARKER
    assert mark_clean_shutdown(app) is True
    day_ago = time.time() - 86_400 - 60
    os.utime(marker, (day_ago, day_ago))
    assert discard_tables_after_crash(app) is True
    assert not tables.exists()


def test_stores_are_discarded_when_the_worker_now_runs_against_other_brokers(
    tmp_path: Path,
) -> None:
    """One SAGA_HOME used against the single broker, then the local cluster: the stores
    mirror changelogs the cluster never had, however cleanly the worker stopped."""
    single = create_app(
        "saga-product", web_port=6990, store="memory://", datadir=str(tmp_path),
        broker="kafka://127.0.0.1:9092",
    )  # fmt: skip
    tables = stored_tables(single)
    assert mark_clean_shutdown(single) is True
    cluster = create_app(
        "saga-product", web_port=6990, store="memory://", datadir=str(tmp_path),
        broker="kafka://127.0.0.1:19093;kafka://127.0.0.1:19094",
    )  # fmt: skip
    assert discard_tables_after_crash(cluster) is True
    assert not tables.exists()
    stored_tables(single)
    assert mark_clean_shutdown(single) is True
    assert discard_tables_after_crash(single) is False  # the same brokers: kept


def test_the_marker_names_the_brokers_whatever_their_order(tmp_path: Path) -> None:
    def marker_of(broker: str) -> str:
        app = create_app(
            "saga-product", web_port=6990, store="memory://", datadir=str(tmp_path),
            broker=broker,
        )  # fmt: skip
        assert mark_clean_shutdown(app) is True
        return (tmp_path / CLEAN_SHUTDOWN_MARKER).read_text()

    one_way = marker_of("kafka://127.0.0.1:19093;kafka://127.0.0.1:19094")
    assert one_way == "kafka://127.0.0.1:19093,kafka://127.0.0.1:19094"
    assert marker_of("kafka://127.0.0.1:19094;kafka://127.0.0.1:19093") == one_way
    # as many brokers, other ones: not the same cluster
    assert marker_of("kafka://127.0.0.1:29093;kafka://127.0.0.1:29094") != one_way
