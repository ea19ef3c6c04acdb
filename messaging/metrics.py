"""Prometheus metrics of a worker: one registry per app, served at `/metrics`.

Every worker (the orchestrator and each participant) gets a `WorkerMetrics` from
`create_app`: its own `CollectorRegistry` (never prometheus_client's global one: the
tests build several apps in one process), served in the Prometheus text format on the
worker's own Faust web server. What every worker exports:

- counted as it happens, at most one increment per record: dead letters by reason and
  source topic (`messaging.dead_letters.send_dead_letter` counts them), rebalances, and
  the time of the flush before each offset commit;
- computed at scrape time by `WorkerCollector`, at no cost per record: consumer lag per
  topic-partition (end offset - committed offset, both as the worker's own Faust consumer
  knows them), estimated rows per table partition (RocksDB's `rocksdb.estimate-num-keys`:
  no table is scanned), records sent and not yet acknowledged by the worker's producer;
  and the process's CPU, memory and garbage collection (prometheus_client's collectors).

Faust's own Prometheus sensor (`faust.sensors.prometheus`) is not used: it is a Faust
Monitor, called four times per record (`messaging.faust_workarounds.without_sensors` drops the
Monitor for that cost). What it offers cheaply, offsets, rebalances and commits, is
taken here from the consumer and the app's signals instead.

The orchestrator's saga metrics are in `orchestrator.engine.metrics`, the participants'
in `participants.metrics`; both register on the worker's registry (`metrics_of(app)`).
`SAGA_METRICS=0` turns every worker's metrics off: no `/metrics`, no counting.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import faust
import prometheus_client
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

METRICS_ENV = "SAGA_METRICS"
ROUTE = "/metrics"
# What the scrape answers with: Prometheus' text format 0.0.4, which every version reads.
CONTENT_TYPE = prometheus_client.exposition.CONTENT_TYPE_PLAIN_0_0_4
ROWS_PROPERTY = "rocksdb.estimate-num-keys"
FAUST_OFFSET_KEY = RocksDBStore.offset_key
# Commit flushes: tens of milliseconds usually, seconds when the broker is slow.
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Child = TypeVar("Child")


class ProducerCounts(Protocol):
    """What the metrics read of the worker's producer (`messaging.producer.KafkaProducer`)."""

    @property
    def sent(self) -> int: ...

    @property
    def outstanding(self) -> int: ...


def enabled() -> bool:
    """Whether workers keep and serve metrics (SAGA_METRICS=0 turns them off)."""
    return os.environ.get(METRICS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class Children(Generic[Child]):
    """A labelled metric's children, looked up once per label values.

    `metric.labels(...)` validates and locks on every call (about 3 µs); a dict lookup
    of a child made before costs a tenth of that. Label values must be bounded (saga
    type, state, step, message type, reason code, topic): never an id.
    """

    def __init__(self, make: Callable[..., Child]) -> None:
        self.make = make
        self.made: dict[Hashable, Child] = {}

    def __call__(self, *labels: str) -> Child:
        child = self.made.get(labels)
        if child is None:
            child = self.made[labels] = self.make(*labels)
        return child


class WorkerMetrics:
    """The registry of one worker and the metrics every worker has."""

    def __init__(self, app: faust.App, producer: ProducerCounts | None = None) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._dead_letters = Counter(
            "saga_dead_letters",
            "Records sent to saga.dead-letters, by reason code (the error.reason header) "
            "and the topic the record came from.",
            ["reason", "topic"],
            registry=registry,
        )
        self.dead_letters = Children(self._dead_letters.labels)
        self.rebalances = Counter(
            "saga_rebalances",
            "Partition assignments this worker received (one per rebalance of its group).",
            registry=registry,
        )
        self.commit_flush = Histogram(
            "saga_commit_flush_seconds",
            "Time of the flush before each offset commit: outputs acknowledged, changed "
            "rows sent to the changelogs, acknowledged and written to the stores.",
            buckets=FLUSH_BUCKETS,
            registry=registry,
        )
        registry.register(WorkerCollector(app, producer))
        prometheus_client.ProcessCollector(registry=registry)
        prometheus_client.GCCollector(registry=registry)
        prometheus_client.PlatformCollector(registry=registry)

    def dead_letter(self, reason: str, topic: str) -> None:
        self.dead_letters(reason, topic).inc()

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)


class WorkerCollector(Collector):
    """Scrape-time metrics of a worker, read from its consumer, stores and producer."""

    def __init__(self, app: faust.App, producer: ProducerCounts | None) -> None:
        self.app = app
        self.producer = producer

    def collect(self) -> Iterable[Metric]:
        lag = GaugeMetricFamily(
            "saga_consumer_lag",
            "Records of an input topic-partition this worker has not committed yet: the "
            "end offset its consumer last fetched minus its committed offset.",
            labels=["topic", "partition"],
        )
        for tp, records in consumer_lag(self.app):
            lag.add_metric([tp.topic, str(tp.partition)], records)
        rows = GaugeMetricFamily(
            "saga_table_rows",
            "Rows in a table partition this worker owns, as RocksDB estimates them "
            f"({ROWS_PROPERTY}; rows belonging to another row included, written-back "
            "rows only).",
            labels=["table", "partition"],
        )
        for table, partition, estimate in table_rows(self.app):
            rows.add_metric([table, str(partition)], estimate)
        yield lag
        yield rows
        yield from producer_metrics(self.producer)


