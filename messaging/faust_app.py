"""Faust plumbing shared by the orchestrator and the participants.

Every topic and table uses raw `bytes` keys (the table router, the partitioner and the web
views then agree on where a key lives) and raw `bytes` values: agents decode values
themselves with the Avro codec so an undecodable record can be dead-lettered with its
partition and offset instead of crashing the agent (Faust's own value decoding raises
inside the stream). Table values use the registered `saga-avro` Faust codec.

The app factory wires in the workarounds of Faust's own behaviour; they live, each with
the upstream code it depends on, in `messaging.faust_workarounds`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from faust.types import EventT, StreamT

from messaging import metrics, settings, topics, tracing
from messaging.cpu import CpuScarcity
from messaging.dead_letters import send_dead_letter
from messaging.faust_workarounds import (
    declare_topics_through_metadata,
    extend_producer_flush,
    fence_stale_records,
    processing,
    set_value_serializer,
    without_sensors,
)
from messaging.fetching import FetchBatching
from messaging.producer import KafkaProducer, TransportError, producer_of, set_producer_of
from messaging.tables import RowTable, row_tables
from messaging.takeover import track_takeovers
from schemas import codec
from schemas.state import StateRefused

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    """Now, truncated to milliseconds (what Avro timestamp-millis keeps)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


DEFAULT_WEB_BIND = "127.0.0.1"
# Addresses that mean "every interface": listened on, but nobody can be sent there.
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True)
class WebAddress:
    """Where a worker's web server listens, and the host other workers reach it at.

    `host` is the host of Faust's canonical URL: every worker of a service publishes it
    in the consumer group, and the others send it the key lookups (table routing) and
    list-view parts (`messaging.web.whole_table`) of the partitions it owns.
    """

    bind: str
    host: str


def web_address(bind: str | None = None, host: str | None = None) -> WebAddress:
    """The worker's bind address and advertised host: as given, else SAGA_WEB_BIND
    (default 127.0.0.1) and SAGA_WEB_HOST.

    Without an advertised host, a worker bound to one address advertises that address (it
    is where it can be reached), and one bound to every interface its host name.
    """
    bind = bind if bind is not None else os.environ.get("SAGA_WEB_BIND", DEFAULT_WEB_BIND)
    host = host or os.environ.get("SAGA_WEB_HOST") or None
    if host is None:
        host = socket.gethostname() if bind in WILDCARD_ADDRESSES else bind
    if host in WILDCARD_ADDRESSES:
        raise ValueError(
            f"the advertised web host {host!r} names no host other workers can reach: "
            "set the worker's address (SAGA_WEB_HOST, saga worker --web-host)"
        )
    return WebAddress(bind, host)


def worker_datadir(app_id: str, address: WebAddress, web_port: int) -> Path:
    """The worker's own folder (table stores, crash marker): named after what no other
    worker on this machine can share, its bind address and port. A worker on the default
    address keeps the name it always had."""
    if address.bind in (DEFAULT_WEB_BIND, *WILDCARD_ADDRESSES):
        name = f"{app_id}-{web_port}"
    else:
        name = f"{app_id}-{address.bind}-{web_port}"
    return settings.local_home() / "workers" / name


