"""Kafka I/O of a chaos run (confluent-kafka, no Faust): reading topics to their end,
the final tables from their changelogs, consumer-group lag, live saga termination and
re-producing real records as duplicates."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from chaos.invariants import DeadLetter
from messaging import client, settings, topics
from messaging.dead_letters import DEAD_LETTER_TOPIC
from schemas import codec
from schemas import messages as m

Offsets = dict[str, dict[int, int]]  # topic -> partition -> offset

# Consumer group (= Faust app id) -> the topics its agents read.
GROUP_TOPICS = {
    settings.APP_IDS[service]: names for service, names in settings.INPUT_TOPICS.items()
}
# librdkafka logs every refused connection while the broker restarts: the run reports
# what matters itself.
QUIET: dict[str, Any] = {"log_level": 0}
# Where real commands and replies are sampled for duplicates.
DUPLICATED_TOPICS = (
    "order.commands",
    "product.commands",
    "payment.commands",
    "saga.replies",
)


def _high_watermark(consumer: Consumer, tp: TopicPartition, timeout: float) -> int:
    """The partition's end offset, retried while leaders move (new topics, a restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return int(consumer.get_watermark_offsets(tp, timeout=5)[1])
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def end_offsets(topic_names: Iterable[str], timeout: float = 60.0) -> Offsets:
    """The current end (high watermark) of every partition of the topics."""
    consumer = client.consumer(None, **QUIET)
    try:
        return {
            topic: {
                partition: _high_watermark(consumer, TopicPartition(topic, partition), timeout)
                for partition in range(topics.partitions(topic))
            }
            for topic in topic_names
        }
    finally:
        consumer.close()


def read_topic(topic: str, start: dict[int, int] | None = None, timeout: float = 120.0) -> list:
    """Every record of `topic` from `start` (default: the beginning) to its current end."""
    ends = end_offsets([topic])[topic]
    begin = start or {}
    wanted = {p: end for p, end in ends.items() if end > begin.get(p, 0)}
    if not wanted:
        return []
    consumer = client.consumer(None, **QUIET)
    records: list[Message] = []
    try:
        consumer.assign([TopicPartition(topic, p, begin.get(p, 0)) for p in wanted])
        positions = {p: begin.get(p, 0) for p in wanted}
        deadline = time.monotonic() + timeout
        while any(positions[p] < wanted[p] for p in wanted):
            if time.monotonic() > deadline:
                raise client.ClientError(f"timed out reading {topic}")
            for record in consumer.consume(1000, 0.5):
                if record.error() is not None:
                    continue
                partition, offset = record.partition() or 0, record.offset() or 0
                positions[partition] = offset + 1
                if offset < wanted[partition]:
                    records.append(record)
        return records
    finally:
        consumer.close()


def table(changelog: str, prefix: str) -> dict[str, Any]:
    """Latest row per key (keys starting with `prefix`) of a table, from its changelog."""
    rows: dict[str, Any] = {}
    raw = prefix.encode()
    for record in read_topic(changelog):
        key = record.key() or b""
        if not key.startswith(raw):
            continue
        value = record.value()
        if value is None:
            rows.pop(key.decode(), None)  # tombstone
        else:
            rows[key.decode()] = codec.decode(value)
    return rows


def saga_events(start: dict[int, int], prefix: str) -> dict[str, list[m.SagaEvent]]:
    """Every SagaEvent of the run's sagas written since `start`, per saga."""
    events: dict[str, list[m.SagaEvent]] = {}
    raw = prefix.encode()
    for record in read_topic("saga.events", start):
        key = record.key() or b""
        if not key.startswith(raw):
            continue
        try:
            event = codec.decode_as(record.value() or b"", m.SagaEvent)
        except codec.MessageDecodeError:
            continue  # injected bad records: checked through the dead letters
        if event.saga_id == key.decode():
            events.setdefault(event.saga_id, []).append(event)
    return events


def dead_letters(start: dict[int, int]) -> list[DeadLetter]:
    """Every dead letter written since `start`."""
    return [
        DeadLetter(
            key=record.key(),
            value=record.value(),
            headers={k: (v or b"").decode("utf-8", "replace") for k, v in record.headers() or []},
        )
        for record in read_topic(DEAD_LETTER_TOPIC, start)
    ]


