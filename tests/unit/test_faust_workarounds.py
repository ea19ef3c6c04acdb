"""The upstream side of messaging.faust_workarounds: faust-streaming, aiokafka and mode
still have the code each workaround depends on, and it still behaves as the workaround
expects. A test failing after an upgrade names the workaround to re-read against the new
code (its docstring cites what it depends on). Where it is cheap, a test also checks that
the workaround still has its effect on the real Faust objects; the workarounds' own
behaviour is tested next to them (test_seek_fence.py, test_crash_marker.py,
test_fetching.py, test_row_table.py). No broker.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
import threading
import tomllib
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import faust.streams
import mode
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from faust.stores.rocksdb import Store as RocksDBStore
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer
from faust.transport.drivers.aiokafka import Transport as AIOKafkaTransport
from faust.types import TP

from messaging import exit_codes, faust_workarounds
from messaging.faust_workarounds import (
    SeekFence,
    declare_topics_through_metadata,
    exit_if_stop_hangs,
    extend_producer_flush,
    processing,
    quiet_worker,
    set_fetch_limits,
    set_value_serializer,
    without_sensors,
)

ROOT = Path(__file__).resolve().parents[2]
# The versions every workaround was checked against, by reading their code.
CHECKED_AGAINST = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0", "mode-streaming": "0.7.1"}


def source(obj: Any) -> str:
    return inspect.getsource(obj)


@pytest.fixture
def app() -> Any:
    return faust.App("test-faust-workarounds", store="memory://")


def test_the_workarounds_were_checked_against_the_installed_and_pinned_versions() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = dict(d.split("==") for d in pyproject["project"]["dependencies"] if "==" in d)
    for package, version in CHECKED_AGAINST.items():
        assert pinned[package] == version, (
            f"{package} {pinned[package]} is pinned: check messaging/faust_workarounds.py "
            f"against its code, then update CHECKED_AGAINST"
        )
        assert importlib.metadata.version(package) == version


# ---- processing: Faust's current event ----


class Event:
    def __init__(self) -> None:
        self.message = SimpleNamespace(partition=3, topic="t", offset=0)


def test_processing_sets_fausts_current_event() -> None:
    event: Any = Event()
    assert faust.streams.current_event() is None
    with processing(event):
        assert faust.streams.current_event() is event
    assert faust.streams.current_event() is None


def test_tables_and_stores_find_the_partition_through_the_current_event() -> None:
    assert "current_event()" in source(Collection.partition_for_key)
    assert "current_event()" in source(RocksDBStore._set)


# ---- extend_producer_flush: Faust flushes its producer before it commits ----


def test_faust_flushes_its_producer_before_each_commit() -> None:
    commit = source(Consumer._commit_offsets)
    flush = commit.index("await self.app.producer.flush()")
    assert flush < commit.index("await self._commit(committable_offsets)")
    assert "await T(self._producer_flush)(on_timeout)" in source(faust.App._on_partitions_revoked)
    assert "await self._producer_flush(self.log)" in source(faust.App.on_stop)
    assert "await self._producer.flush()" in source(faust.App._producer_flush)


async def test_an_extended_flush_runs_before_fausts_own(app: Any) -> None:
    calls: list[str] = []

    async def fausts_own() -> None:  # aiokafka's flush needs a broker
        calls.append("faust")

    async def before() -> None:
        calls.append("ours")

    app.producer.flush = fausts_own
    extend_producer_flush(app, before)
    await app._producer_flush(logging.getLogger(__name__))  # a rebalance's, a stop's
    await app.producer.flush()  # a commit's
    assert calls == ["ours", "faust", "ours", "faust"]


# ---- topic declarations: from metadata, never through one node ----


def test_faust_skips_declaring_a_topic_in_its_metadata() -> None:
    declare = source(faust.Topic.declare)
    assert "await producer.create_topic(" in declare
    create = source(AIOKafkaProducer.create_topic)
    assert "producer = self._ensure_producer()" in create
    assert "producer.client," in create
    really = source(AIOKafkaTransport._really_create_topic)
    skip = really.index("if topic in client.cluster.topics():")
    assert skip < really.index("return") < really.index("await self._get_controller_node(")
    # ... and otherwise asks one node, the first of the cached metadata, without retrying:
    controller = source(AIOKafkaTransport._get_controller_node)
    assert "for node_id in nodes:" in controller
    assert controller.index("client.send(node_id, request)") < controller.index("return ")
    # aiokafka's add_topic refreshes the metadata (tracking the topic from then on), and
    # a refresh asks every node it knows until one answers:
    assert "res = self.force_metadata_update()" in source(AIOKafkaClient.add_topic)
    update = source(AIOKafkaClient._metadata_update)
    assert "for node_id in nodeids:" in update
    assert "if conn is None:\n                continue" in update


class MetadataClient:
    """An aiokafka client whose metadata refreshes answer as told (True: a broker did)."""

    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.tracked: list[str] = []

    async def _refresh(self) -> bool:
        return self.answers.pop(0) if self.answers else False

    def add_topic(self, topic: str) -> Any:
        self.tracked.append(topic)
        return self._refresh()

    def force_metadata_update(self) -> Any:
        return self._refresh()


@pytest.mark.parametrize(
    ("answers", "wait_seconds"),
    [([True], 60.0), ([False, False, True], 60.0), ([False] * 1000, 0.05)],
    ids=["answered", "answered-after-two-refusals", "never-answered"],
)
async def test_a_declaration_waits_for_metadata_then_goes_to_faust(
    app: Any, monkeypatch: pytest.MonkeyPatch, answers: list[bool], wait_seconds: float
) -> None:
    monkeypatch.setattr(faust_workarounds, "DECLARE_WAIT_SECONDS", wait_seconds)
    monkeypatch.setattr(faust_workarounds, "DECLARE_RETRY_SECONDS", 0.01)
    client = MetadataClient(list(answers))
    declared: list[tuple[Any, ...]] = []

    async def fausts_own(topic: str, *args: Any, **kwargs: Any) -> None:
        declared.append((topic, client.answers[:1], *args, kwargs))

    app.producer._ensure_producer = lambda: SimpleNamespace(client=client)
    app.producer.create_topic = fausts_own
    declare_topics_through_metadata(app)
    await app.producer.create_topic("saga.replies", 4, 3, config={"x": "y"})
    assert client.tracked == ["saga.replies"]
    # Faust's own declaration ran once, after the refresh that answered (or the wait):
    assert len(declared) == 1
    topic, left, *args, kwargs = declared[0]
    assert (topic, args, kwargs) == ("saga.replies", [4, 3], {"config": {"x": "y"}})
    if answers[-1]:
        assert client.answers == []  # every refusal was retried
    else:
        assert left == [False]  # gave up waiting


async def test_every_app_of_the_project_declares_topics_through_metadata(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from messaging.faust_app import create_app

    app: Any = create_app("saga-product", web_port=6997, store="memory://")
    client = MetadataClient([True, True])  # the wrapper's lookup, then Faust's own refresh
    declared: list[str] = []

    async def fausts_declaration(
        _self: Any, _owner: Any, _client: Any, topic: str, *_: Any, **__: Any
    ) -> None:
        declared.append(topic)

    monkeypatch.setattr(AIOKafkaTransport, "_create_topic", fausts_declaration)
    app.producer._ensure_producer = lambda: SimpleNamespace(client=client)
    await app.producer.create_topic("saga-product-stock-changelog", 4, 1)
    assert client.tracked == ["saga-product-stock-changelog"]  # looked up first
    assert declared == ["saga-product-stock-changelog"]


# ---- SeekFence: the seek after recovery, and the records fetched before it ----


def test_recovery_seeks_through_perform_seek() -> None:
    recovery = source(faust.tables.recovery)
    assert recovery.count("perform_seek") == recovery.count("consumer.perform_seek()") == 2
    assert "seek_to_committed" not in recovery
    assert "consumer.perform_seek()" in source(Recovery._resume_streams)
    assert "consumer.perform_seek()" in source(Recovery.on_recovery_completed)


def test_the_fetcher_looks_getmany_up_once_and_drops_records_below_the_read_offset() -> None:
    drain = source(Consumer._drain_messages)
    assert "getmany = self.getmany" in drain
    assert "get_read_offset = self._read_offset.__getitem__" in drain
    assert "DROPPED MESSAGE" in drain


async def test_perform_seek_leaves_no_read_offset_where_nothing_was_committed() -> None:
    committed = {TP("t", 0): 5, TP("t", 1): 0, TP("t", 2): None}

    async def seek_to_committed() -> dict[TP, int | None]:
        return committed

    consumer: Any = SimpleNamespace(
        _read_offset={}, _committed_offset={}, seek_to_committed=seek_to_committed
    )
    await Consumer.perform_seek(consumer)
    assert consumer._read_offset == {TP("t", 0): 5, TP("t", 1): 0, TP("t", 2): None}


async def test_seek_sets_the_read_offset() -> None:
    sought: list[tuple[TP, int]] = []

    async def _seek(tp: TP, offset: int) -> None:
        sought.append((tp, offset))

    consumer: Any = SimpleNamespace(
        log=SimpleNamespace(dev=lambda *_: None), _seek=_seek, _read_offset={}
    )
    await Consumer.seek(consumer, TP("t", 0), 7)
    assert sought == [(TP("t", 0), 7)]
    assert consumer._read_offset == {TP("t", 0): 7}


async def test_aiokafka_seeks_only_partitions_committed_above_zero() -> None:
    tps = [TopicPartition("t", n) for n in range(3)]
    committed = dict(zip(tps, [5, 0, None], strict=True))
    sought: list[tuple[TopicPartition, int]] = []

    async def committed_offset(tp: TopicPartition) -> int | None:
        return committed[tp]

    consumer: Any = SimpleNamespace(
        _subscription=SimpleNamespace(assigned_partitions=lambda: set(tps)),
        _fetcher=SimpleNamespace(seek_to=lambda tp, offset: sought.append((tp, offset))),
        committed=committed_offset,
    )
    assert await AIOKafkaConsumer.seek_to_committed(consumer) == committed
    assert sought == [(tps[0], 5)]  # the others stay where the fetcher was


def test_fausts_consumer_has_what_the_fence_wraps_and_reads(app: Any) -> None:
    consumer = app.consumer
    assert inspect.isasyncgenfunction(consumer.getmany)
    assert list(inspect.signature(consumer.getmany).parameters) == ["timeout"]
    assert inspect.iscoroutinefunction(consumer.perform_seek)
    assert list(inspect.signature(consumer.perform_seek).parameters) == []
    assert list(inspect.signature(consumer.seek).parameters) == ["partition", "offset"]
    assert isinstance(consumer._read_offset, defaultdict)
    assert consumer._read_offset[TP("t", 0)] is None
    assert app.topics.acks_enabled_for("t") is False  # no agent reads it

    fence = SeekFence(app)
    fence.install()
    assert consumer._seek_fence is fence
    assert consumer.getmany.__name__ == "fenced"  # what _drain_messages will look up
    assert consumer.perform_seek.__name__ == "perform_seek"
    assert consumer.perform_seek is not Consumer.perform_seek


# ---- set_fetch_limits: aiokafka's fetcher, inside Faust's consumer thread ----


def test_faust_gives_no_fetch_min_bytes_setting() -> None:
    create = source(AIOKafkaConsumerThread._create_worker_consumer)
    assert "fetch_min_bytes" not in create
    assert "fetch_max_wait_ms=1500" in create
    assert not [name for name in dir(faust.Settings) if "fetch_min" in name]
    assert not [name for name in dir(faust.Settings) if "fetch_max_wait" in name]


def test_the_fetcher_reads_its_limits_for_each_request() -> None:
    assert "self._consumer = self._create_consumer(" in source(AIOKafkaConsumerThread.on_start)
    assert "self._fetcher = Fetcher(" in source(AIOKafkaConsumer.start)
    init = source(Fetcher.__init__)
    assert "self._fetch_min_bytes = fetch_min_bytes" in init
    assert "self._fetch_max_wait_ms = fetch_max_wait_ms" in init
    request = source(Fetcher._get_actions_per_node)
    assert "self._fetch_max_wait_ms," in request
    assert "self._fetch_min_bytes," in request


def test_fetch_limits_reach_the_fetcher_of_fausts_consumer_thread(app: Any) -> None:
    thread = app.consumer._thread
    assert isinstance(thread, AIOKafkaConsumerThread)
    assert thread._consumer is None  # until the consumer starts
    assert set_fetch_limits(app, 800, 8) is False
    fetcher = SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=1500)
    thread._consumer = SimpleNamespace(_fetcher=fetcher)  # a started one's
    assert set_fetch_limits(app, 800, 8) is True
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (800, 8)


# ---- without_sensors: the Monitor ----


async def test_the_monitor_is_a_sensor_until_dropped(app: Any) -> None:
    app.on_init_dependencies()  # what starting the app does first
    assert app.monitor in app.sensors._sensors
    assert list(app.sensors) == [app.monitor]
    tasks: list[Any] = []
    fake: Any = SimpleNamespace(sensors=app.sensors, monitor=app.monitor, task=tasks.append)
    without_sensors(fake)
    await tasks[0]()  # the app runs its tasks once started
    assert list(app.sensors) == []


# ---- set_value_serializer: a table's codec ----


def test_a_tables_value_serializer_is_read_lazily(app: Any) -> None:
    table = app.Table("rows", key_type=bytes)
    assert table.value_serializer == "json"  # from the value type, whatever is wanted
    set_value_serializer(table, "raw")
    assert table.data.value_serializer == "raw"  # the store is made on first use
    assert "value_serializer=self.value_serializer" in source(Collection._new_store_by_url)


# ---- quiet_worker: the spinner ----


def fresh_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    logger.handlers = [logging.NullHandler()]
    return logger


def test_fausts_spinner_sets_the_root_logger_to_debug(app: Any) -> None:
    runner = faust.Worker(app, loglevel="warning", quiet=True)
    assert runner.spinner is not None
    logger = fresh_logger("test-faust-spinner")
    runner.on_setup_root_logger(logger, logging.WARNING)
    assert logger.level == logging.DEBUG


def test_a_quiet_worker_keeps_the_root_logger_level(app: Any) -> None:
    runner = quiet_worker(app, "warning")
    logger = fresh_logger("test-quiet-worker")
    runner.on_setup_root_logger(logger, logging.WARNING)
    assert logger.level == logging.WARNING


# ---- exit_if_stop_hangs: a stop with no time limit ----


def test_a_worker_waits_for_its_stop_with_no_time_limit() -> None:
    stop = source(mode.Worker.stop_and_shutdown)
    assert "self.loop.run_until_complete(self.stop())" in stop
    assert "timeout" not in stop


async def test_should_stop_is_true_as_soon_as_a_stop_begins() -> None:
    assert faust.App.should_stop is mode.Service.should_stop
    release = asyncio.Event()
    seen: list[bool] = []

    class Hanging(mode.Service):
        async def on_stop(self) -> None:
            seen.append(self.should_stop)
            await release.wait()

    service = Hanging()
    await service.start()
    assert not service.should_stop
    stopping = asyncio.ensure_future(service.stop())
    await asyncio.sleep(0.05)
    assert seen == [True]  # the watchdog sees a stop that hangs in on_stop
    release.set()
    await asyncio.wait_for(stopping, 5)


def test_the_watchdog_exits_unclean_once_a_stop_outlasts_its_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits: list[int] = []
    exited = threading.Event()

    def exit_(code: int) -> None:
        exits.append(code)
        exited.set()

    monkeypatch.setattr(faust_workarounds.os, "_exit", exit_)
    app: Any = SimpleNamespace(should_stop=False)
    exit_if_stop_hangs(app, grace=0.05)
    assert not exited.wait(0.7)  # not stopping: it only watches
    app.should_stop = True
    assert exited.wait(5)
    assert exits == [exit_codes.UNCLEAN_STOP]


# ---- the crash marker: Faust trusts the stores it finds ----


def test_recovery_trusts_the_stores_persisted_offset() -> None:
    tp = TP("saga-x-rows-changelog", 0)
    recovery: Any = SimpleNamespace(tp_to_table={})
    offsets: Counter[TP] = Counter()
    stored: Any = SimpleNamespace(persisted_offset=lambda _tp: 41)
    Recovery._add(recovery, stored, tp, offsets)
    assert offsets[tp] == 41  # the changelog is read from there on: the rows before, trusted
    fresh: Counter[TP] = Counter()
    empty: Any = SimpleNamespace(persisted_offset=lambda _tp: None)
    Recovery._add(recovery, empty, tp, fresh)
    assert fresh[tp] is None  # no offset kept: the whole changelog is read
    assert "self._add(table, tp, self.active_offsets)" in source(Recovery.add_active)


def test_the_stores_live_under_the_tabledir_with_their_offsets(tmp_path: Path) -> None:
    app = faust.App("test-faust-stores", store="rocksdb://", datadir=str(tmp_path))
    table = app.Table("rows", key_type=bytes, options={"driver": "rocksdict"})
    store: Any = table.data
    assert store.partition_path(0).parent == Path(app.conf.tabledir)
    assert str(app.conf.tabledir).startswith(str(tmp_path))
    persist = source(RocksDBStore.set_persisted_offset)
    assert "self._db_for_partition(tp.partition).put(self.offset_key" in persist