def create_app(
    app_id: str,
    *,
    web_port: int,
    web_bind: str | None = None,
    web_host: str | None = None,
    store: str = "rocksdb://",
    tracer_provider: Any = None,
    **overrides: Any,
) -> faust.App:
    """A Faust app wired to the configured cluster with the project's conventions.

    Its web server listens on `web_bind` and is advertised as `web_host` (see
    `web_address` for the defaults). Its records are sent by one confluent-kafka producer
    (`producer_of(app)`), flushed before every offset commit with the changelogs of its
    RowTables. It makes a span per record it handles when an OTLP endpoint is configured,
    or on `tracer_provider` (an OpenTelemetry TracerProvider) if given
    (`messaging.tracing`).
    """
    codec.register_faust_codec()
    address = web_address(web_bind, web_host)
    datadir = worker_datadir(app_id, address, web_port)
    datadir.parent.mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {
        "broker": ";".join(f"kafka://{b}" for b in settings.bootstrap_servers().split(",")),
        "broker_credentials": settings.faust_broker_credentials(),
        "store": store,
        "datadir": str(datadir),
        "key_serializer": "raw",
        "value_serializer": "raw",
        "consumer_auto_offset_reset": "earliest",
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "topic_disable_leader": True,  # no leader topic: nothing here needs a leader
        "table_standby_replicas": 0,
        "stream_recovery_delay": 0.5,
        # A killed worker's partitions move after 10 s instead of Kafka's default 45 s.
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 2.0,
        "web_port": web_port,
        "web_bind": address.bind,
        # Faust's canonical URL, http://web_host:web_port, is what other workers send to.
        "web_host": address.host,
    }
    replication = topics.project_topics().replication
    if replication is not None:  # any topic Faust creates is replicated like topics.yaml's
        conf["topic_replication_factor"] = replication.replication_factor
    conf.update(overrides)
    app = faust.App(app_id, **conf)
    producer = KafkaProducer(
        max_linger_ms=float(os.environ.get("SAGA_PRODUCER_LINGER_MS", "20")),
        on_failure=lambda exc: asyncio.ensure_future(app.crash(exc)),
    )
    set_producer_of(app, producer)

    # Faust creates its consumer with fetch_min_bytes=1 and no setting to change it
    # (faust_workarounds.set_fetch_limits).
    fetches = FetchBatching(app, int(os.environ.get("SAGA_FETCH_MAX_WAIT_MS", "25")))
    _FETCHES[app] = fetches
    cpu = CpuScarcity()

    async def adjust_batching() -> None:
        batch = cpu.update()  # only while CPU is scarce (see messaging.cpu)
        producer.adjust_linger(time.monotonic(), batch)
        fetches.adjust(batch=batch)

    app.timer(interval=0.5)(adjust_batching)
    flush_before_commit(app, producer)
    fence_stale_records(app)
    declare_topics_through_metadata(app)
    track_takeovers(app)
    without_sensors(app)
    metrics.install(app, producer)  # after flush_before_commit: it times that flush
    tracing.install(app, tracer_provider, instance=f"{address.host}:{web_port}")
    return app


_FETCHES: weakref.WeakKeyDictionary[faust.App, FetchBatching] = weakref.WeakKeyDictionary()


STOP_FLUSH_SECONDS = 15.0  # below the stop watchdog's grace (faust_workarounds.exit_if_stop_hangs)


def flush_before_commit(app: faust.App, producer: KafkaProducer) -> None:
    """Make every offset commit of `app` wait until the broker has what was sent before.

    Faust flushes its own producer right before it commits offsets (and before it gives
    partitions up in a rebalance); what goes out through `producer` is not Faust's, so
    that flush is extended, in the crash-safe order: the outputs of the records processed
    so far are acknowledged, then the RowTables' changed rows are sent to their changelogs
    and acknowledged, then written to the stores, then Faust commits. If a record was not
    delivered, the flush raises and nothing is written to the stores or committed (the
    producer also stops the worker): the inputs are processed again after the restart.
    One flush runs at a time (commits and rebalances both flush).
    """
    one_at_a_time = asyncio.Lock()

    async def flush() -> None:  # then Faust's own flush, then its commit
        async with one_at_a_time:
            # While the worker stops, the broker may be away: wait a bounded time, then
            # give up (nothing is written back or committed; the stop is not clean, so
            # the next start restores the tables from the changelogs).
            timeout = STOP_FLUSH_SECONDS if app.should_stop else None
            # The rows changed so far; their records' outputs were sent before this call.
            changes = [(t, t.take_changes()) for t in row_tables(app)]
            await producer.flush(timeout)  # outputs first: a durable row implies its outputs are
            if sum([table.send_changes(rows, producer) for table, rows in changes if rows]):
                await producer.flush(timeout)
            for table, rows in changes:
                if rows:
                    table.write_back(rows)

    extend_producer_flush(app, flush)

    async def forget_cached_rows(*_args: Any, **_kwargs: Any) -> None:
        for table in row_tables(app):
            table.forget_cached_rows()

    app.on_partitions_revoked.connect(forget_cached_rows)
    app.on_partitions_assigned.connect(forget_cached_rows)


def raw_topic(app: faust.App, *names: str) -> faust.TopicT:
    """A topic (or several read by one agent) with raw bytes keys and values."""
    return app.topic(
        *names,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=topics.partitions(names[0]),
    )