def consumer_lag(app: faust.App) -> Iterator[tuple[TP, int]]:
    """(topic-partition, lag) for each input partition assigned to `app`'s consumer.

    The end offset is the high watermark of the consumer's last fetch (no request to the
    broker). A partition with no committed offset yet (Faust keeps None for 0 too) lags
    by its end offset; one with no fetch yet is left out.
    """
    consumer: Any = getattr(app, "_consumer", None)  # not created before the worker starts
    if consumer is None:
        return
    try:
        assigned = sorted(consumer.assignment())
    except Exception:  # not started, or stopping
        return
    committed_offsets = getattr(consumer, "_committed_offset", {})  # Faust's own
    for tp in assigned:
        if not app.topics.acks_enabled_for(tp.topic):
            continue  # a changelog: read in recovery only, never committed
        try:
            end = consumer.highwater(tp)
        except Exception:  # revoked meanwhile
            continue
        if end is None:
            continue
        committed = committed_offsets.get(tp)
        yield tp, max(0, int(end) - int(committed or 0))


def table_rows(app: faust.App) -> Iterator[tuple[str, int, int]]:
    """(table, partition, estimated rows) of the RocksDB partitions `app` owns actively:
    RocksDB's estimate of the keys (exact for a store not compacted yet, approximate after
    deletions and compactions) less Faust's offset key. No row is read."""
    try:
        actives = app.assignor.assigned_actives()
    except Exception:
        return
    for table in list(app.tables.values()):
        store: Any = getattr(table, "_data", None)  # not opened before the worker starts
        dbs = getattr(store, "_dbs", None)
        if not dbs:
            continue  # not RocksDB (the tests' memory store), or nothing assigned
        topic = table.changelog_topic.get_topic_name()
        for partition, db in sorted(dbs.items()):
            if TP(topic, partition) not in actives:
                continue  # a standby, or revoked
            try:
                estimate = db.property_int_value(ROWS_PROPERTY)
                # Faust keeps how far the changelog is applied among the rows: not one.
                offset_key = db.get(FAUST_OFFSET_KEY) is not None
            except Exception:  # closed meanwhile
                continue
            if estimate is not None:
                yield table.name, partition, max(0, int(estimate) - offset_key)


def producer_metrics(producer: ProducerCounts | None) -> Iterator[Metric]:
    sent = CounterMetricFamily(
        "saga_producer_records_sent",
        "Records this worker's producer sent (outputs, changelog rows, dead letters).",
    )
    unacked = GaugeMetricFamily(
        "saga_producer_unacknowledged",
        "Records sent and not yet acknowledged by the broker.",
    )
    if producer is not None:
        sent.add_metric([], producer.sent)
        unacked.add_metric([], producer.outstanding)
    yield sent
    yield unacked


_METRICS: weakref.WeakKeyDictionary[faust.App, WorkerMetrics] = weakref.WeakKeyDictionary()


def metrics_of(app: faust.App) -> WorkerMetrics | None:
    """The worker's metrics (None when SAGA_METRICS=0)."""
    return _METRICS.get(app)


def install(app: faust.App, producer: ProducerCounts | None = None) -> WorkerMetrics | None:
    """Give `app` its metrics and serve them at /metrics (nothing if SAGA_METRICS=0).

    Call after `messaging.faust_app.flush_before_commit` (its flush is the one timed).
    """
    if not enabled():
        return None
    prometheus_client.disable_created_metrics()  # no *_created series: nobody reads them
    metrics = WorkerMetrics(app, producer)
    _METRICS[app] = metrics

    async def on_assigned(*_args: Any, **_kwargs: Any) -> None:
        metrics.rebalances.inc()

    app.on_partitions_assigned.connect(on_assigned)
    _time_commit_flush(app, metrics.commit_flush)

    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    app.page(ROUTE, name="Metrics")(Metrics)
    return metrics


def _time_commit_flush(app: faust.App, histogram: Histogram) -> None:
    producer: Any = app.producer
    flush = producer.flush

    async def timed_flush() -> None:
        started = time.perf_counter()
        try:
            await flush()
        finally:
            histogram.observe(time.perf_counter() - started)

    producer.flush = timed_flush


def exported_names(registry: CollectorRegistry) -> set[str]:
    """Every series name `registry` can export, whether it has samples yet or not: a
    counter `x` as `x_total`, a histogram as `x_bucket`, `x_sum` and `x_count`."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