def lag(timeout: float = 10.0) -> dict[str, int]:
    """Records not yet committed as processed, by "group topic[partition]" (none: empty)."""
    ends = end_offsets({t for names in GROUP_TOPICS.values() for t in names}, timeout)
    behind = {}
    for group, names in GROUP_TOPICS.items():
        consumer = client.consumer(group, **QUIET)  # reads its commits, never joins the group
        try:
            tps = [TopicPartition(t, p) for t in names for p in ends[t]]
            committed = consumer.committed(tps, timeout=timeout)
        finally:
            consumer.close()
        for tp in committed:
            missing = ends[tp.topic][tp.partition] - max(tp.offset, 0)
            if missing > 0:
                behind[f"{group} {tp.topic}[{tp.partition}]"] = missing
    return behind


class TerminalWatch(threading.Thread):
    """Follows saga.events in the background and notes which sagas reached an end; also
    which started (`started`) and whose order the Order Service created
    (`orders_created`), in the order seen: lists that only grow, for other threads."""

    def __init__(self, saga_ids: Iterable[str], start: dict[int, int]) -> None:
        super().__init__(name="terminal-watch", daemon=True)
        self.waiting = {s.encode() for s in saga_ids}
        self.terminal: set[bytes] = set()
        self.started: list[str] = []
        self.orders_created: list[str] = []
        self._seen: set[tuple[bytes, str]] = set()  # (saga, what) noted already
        self.start_offsets = start
        self.stopping = threading.Event()

    def run(self) -> None:
        consumer = client.consumer(None, **QUIET)
        try:
            consumer.assign(
                [TopicPartition("saga.events", p, o) for p, o in self.start_offsets.items()]
            )
            while not self.stopping.is_set():
                for record in consumer.consume(500, 0.5):
                    self._note(record)
        finally:
            consumer.close()

    def _note(self, record: Message) -> None:
        key = record.key()
        if record.error() is not None or key not in self.waiting or key in self.terminal:
            return
        try:
            event = codec.decode_as(record.value() or b"", m.SagaEvent)
        except codec.MessageDecodeError:
            return
        self._note_once(key, "started", self.started)
        if event.trigger == "OrderCreated":
            self._note_once(key, "order", self.orders_created)
        if event.terminal:
            self.terminal.add(key)

    def _note_once(self, key: bytes, what: str, seen_in: list[str]) -> None:
        if (key, what) not in self._seen:
            self._seen.add((key, what))
            seen_in.append(key.decode())

    @property
    def open_count(self) -> int:
        return len(self.waiting) - len(self.terminal)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)


class Duplicator:
    """Samples real commands and replies of the run and re-produces them unchanged (same
    topic, partition, key and value): what a producer retry or a replay would deliver."""

    def __init__(self, start: Offsets, prefix: str, skip: set[bytes], rng: random.Random) -> None:
        self.consumer = client.consumer(None, **QUIET)
        self.consumer.assign(
            [
                TopicPartition(topic, partition, offset)
                for topic, partitions in start.items()
                for partition, offset in partitions.items()
            ]
        )
        self.prefix = prefix.encode()
        self.skip = skip  # the injected bad records' keys: they are not real traffic
        self.recent: deque[tuple[str, int, bytes, bytes]] = deque(maxlen=2000)
        self.rng = rng
        self.sent: Counter[str] = Counter()

    def poll(self) -> None:
        for record in self.consumer.consume(1000, 0):
            key, value = record.key(), record.value()
            if record.error() is not None or key is None or value is None:
                continue
            if key.startswith(self.prefix) and key not in self.skip:
                self.recent.append((record.topic() or "", record.partition() or 0, key, value))

    def inject(self, producer: Producer) -> bool:
        if not self.recent:
            return False
        topic, partition, key, value = self.rng.choice(self.recent)
        producer.produce(topic, key=key, value=value, partition=partition)
        self.sent[topic] += 1
        return True

    def close(self) -> None:
        self.consumer.close()