def typed_table(app: faust.App, name: str) -> RowTable:
    """A RocksDB (rocksdict) RowTable of Avro-encoded rows keyed by raw bytes.

    Its partition count comes from the changelog topic declared in topics.yaml.
    """
    changelog = f"{app.conf.id}-{name}-changelog"
    spec = topics.project_topics().topics[changelog]
    # Recovery decodes changelog records with the changelog topic's serializers while the
    # store keeps the raw bytes: raw avoids decoding every row on recovery (Faust would
    # otherwise default to json and drop every record it cannot parse).
    changelog_topic = app.topic(
        changelog,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=spec.partitions,
        replicas=spec.replication_factor,
        compacting=True,
        acks=False,
        internal=True,
    )
    table: Any = app.tables.add(
        RowTable(
            app,
            name=name,
            key_type=bytes,
            beacon=app.tables.beacon,
            partitions=spec.partitions,
            changelog_topic=changelog_topic,
            options={"driver": "rocksdict"},
            help=spec.doc,
        )
    )
    set_value_serializer(table, "saga-avro")
    return table


class Sender:
    """Encodes messages and sends them with the app's producer (raw key, Avro value)."""

    def __init__(self, app: faust.App) -> None:
        self.producer = producer_of(app)

    def send(
        self,
        topic: str,
        key: bytes,
        message: object,
        partition: int | None = None,
        headers: tracing.Headers | None = None,
    ) -> int:
        """Queue the message (with `headers`: its trace context); returns its epoch
        (KafkaProducer.wait_delivered)."""
        return self.producer.send(
            topic, key, codec.encode(message), partition=partition, headers=headers
        )


Row = tuple[RowTable, bytes, Any]  # (table, key, row) to write
_ABSENT = object()


