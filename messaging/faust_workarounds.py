"""Every place the project works around Faust, or reaches into it, in one module.

Each function or class here depends on how the versions pinned in pyproject.toml
(faust-streaming 0.15.3, aiokafka 0.14.0, mode-streaming 0.7.1) behave inside, often on
private attributes. Its docstring names the upstream code (paths are inside
site-packages) and the tests that pin it: `tests/unit/test_faust_workarounds.py` checks
the upstream side (the code still exists and still does what the workaround expects) and
fails on an upgrade that changes it; the tests named after it check the workaround's own
behaviour. Upgrading one of the three packages means re-reading the code cited here.

Who wires what: `messaging.faust_app.create_app` installs the ones every app needs
(`extend_producer_flush`, `fence_stale_records`, `without_sensors`, `set_value_serializer`,
`declare_topics_through_metadata`, and `set_fetch_limits` through `messaging.fetching`);
`cli/worker_cmd.py` wraps a worker's run in the others (`discard_tables_after_crash`,
`exit_if_stop_hangs`, `quiet_worker`, `mark_clean_shutdown`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faust
import faust.streams as faust_streams
from faust.types import EventT

from messaging import exit_codes, topics
from messaging.producer import producer_of
from messaging.tables import row_tables

log = logging.getLogger(__name__)


# ---- the record being processed ----


@contextmanager
def processing(event: EventT) -> Iterator[None]:
    """Make `event` Faust's current event: table writes go to its partition's store and
    changelog partition (Faust finds both through the current event).

    Upstream: Faust keeps the event an agent is processing in the private ContextVar
    `faust/streams.py _current_event`, set by `Stream._c_aiter` / `_py_aiter` for each
    event and read through `current_event()` by `faust/tables/base.py
    Collection.partition_for_key` and `faust/stores/rocksdb.py Store._set`. A row written
    after its record (WriteAfterSend, tests) has no such event: this sets it.
    Pinned by test_faust_workarounds.py::test_processing_sets_fausts_current_event;
    used by test_row_table.py, test_write_after_send.py.
    """
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


# ---- offset commits ----


def extend_producer_flush(app: faust.App, before: Callable[[], Awaitable[None]]) -> None:
    """Make every flush of Faust's producer await `before()` first, then Faust's own flush.

    Upstream: Faust has no hook before it commits offsets, but it flushes its producer
    right before each commit (`faust/transport/consumer.py Consumer._commit_offsets`:
    `await self.app.producer.flush()`, then `self._commit(...)`), before it gives
    partitions up in a rebalance and when it stops (`faust/app/base.py
    App._on_partitions_revoked` and `App.on_stop`, both through `App._producer_flush`).
    Both look `flush` up on the producer instance, so replacing it there runs `before`
    at each of those points (`messaging.faust_app.flush_before_commit`).
    Pinned by test_faust_workarounds.py::test_faust_flushes_its_producer_before_each_commit
    and ::test_an_extended_flush_runs_before_fausts_own; behaviour: test_row_table.py.
    """
    faust_producer: Any = app.producer
    faust_flush = faust_producer.flush

    async def flush() -> None:
        await before()
        await faust_flush()

    faust_producer.flush = flush


# ---- topic declarations ----

DECLARE_WAIT_SECONDS = 120.0  # a worker waits this long for an answering broker at start
DECLARE_RETRY_SECONDS = 1.0


def declare_topics_through_metadata(app: faust.App) -> None:
    """Make Faust's declaration of a topic (its tables' changelogs, at start) look the topic
    up in metadata first, from any broker that answers, and wait for one if none does.

    Upstream: `faust/topics.py Topic.declare` calls `app.producer.create_topic`, which goes
    to `faust/transport/drivers/aiokafka.py Transport._really_create_topic`: that skips a
    topic already in the producer client's cached metadata (`client.cluster.topics()`),
    and otherwise asks the first broker of that metadata for the controller
    (`_get_controller_node`, one request to one node, no retry). The cache holds only the
    topics the client tracks, so a worker starting while that node is down (a cluster
    node killed, the single broker restarting) exits with NodeNotReadyError. Every topic
    here exists before a worker starts (`saga topics apply`; `cli/worker_cmd.py` refuses
    to start on a cluster lacking one), so tracking the topic first (aiokafka's
    `AIOKafkaClient.add_topic`, whose metadata request tries every known node) makes
    Faust skip the request; with no broker answering, the worker waits, as its consumer
    does, instead of exiting. Pinned by
    test_faust_workarounds.py::test_faust_skips_declaring_a_topic_in_its_metadata;
    behaviour: ::test_a_declaration_waits_for_metadata_then_goes_to_faust.
    """
    faust_producer: Any = app.producer
    faust_create_topic = faust_producer.create_topic

    async def create_topic(topic: str, *args: Any, **kwargs: Any) -> None:
        client = faust_producer._ensure_producer().client
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + DECLARE_WAIT_SECONDS
        answered = await client.add_topic(topic)
        while not answered and loop.time() < give_up_at:
            log.warning("no broker answers a metadata request for %s; waiting", topic)
            await asyncio.sleep(DECLARE_RETRY_SECONDS)
            answered = await client.force_metadata_update()
        await faust_create_topic(topic, *args, **kwargs)

    faust_producer.create_topic = create_topic


# ---- rebalances ----


class SeekFence:
    """Holds back stream records that were fetched before the consumer's latest seek.

    After a rebalance Faust restores the tables, then seeks the stream partitions back to
    their committed offsets (faust-streaming 0.15.3, Recovery). Records fetched before
    that seek can still reach the agents: during recovery, against half-restored tables,
    and after the seek, ahead of the records fetched again from the committed offset. A
    chaos run showed both: records processed out of partition order (a repeated order id
    started its saga with the second request), and records the consumer then dropped as
    already read (never processed, their offsets holding the commit back for good).

    So between an assignment and the seek that follows it, for a batch fetched while a
    seek runs, and for the rest of any batch fetched before a seek, stream records are not
    delivered. Nothing is lost: each partition that had records held back is sought back
    to the first of them (or to where Faust's seek put it, if earlier) once the seek is
    over, so they come again, in order; partitions without a committed offset, which
    aiokafka's seek_to_committed skips, are rewound to their start. Changelog records
    (recovery reads them) pass.

    Upstream: `faust/tables/recovery.py Recovery._resume_streams` and
    `Recovery.on_recovery_completed` seek through `consumer.perform_seek()`
    (`faust/transport/consumer.py Consumer.perform_seek`: `seek_to_committed`, then the
    private `_read_offset` per partition, None where nothing was committed);
    `Consumer._drain_messages` looks `self.getmany` up once when the fetcher starts and
    drops a record below `_read_offset` ("DROPPED MESSAGE"); `Consumer.seek` sets
    `_read_offset`; `aiokafka/consumer/consumer.py AIOKafkaConsumer.seek_to_committed`
    moves only partitions whose committed offset is above 0. This wraps the consumer
    instance's `getmany` and `perform_seek` and reads `_read_offset`.
    Pinned by test_faust_workarounds.py::test_recovery_seeks_through_perform_seek and the
    tests after it; behaviour: test_seek_fence.py.
    """

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self.epoch = 0  # odd while a seek runs: changes when one starts and when it ends
        self.seek_pending = True  # an assignment happened; its seek has not
        self.held_back: dict[Any, int] = {}  # partition -> first offset not delivered

    def install(self) -> None:
        """Wrap the consumer's fetch and seek: at the first assignment, before the
        fetcher starts (it looks `getmany` up once)."""
        consumer: Any = self.app.consumer
        if getattr(consumer, "_seek_fence", None) is not None:
            return
        consumer._seek_fence = self
        consumer.getmany = self._fenced_getmany(consumer.getmany)
        consumer.perform_seek = self._fenced_seek(consumer.perform_seek)

    def on_rebalance(self) -> None:
        self.seek_pending = True

    def _fenced_seek(self, seek: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def perform_seek() -> None:
            self.epoch += 1
            try:
                await seek()
                await self._rewind_uncommitted()
            finally:
                self.epoch += 1
                self.seek_pending = False
            await self._fetch_held_back_again()

        return perform_seek

    async def _rewind_uncommitted(self) -> None:
        """Seek stream partitions without a committed offset back to their start.

        aiokafka's seek_to_committed leaves a partition whose committed offset is missing
        or 0 where its fetcher was, past the records this fence held back: they would
        never come again. Nothing of such a partition was committed, so all of it is
        processed (again, for what was): handlers are idempotent.
        """
        consumer: Any = self.app.consumer
        for tp in consumer.assignment():
            if self.app.topics.acks_enabled_for(tp.topic) and not consumer._read_offset.get(tp):
                await consumer.seek(tp, 0)

    async def _fetch_held_back_again(self) -> None:
        """Seek each partition with held-back records back to the first of them, or to
        Faust's read offset if that is earlier (a duplicate at most: handlers absorb it)."""
        if self.seek_pending or self.epoch % 2 or not self.held_back:
            return  # the coming (or running) seek moves the fetcher; redo this after it
        consumer: Any = self.app.consumer
        held_back, self.held_back = self.held_back, {}
        assigned = consumer.assignment()
        for tp, offset in held_back.items():
            if tp in assigned:
                read = consumer._read_offset.get(tp)
                await consumer.seek(tp, 0 if read is None else min(offset, read))

    def _fenced_getmany(self, getmany: Callable[[float], AsyncIterator[Any]]) -> Any:
        async def fenced(timeout: float) -> AsyncIterator[Any]:
            fetched_in: int | None = None
            async for tp, message in getmany(timeout):
                if fetched_in is None:  # the batch has just arrived
                    fetched_in = self.epoch
                if not self.app.topics.acks_enabled_for(tp.topic):
                    yield tp, message  # a changelog record: recovery needs it now
                elif self.seek_pending or fetched_in % 2 or fetched_in != self.epoch:
                    self.held_back[tp] = min(self.held_back.get(tp, message.offset), message.offset)
                else:
                    yield tp, message
            await self._fetch_held_back_again()

        return fenced


def fence_stale_records(app: faust.App) -> None:
    """Install a SeekFence on the app's consumer (see SeekFence)."""
    fence = SeekFence(app)

    async def on_revoked(*_args: Any, **_kwargs: Any) -> None:
        fence.on_rebalance()

    async def on_assigned(*_args: Any, **_kwargs: Any) -> None:
        fence.on_rebalance()
        fence.install()

    app.on_partitions_revoked.connect(on_revoked)
    app.on_partitions_assigned.connect(on_assigned)


# ---- fetching ----


def set_fetch_limits(app: faust.App, min_bytes: int, max_wait_ms: int) -> bool:
    """Set how much the app's consumer asks the broker to gather, and how long it may
    wait, from its next fetch on; False if the consumer has not started yet.

    Upstream: Faust creates its aiokafka consumer with a fixed `fetch_max_wait_ms=1500`,
    aiokafka's default `fetch_min_bytes=1`, and has no setting for either
    (`faust/transport/drivers/aiokafka.py AIOKafkaConsumerThread._create_worker_consumer`).
    The aiokafka consumer sits in the private `_consumer` of Faust's consumer thread
    (`Consumer._thread`); its `Fetcher` (`AIOKafkaConsumer._fetcher`, made in `start`)
    copies both into the private `_fetch_min_bytes` / `_fetch_max_wait_ms` and reads them
    each time it builds a request (`aiokafka/consumer/fetcher.py
    Fetcher._get_actions_per_node`), so setting them there takes effect at once.
    Used by `messaging.fetching.FetchBatching`. Pinned by
    test_faust_workarounds.py::test_faust_gives_no_fetch_min_bytes_setting and
    ::test_the_fetcher_reads_its_limits_for_each_request; behaviour: test_fetching.py.
    """
    thread = getattr(app.consumer, "_thread", None)  # Faust's consumer thread delegate
    fetcher = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
    if fetcher is None:
        return False
    fetcher._fetch_min_bytes = min_bytes
    fetcher._fetch_max_wait_ms = max_wait_ms
    return True


# ---- sensors ----


def without_sensors(app: faust.App) -> None:
    """Drop Faust's Monitor sensor once the app starts: it keeps statistics nobody here
    reads, at four calls per record (about a tenth of a bare agent's CPU per record).

    Upstream: `faust/app/base.py App.on_init_dependencies` adds `app.monitor` to
    `app.sensors`, a `faust/sensors/base.py SensorDelegate` that calls every sensor in
    its private `_sensors` set for each record, and offers no setting to leave it out.
    This takes it out of that set from a task of the app (tasks run once it started).
    Pinned by test_faust_workarounds.py::test_the_monitor_is_a_sensor_until_dropped.
    """

    async def drop() -> None:
        sensors: Any = app.sensors
        sensors._sensors.discard(app.monitor)

    app.task(drop)


# ---- tables ----


def set_value_serializer(table: faust.Table, serializer: str) -> None:
    """Make `table` encode its values with the registered codec `serializer`.

    Upstream: `faust/tables/base.py Collection.__init__` derives a table's serializers
    from its key and value types only ("raw" for bytes, else "json") and takes no
    serializer argument; the table's store is made lazily on first use
    (`Collection.data` -> `_new_store_by_url`) with the table's `value_serializer` at that
    time, and changelog writes read the attribute each time (`Collection.send_changelog`).
    So it is set right after the table is made (`messaging.faust_app.typed_table`).
    Pinned by test_faust_workarounds.py::test_a_tables_value_serializer_is_read_lazily.
    """
    table_: Any = table
    table_.value_serializer = serializer


# ---- the worker's run: quiet, bounded stop, crash marker ----


def quiet_worker(app: faust.App, loglevel: str) -> Any:
    """A faust.Worker for `app` without the terminal spinner.

    The spinner sets the root logger to DEBUG (to spin on every record) at log levels of
    WARNING and above: every debug call of aiokafka and Faust then builds a LogRecord,
    a large share of a loaded worker's CPU.

    Upstream: `faust/worker.py Worker.__init__` always makes a `terminal.Spinner`, and
    `Worker.on_setup_root_logger` (`_setup_spinner_handler`) then sets the root logger
    to DEBUG unless the level is below WARNING; `quiet=True` does not change that.
    Pinned by test_faust_workarounds.py::test_fausts_spinner_sets_the_root_logger_to_debug
    and ::test_a_quiet_worker_keeps_the_root_logger_level.
    """
    runner = faust.Worker(app, loglevel=loglevel, quiet=True)
    runner.spinner = None
    return runner


STOP_GRACE_SECONDS = 25.0


def exit_if_stop_hangs(app: faust.App, grace: float = STOP_GRACE_SECONDS) -> None:
    """Exit hard when stopping the worker takes longer than `grace` seconds.

    Faust can hang for good when a stop races its start-up (the consumer thread joins the
    group while the app is stopping). The watchdog is a thread, not a task: the event loop
    may be what is stuck. The exit is not clean, so the next start restores the tables
    from the changelogs and uncommitted inputs are processed again (at-least-once).

    Upstream: `mode/worker.py Worker.stop_and_shutdown` runs the app's stop to its end
    with no time limit (`loop.run_until_complete(self.stop())`), and a stop can wait for
    ever, for example in `faust/transport/consumer.py Consumer.wait_empty` (DESIGN §9).
    The watchdog reads `app.should_stop` (`mode/services.py Service.should_stop`), which
    `Service.stop` makes true before it awaits anything.
    Pinned by test_faust_workarounds.py::test_should_stop_is_true_as_soon_as_a_stop_begins
    and ::test_the_watchdog_exits_unclean_once_a_stop_outlasts_its_grace.
    """

    def watch() -> None:
        while not app.should_stop:
            time.sleep(0.5)
        time.sleep(grace)
        log.error("still stopping after %.0f s: exiting without a clean stop", grace)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_codes.UNCLEAN_STOP)

    threading.Thread(target=watch, name="stop-watchdog", daemon=True).start()


