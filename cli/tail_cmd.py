"""`saga tail TOPIC`: the records of a project topic as JSON lines, decoded from Avro."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import click
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from messaging import client, topics, tracing
from messaging.jsonable import to_jsonable
from schemas import codec

DEFAULT_LAST = 10
# Reading up to the end must not hang if the broker stops answering mid-way.
IDLE_TIMEOUT = 15.0
CAUGHT_UP = None  # marker yielded by `consume` once every partition is read to its end


def _text(raw: str | bytes | None) -> str | None:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


def _position(record: Message) -> tuple[int, int]:
    """(partition, offset) of a consumed record, which always has both."""
    partition, offset = record.partition(), record.offset()
    assert partition is not None and offset is not None
    return partition, offset


def _iso_timestamp(record: Message) -> str | None:
    kind, millis = record.timestamp()
    if kind == TIMESTAMP_NOT_AVAILABLE:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")


def _headers(record: Message) -> list[tuple[str, str | bytes | None]]:
    headers = record.headers() or []
    return list(headers.items()) if isinstance(headers, dict) else list(headers)


def record_as_json(record: Message) -> dict[str, Any]:
    """One record as the JSON object `saga tail` prints; never raises on bad bytes."""
    line: dict[str, Any] = {
        "topic": record.topic(),
        "partition": record.partition(),
        "offset": record.offset(),
        "timestamp": _iso_timestamp(record),
        "key": _text(record.key()),
        "headers": {name: _text(value) for name, value in _headers(record)},
        # Of a valid traceparent header (messaging/tracing.py): the saga's trace.
        "trace_id": tracing.trace_id_in(_headers(record)),
        "value": None,
    }
    raw = record.value()
    if raw is None:  # a tombstone (compacted changelogs): nothing to decode
        return line
    try:
        line["value"] = to_jsonable(codec.decode(raw))
    except codec.MessageDecodeError as exc:
        line["error"] = f"{exc.reason}: {exc.message}"
    return line


def _known_topic(_ctx: click.Context, _param: click.Parameter, name: str) -> str:
    known = sorted(topics.project_topics().topics)
    if name not in known:
        raise click.BadParameter(
            f"{name!r} is not a topic of topics.yaml; one of: {', '.join(known)}"
        )
    return name


def partitions_to_read(consumer: Consumer, topic: str, key: str | None) -> list[int]:
    """All partitions of the topic on the cluster, or only the one `key` is produced to."""
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise client.ClientError(
            f"topic {topic!r} does not exist on the cluster (run `saga topics apply`)"
        )
    count = len(metadata.partitions)
    if key is not None:
        return [client.partition_for(key.encode(), count)]
    return list(range(count))


def offset_ranges(
    consumer: Consumer, topic: str, partitions: list[int], last: int | None
) -> dict[int, tuple[int, int]]:
    """partition -> (first offset to read, end offset now); `last=None` reads from the start."""
    ranges = {}
    for partition in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        start = low if last is None else max(low, high - last)
        ranges[partition] = (start, high)
    return ranges


def consume(
    consumer: Consumer,
    ends: dict[int, int],
    pending: set[int],
    follow: bool,
    stop: threading.Event | None = None,
) -> Iterator[Message | None]:
    """Yield records up to the `ends` offsets, then CAUGHT_UP; with `follow`, then the rest.

    A partition is done on its last record before the end, or on an end-of-partition
    event (the end may be a transaction marker, which is never delivered as a record).
    """
    later: list[Message] = []  # records past the end that arrive while others catch up
    idle_since = time.monotonic()
    while pending and not (stop is not None and stop.is_set()):
        record = consumer.poll(0.5)
        if record is None:
            if time.monotonic() - idle_since > IDLE_TIMEOUT:
                raise client.ClientError(
                    f"no records for {IDLE_TIMEOUT:.0f}s before the end of the topic"
                )
            continue
        idle_since = time.monotonic()
        error = record.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                pending.discard(_position(record)[0])
            elif error.fatal():
                raise KafkaException(error)
            continue
        partition, offset = _position(record)
        if offset < ends[partition]:
            yield record
        elif follow:
            later.append(record)
        if offset >= ends[partition] - 1:
            pending.discard(partition)
    yield CAUGHT_UP
    if not follow:
        return
    yield from later
    while stop is None or not stop.is_set():
        record = consumer.poll(0.5)
        if record is not None and record.error() is None:
            yield record


def _print(record: Message) -> None:
    click.echo(json.dumps(record_as_json(record)))


def tail_topic(
    topic: str, key: str | None, last: int | None, follow: bool, stop: threading.Event | None = None
) -> None:
    # No group commits: partitions are assigned by hand, so tailing never moves anyone's offsets.
    consumer = client.consumer(None, **{"enable.partition.eof": True})
    try:
        partitions = partitions_to_read(consumer, topic, key)
        # With --key, "the last N" means the last N records of that key: so scan its whole
        # partition and keep the last N that match.
        keep_last = last if key is not None else None
        ranges = offset_ranges(consumer, topic, partitions, None if key is not None else last)
        consumer.assign([TopicPartition(topic, p, start) for p, (start, _end) in ranges.items()])
        ends = {p: end for p, (_start, end) in ranges.items()}
        pending = {p for p, (start, end) in ranges.items() if start < end}
        wanted_key = None if key is None else key.encode()
        backlog: deque[Message] | None = deque(maxlen=keep_last) if keep_last is not None else None
        for record in consume(consumer, ends, pending, follow, stop):
            if record is CAUGHT_UP:
                for kept in backlog or ():
                    _print(kept)
                backlog = None
            elif wanted_key is None or record.key() == wanted_key:
                if backlog is not None:
                    backlog.append(record)
                else:
                    _print(record)
    finally:
        consumer.close()


@click.command()
@click.argument("topic", callback=_known_topic)
@click.option("--from-beginning", is_flag=True, help="Every record up to the current end.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records until Ctrl-C.")
@click.option("--key", default=None, help="Only records with this key (reads only its partition).")
@click.option(
    "--last", type=click.IntRange(min=0), default=None,
    help=f"Records per partition (of KEY with --key) to show; default {DEFAULT_LAST}.",
)  # fmt: skip
def tail(topic: str, from_beginning: bool, follow: bool, key: str | None, last: int | None) -> None:
    """Print the records of TOPIC as JSON lines, values decoded from Avro.

    By default the last 10 records of each partition, then exit. A record that does not
    decode has "value": null and an "error"; dead letters show their headers.
    """
    if from_beginning and last is not None:
        raise click.UsageError("--from-beginning and --last exclude each other")
    per_partition = None if from_beginning else (DEFAULT_LAST if last is None else last)
    stop = threading.Event()
    if follow:
        # Ctrl-C ends --follow between two polls, never inside librdkafka, then closes the
        # consumer: an interrupt raised inside a poll once left the process unable to exit.
        signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())
    try:
        client.require_broker()
        tail_topic(topic, key, per_partition, follow, stop)
    except (client.ClientError, KafkaException) as exc:
        raise click.ClickException(str(exc)) from exc
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends
    except BrokenPipeError:
        # The reader went away (`saga tail ... | head`): stop quietly, and keep Python's
        # final flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