class WriteAfterSend:
    """Writes a record's table rows only once the broker has its outputs, without stalling.
    A row given as None is deleted, by the same path (its outputs acknowledged first).

    Writing the row first would let a crash keep a transition whose outputs were lost (the
    re-processed input then finds itself stale and nothing re-sends them). Waiting for the
    broker's acknowledgement before the next record, though, bounds an agent to one round
    trip per record. So the agent `submit`s each record with its outputs and rows and goes
    on; the rows are staged (`read` sees them) while `run`, a task of the agent, takes the
    records strictly in submitted order, waits for their outputs (the producer's epoch
    they were sent in), writes their rows and only then acks them, so their offsets can be
    committed. The agent's stream must not ack by itself (`stream.noack()`).
    """

    def __init__(self, app: faust.App, sender: Sender, max_in_flight: int = 1000) -> None:
        self.app = app
        self.sender = sender
        self.staged: dict[tuple[int, bytes], Any] = {}  # (id(table), key) -> newest row
        self.queue: asyncio.Queue[tuple[StreamT, EventT, int, list[Row], Any]]
        self.queue = asyncio.Queue(maxsize=max_in_flight)
        _WRITERS[app] = self  # the newest: an agent makes one per run

    def read(self, table: RowTable, key: bytes) -> Any:
        """The newest row of `key`: staged if a record in flight wrote it, else the table's."""
        staged = self.staged.get((id(table), key), _ABSENT)
        return table.row(key) if staged is _ABSENT else staged

    async def submit(
        self,
        stream: StreamT,
        event: EventT,
        outputs: Iterable[tuple[str, bytes, object]] = (),
        rows: Iterable[Row] = (),
        on_written: Callable[[], None] | None = None,
        headers: tracing.Headers | None = None,
    ) -> None:
        """Send `outputs` now (each with `headers`); once the broker has them, write
        `rows`, call `on_written` and ack `event`. Raises what the producer raises
        (SendFailed): a transport failure, for the caller to stop the worker on."""
        for topic, key, message in outputs:
            self.sender.send(topic, key, message, headers=headers)
        rows = list(rows)
        for table, key, row in rows:
            self.staged[(id(table), key)] = row
        epoch = self.sender.producer.current_epoch  # all its outputs are in it, or before
        await self.queue.put((stream, event, epoch, rows, on_written))

    async def run(self) -> None:
        try:
            while True:
                stream, event, epoch, rows, on_written = await self.queue.get()
                # DeliveryFailed when the producer gave up: order is lost, so the worker
                # stops; what was not acked is processed again after the restart.
                await self.sender.producer.wait_delivered(epoch)
                with processing(event):
                    for table, key, row in rows:
                        if row is None:  # deleted: a tombstone at the next write-back
                            del table[key]
                        else:
                            table[key] = row
                        if self.staged.get((id(table), key), _ABSENT) is row:
                            del self.staged[(id(table), key)]
                if on_written is not None:
                    on_written()
                await stream.ack(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Nothing after this record may be written or acked out of order: stop.
            log.critical("writing a record's rows failed: stopping the worker", exc_info=exc)
            await self.app.crash(exc)


_WRITERS: weakref.WeakKeyDictionary[faust.App, WriteAfterSend] = weakref.WeakKeyDictionary()


def row_in_flight(app: faust.App, table: Any, key: bytes) -> bool:
    """Is a row of `key` waiting for its record's outputs to be acknowledged? Those
    outputs (a saga's event) may already be read elsewhere while the row is not written."""
    writer = _WRITERS.get(app)
    return writer is not None and (id(table), key) in writer.staged


async def decoded_events(
    app: faust.App,
    stream: StreamT,
    expected: Mapping[str, tuple[type, ...]],
    key_of: Callable[[object], str] | None = None,
    problem_of: Callable[[object], str | None] | None = None,
) -> AsyncIterator[tuple[EventT, object]]:
    """Yield (event, typed message) for each record of the stream.

    `expected` gives the message types each source topic may carry. A record that cannot
    be decoded, has a type its topic does not carry, whose key disagrees with the message
    (`key_of`) or that is invalid (`problem_of` says why) is sent to the dead-letter topic
    and skipped: one bad record never stops the agent.
    """
    fetches = _FETCHES.get(app)
    tracer = tracing.tracer_of(app)
    async for event in stream.events():
        message = event.message
        if fetches is not None:
            fetches.took(event.value)
        try:
            types = expected.get(message.topic, ())
            if not types:
                raise codec.MessageDecodeError(
                    "unexpected-type", f"no message type is expected on topic {message.topic}"
                )
            value: object = codec.decode_as(event.value, *types)
            problem = None if problem_of is None else problem_of(value)
            if problem is not None:
                raise codec.MessageDecodeError("invalid-message", problem)
            if key_of is not None and event.key != key_of(value).encode():
                raise codec.MessageDecodeError(
                    "key-mismatch",
                    f"record key {event.key!r} is not the message's key {key_of(value)!r}",
                )
        except codec.MessageDecodeError as exc:
            log.warning(
                "dead-lettering %s[%s]@%s: %s",
                message.topic,
                message.partition,
                message.offset,
                exc,
            )
            send_dead_letter(
                producer_of(app),
                event.key,
                event.value,
                exc,
                message.topic,
                message.partition,
                message.offset,
                metrics=metrics.metrics_of(app),
                headers=message.headers,
            )
            if tracer is not None:
                parent = tracing.traceparent_in(message.headers)
                tracer.dead_lettered(message.topic, message.partition, message.offset, parent, exc)
            if not stream.enable_acks:  # Faust commits past it once the records before are
                await stream.ack(event)
            continue
        yield event, value


async def stop_worker(app: faust.App, error: BaseException) -> None:
    """Stop the worker on a failure that is not the input's fault: a record that could not
    be sent (TransportError), or state it cannot run on (StateRefused: a row of an
    earlier release, a saga on a definition version this deploy dropped). The input is
    not dead-lettered: it was not acked, so it is processed again after the restart, and
    its outputs sent again.
    """
    if isinstance(error, StateRefused):
        log.critical("%s", error)
    else:
        log.critical("a record could not be sent: stopping the worker", exc_info=error)
    await app.crash(error)


# Failures that stop the worker instead of dead-lettering the record being processed.
WORKER_FAILURES = (*TransportError, StateRefused)


async def dead_letter_event(app: faust.App, event: EventT, error: Exception) -> None:
    """Dead-letter the record of an event whose processing failed."""
    message = event.message
    log.exception(
        "processing %s[%s]@%s failed; dead-lettering it",
        message.topic,
        message.partition,
        message.offset,
        exc_info=error,
    )
    send_dead_letter(
        producer_of(app),
        event.key,
        event.value,
        error,
        message.topic,
        message.partition,
        message.offset,
        metrics=metrics.metrics_of(app),
        headers=message.headers,
    )