CLEAN_SHUTDOWN_MARKER = "clean-shutdown"


def discard_tables_after_crash(app: faust.App) -> bool:
    """Delete the local table stores unless the worker last stopped cleanly, and not
    longer ago than the changelogs keep tombstones.

    Faust writes a row to RocksDB at once and its changelog record later, so a killed
    worker can leave rows the changelog never got (and outputs never sent). Restored from
    the changelogs instead, the tables hold only what Kafka has; the inputs whose offsets
    were not committed are then processed again from that state. Returns True if deleted.

    Upstream: Faust trusts a store it finds at start: `faust/tables/recovery.py
    Recovery._add` resumes each changelog partition from the offset the store recorded
    (`faust/stores/rocksdb.py Store.persisted_offset`, kept inside the partition's own
    database), whatever rows the store holds. The stores live under `app.conf.tabledir`
    (`Store.path`), which this deletes, offsets included.
    Pinned by test_faust_workarounds.py::test_recovery_trusts_the_stores_persisted_offset
    and ::test_the_stores_live_under_the_tabledir; behaviour: test_crash_marker.py.
    """
    marker = Path(app.conf.datadir) / CLEAN_SHUTDOWN_MARKER
    clean = marker.exists()
    # Stores restored from another cluster's changelogs (one SAGA_HOME used against the
    # single broker, then the local cluster) hold offsets and rows this one never had.
    written_for = marker.read_text() if clean else ""
    other_cluster = clean and written_for != brokers_of(app)
    # Stopped for longer than the changelogs keep a deleted row's tombstone (retention
    # deletes rows): compaction may have dropped one this store never saw, and the row
    # would come back. Restored from the changelog, it stays deleted.
    stale = (
        clean
        and not other_cluster
        and time.time() - marker.stat().st_mtime > tombstones_kept_seconds()
    )
    marker.unlink(missing_ok=True)  # from now on, a crash is not a clean stop
    tables = Path(app.conf.tabledir)
    if (clean and not stale and not other_cluster) or not tables.exists():
        return False
    if other_cluster:
        log.warning(
            "the stores were written against other brokers (%s, now %s): restoring tables"
            " from changelogs (%s)",
            written_for or "not recorded",
            brokers_of(app),
            tables,
        )
    elif stale:
        log.warning(
            "stopped for longer than the changelogs keep deletions (%.0f s): restoring"
            " tables from changelogs (%s)",
            tombstones_kept_seconds(),
            tables,
        )
    else:
        log.warning("last stop was not clean: restoring tables from changelogs (%s)", tables)
    shutil.rmtree(tables)
    return True


KAFKA_DELETE_RETENTION_MS = 86_400_000  # Kafka's default delete.retention.ms: 1 day


def tombstones_kept_seconds() -> float:
    """How long a changelog keeps a deletion's tombstone once compacted: the least
    `delete.retention.ms` of the changelogs in topics.yaml (Kafka's default: 1 day)."""
    values = [
        int(spec.configs.get("delete.retention.ms", KAFKA_DELETE_RETENTION_MS))
        for name, spec in topics.project_topics().topics.items()
        if name.endswith("-changelog")
    ]
    return min(values, default=KAFKA_DELETE_RETENTION_MS) / 1000


def unclean_stop(app: faust.App) -> str | None:
    """Why the stopped worker's stores cannot be trusted at the next start (None: they
    can): a row changed and not written back, or an output not acknowledged (a row in the
    store may stand for it). A stop is clean only if everything reached Kafka."""
    try:
        producer = producer_of(app)
    except KeyError:  # an app that create_app did not make sends nothing
        producer = None
    if producer is not None:
        if producer.failure is not None:
            return f"the producer failed: {producer.failure}"
        if producer.outstanding:
            return f"{producer.outstanding} record(s) sent were not acknowledged"
    for table in row_tables(app):
        if table.unwritten_rows:
            return f"{table.unwritten_rows} row(s) of table {table.name} were not written back"
    return None


def mark_clean_shutdown(app: faust.App) -> bool:
    """Record that the worker stopped cleanly (its stores match the changelogs), if it
    did; returns whether it did."""
    problem = unclean_stop(app)
    if problem is not None:
        log.warning("the stop was not clean (%s): the next start restores the tables", problem)
        return False
    (Path(app.conf.datadir) / CLEAN_SHUTDOWN_MARKER).write_text(brokers_of(app))
    return True


def brokers_of(app: faust.App) -> str:
    """The brokers a worker's stores mirror, as its clean-shutdown marker records them."""
    return ",".join(sorted(str(url) for url in app.conf.broker))
