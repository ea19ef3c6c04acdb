"""Dead letters read back and put back on their source topic (`saga dead-letters`).

A dead letter (messaging/dead_letters.py) is the record as it was read, its key, value
and headers, plus headers saying why and where it came from. Replaying it produces the
same key, value and original headers to the same partition of its source topic, with a
`replayed-from` header naming the record it copies.

**Once.** Which records were replayed is kept in `saga.dead-letters.replayed`, a
compacted topic keyed by the dead-lettered record's source topic/partition/offset (not
the dead letter's own offset: a worker that crashes after dead-lettering a record
dead-letters it again when it re-reads it, and both dead letters are the same record).
Each replay writes a *pending* marker, then the copy, then a *done* marker with the
copy's offset, each acknowledged before the next. A replay that stopped between the
two markers left a pending one: the next replay reads the source partition from that
marker's time on for a record whose `replayed-from` names it, and marks it done instead
of replaying it again if one is there. So a replay run twice, or after a crash,
puts each record back once. Two replays run at the same moment are not kept apart (no
lock: each may copy a record neither saw marked; the workers' handlers are idempotent, so
such a duplicate changes nothing, but run one at a time).

**Refused**, with the reason, and never replayed: a record that still does not decode
with the project's codec (schemas/), one whose value was dropped when dead-lettered
(too large), one without its source headers or from a topic no worker reads, and one
dead-lettered longer ago than the retention: its saga may have been forgotten since,
and a command replayed then could act on state no saga tracks any more (a payment
authorized for a saga that no longer exists would never be refunded).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from messaging import client, settings, topics
from messaging.dead_letters import DEAD_LETTER_TOPIC
from schemas import codec
from schemas import messages as m

REPLAYED_TOPIC = "saga.dead-letters.replayed"
REPLAYED_FROM = "replayed-from"  # header of a copy: the key of the record it copies
# What send_dead_letter adds; every other header of a dead letter is the record's own.
DEAD_LETTER_HEADERS = frozenset({
    "error", "error.reason", "source.topic", "source.partition", "source.offset",
    "dead_lettered_at", "value.dropped",
})  # fmt: skip
# The topics workers read (a dead letter comes from one of them): the services' inputs
# and the operator actions the orchestrator reads.
REPLAYABLE_TOPICS = frozenset(
    {topic for inputs in settings.INPUT_TOPICS.values() for topic in inputs} | {"saga.operations"}
)
# A pending marker's copy is looked for from a little before the marker was written
# (the clocks of the producer and the broker's log append time may differ).
CLOCK_MARGIN = timedelta(minutes=1)

Headers = tuple[tuple[str, bytes], ...]


# ---- a dead letter, as read ----


@dataclass(frozen=True)
class DeadLetter:
    partition: int  # in saga.dead-letters
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: datetime | None = None  # of the dead letter, by the broker

    def header(self, name: str) -> str | None:
        """A header's value (the last one of that name) as text."""
        found = [value for header, value in self.headers if header == name]
        return found[-1].decode("utf-8", "replace") if found else None

    def _number(self, name: str) -> int | None:
        text = self.header(name)
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

    @property
    def source_topic(self) -> str | None:
        return self.header("source.topic") or None

    @property
    def source_partition(self) -> int | None:
        return self._number("source.partition")

    @property
    def source_offset(self) -> int | None:
        return self._number("source.offset")

    @property
    def reason(self) -> str | None:
        return self.header("error.reason")

    @property
    def error(self) -> str | None:
        return self.header("error")

    @property
    def value_dropped(self) -> int | None:
        """The size of a value too large to be dead-lettered with it (None: kept)."""
        return self._number("value.dropped")

    @property
    def dead_lettered_at(self) -> datetime | None:
        text = self.header("dead_lettered_at")
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
        except ValueError:
            moment = None
        if moment is not None and moment.utcoffset() is None:
            moment = moment.replace(tzinfo=UTC)
        return moment or self.timestamp

    @property
    def marker_key(self) -> str | None:
        """The record's identity: where it was read (None without the source headers)."""
        topic, partition, offset = self.source_topic, self.source_partition, self.source_offset
        if topic is None or partition is None or offset is None:
            return None
        return f"{topic}/{partition}/{offset}"

    @property
    def original_headers(self) -> Headers:
        """The record's own headers: without the dead letter's, and without the
        replayed-from of an earlier replay (its copy gets its own)."""
        return tuple(
            (name, value)
            for name, value in self.headers
            if name not in DEAD_LETTER_HEADERS and name != REPLAYED_FROM
        )


def dead_letter_of(record: Message) -> DeadLetter:
    partition, offset = record.partition(), record.offset()
    assert partition is not None and offset is not None  # a consumed record has both
    raw = record.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else list(raw)
    headers = tuple(
        (name, value if isinstance(value, bytes) else (value or "").encode())
        for name, value in pairs
    )
    kind, millis = record.timestamp()
    moment = datetime.fromtimestamp(millis / 1000, UTC) if kind and millis >= 0 else None
    return DeadLetter(partition, offset, record.key(), record.value(), headers, moment)


# ---- which dead letters ----


@dataclass(frozen=True)
class Filter:
    reason: str | None = None  # error.reason
    topic: str | None = None  # source topic
    offsets: frozenset[int] = frozenset()  # offsets in saga.dead-letters

    @property
    def empty(self) -> bool:
        return self.reason is None and self.topic is None and not self.offsets

    def keeps(self, letter: DeadLetter) -> bool:
        return (
            (self.reason is None or letter.reason == self.reason)
            and (self.topic is None or letter.source_topic == self.topic)
            and (not self.offsets or letter.offset in self.offsets)
        )


# ---- what to do with one ----


class Verdict(enum.Enum):
    REPLAY = "replay"
    DONE = "replayed already"
    PENDING = "a replay began"  # look for its copy before replaying again
    REFUSED = "refused"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    why: str


def decide(
    letter: DeadLetter,
    marker: m.DeadLetterReplayed | None,
    now: datetime,
    max_age: timedelta,
    replayable: Collection[str] = REPLAYABLE_TOPICS,
    partitions: Callable[[str], int] = topics.partitions,
) -> Decision:
    """What a replay does with `letter`, given its marker (None: never replayed)."""
    if letter.marker_key is None:
        return Decision(
            Verdict.REFUSED,
            "no source.topic/source.partition/source.offset headers: where it came from is unknown",
        )
    if marker is not None and marker.replayed_offset is not None:
        return Decision(
            Verdict.DONE,
            f"replayed already, to {marker.source_topic}[{marker.source_partition}]"
            f"@{marker.replayed_offset}, by {marker.operator} at {marker.at:%Y-%m-%d %H:%M:%S}",
        )
    topic = letter.source_topic or ""  # not None: it has a marker key
    if topic not in replayable:
        return Decision(
            Verdict.REFUSED,
            f"{topic} is not a topic a worker reads (replayable: {', '.join(sorted(replayable))})",
        )
    owner = None if letter.key is None else client.partition_for(letter.key, partitions(topic))
    if owner is not None and owner != letter.source_partition:
        return Decision(
            Verdict.REFUSED,
            f"its key belongs to partition {owner} of {topic}, not to its source partition "
            f"{letter.source_partition}: put back there, it would miss its key's rows",
        )
    if letter.value is None:
        dropped = letter.value_dropped
        why = (
            f"its value ({dropped} bytes) was dropped when it was dead-lettered (too large)"
            if dropped is not None
            else "it has no value"
        )
        return Decision(Verdict.REFUSED, f"{why}: nothing to put back")
    try:
        decoded = codec.decode(letter.value)
    except codec.MessageDecodeError as exc:
        return Decision(Verdict.REFUSED, f"still does not decode ({exc.reason}: {exc.message})")
    if marker is not None:
        return Decision(
            Verdict.PENDING,
            f"a replay by {marker.operator} began at {marker.at:%Y-%m-%d %H:%M:%S} and did "
            "not finish: looking for its copy",
        )
    at = letter.dead_lettered_at
    if at is None or now - at > max_age:
        age = "at an unknown time" if at is None else f"{_days(now - at)} ago"
        return Decision(
            Verdict.REFUSED,
            f"dead-lettered {age}, longer than the retention ({_days(max_age)}): its saga may "
            "have been forgotten since, and what it asks could act on state no saga tracks",
        )
    return Decision(Verdict.REPLAY, f"decodes as {codec.type_name(decoded)}")


@dataclass(frozen=True)
class Planned:
    letter: DeadLetter
    decision: Decision
    landed: int | None = None  # a pending replay's copy, found there: mark it done


def plan(
    letters: Iterable[DeadLetter],
    markers: Mapping[str, m.DeadLetterReplayed],
    now: datetime,
    max_age: timedelta,
    find_copy: Callable[[m.DeadLetterReplayed], int | None],
) -> list[Planned]:
    """What a replay does with each dead letter: `decide`, with a pending replay's copy
    looked for (`find_copy`: its offset, or None if it never landed), and a record
    dead-lettered twice replayed once."""
    planned, seen = [], set()
    for letter in letters:
        key = letter.marker_key
        marker = None if key is None else markers.get(key)
        decision, landed = decide(letter, marker, now, max_age), None
        if decision.verdict is Verdict.PENDING and marker is not None:
            landed = find_copy(marker)
            if landed is None:  # it never landed: decided as if never replayed
                decision = decide(letter, None, now, max_age)
            else:
                decision = Decision(
                    Verdict.DONE,
                    f"replayed already, to {marker.source_topic}[{marker.source_partition}]"
                    f"@{landed}, by {marker.operator} (a replay that stopped before marking it)",
                )
        if decision.verdict is Verdict.REPLAY and key in seen:
            decision = Decision(Verdict.DONE, f"the same record as a dead letter above ({key})")
        if key is not None:
            seen.add(key)
        planned.append(Planned(letter, decision, landed))
    return planned


def _days(span: timedelta) -> str:
    hours = span.total_seconds() / 3600
    return f"{hours / 24:.1f} days" if hours >= 24 else f"{hours:.1f} hours"


# ---- reading (I/O) ----


def _read_to_end(
    topic: str, starts: Mapping[int, int] | None = None, timeout: float = 30.0
) -> Iterator[Message]:
    """Every record of `topic` (its partitions from `starts`, else all from the start) up
    to the end each partition had when called."""
    consumer = client.consumer()
    try:
        described = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if described is None or described.error is not None:
            raise client.ClientError(
                f"topic {topic} does not exist: create it with `saga topics apply`"
            )
        begin = starts if starts is not None else dict.fromkeys(range(topics.partitions(topic)), 0)
        ends = {p: client.end_offset(consumer, TopicPartition(topic, p)) for p in begin}
        pending = {p for p in begin if begin[p] < ends[p]}
        if not pending:
            return
        consumer.assign([TopicPartition(topic, p, begin[p]) for p in sorted(pending)])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise client.ClientError(f"timed out reading {topic} to its end")
            record = consumer.poll(0.5)
            if record is not None and record.error() is None:
                partition, offset = record.partition(), record.offset()
                assert partition is not None and offset is not None
                if offset < ends[partition]:
                    yield record
            # By position, not by the last record: compaction leaves gaps in offsets.
            for position in consumer.position([TopicPartition(topic, p) for p in pending]):
                if position.offset >= ends[position.partition]:
                    pending.discard(position.partition)
    finally:
        consumer.close()


def dead_letters(timeout: float = 30.0) -> list[DeadLetter]:
    """Every dead letter so far, in offset order per partition."""
    return [dead_letter_of(record) for record in _read_to_end(DEAD_LETTER_TOPIC, timeout=timeout)]


def markers(timeout: float = 30.0) -> dict[str, m.DeadLetterReplayed]:
    """The latest replay marker per dead-lettered record (key source topic/partition/offset)."""
    found: dict[str, m.DeadLetterReplayed] = {}
    for record in _read_to_end(REPLAYED_TOPIC, timeout=timeout):
        key = (record.key() or b"").decode("utf-8", "replace")
        if record.value() is None:
            found.pop(key, None)
            continue
        try:
            found[key] = codec.decode_as(record.value() or b"", m.DeadLetterReplayed)
        except codec.MessageDecodeError:
            continue  # not ours: ignored
    return found


def copy_of(marker: m.DeadLetterReplayed, timeout: float = 30.0) -> int | None:
    """The offset of the copy a pending replay made, if it landed: the record of the
    marker's source partition, written since shortly before the marker, whose
    replayed-from names the marker's record."""
    key = f"{marker.source_topic}/{marker.source_partition}/{marker.source_offset}".encode()
    consumer: Consumer = client.consumer()
    try:
        millis = int((marker.at - CLOCK_MARGIN).timestamp() * 1000)
        (start,) = consumer.offsets_for_times(
            [TopicPartition(marker.source_topic, marker.source_partition, millis)], timeout=10
        )
    finally:
        consumer.close()
    if start.offset < 0:  # nothing written since then
        return None
    starts = {marker.source_partition: start.offset}
    for record in _read_to_end(marker.source_topic, starts, timeout):
        headers = record.headers() or []
        pairs = headers.items() if isinstance(headers, dict) else headers
        if any(name == REPLAYED_FROM and value == key for name, value in pairs):
            return record.offset()
    return None


# ---- replaying (I/O) ----


def marker(
    letter: DeadLetter, operator: str, now: datetime, replayed_offset: int | None = None
) -> m.DeadLetterReplayed:
    assert letter.source_topic is not None
    return m.DeadLetterReplayed(
        source_topic=letter.source_topic,
        source_partition=letter.source_partition or 0,
        source_offset=letter.source_offset or 0,
        dead_letter_partition=letter.partition,
        dead_letter_offset=letter.offset,
        replayed_offset=replayed_offset,
        operator=operator,
        at=now,
    )


def _send_marker(producer: Producer, key: str, value: m.DeadLetterReplayed) -> None:
    producer.produce(REPLAYED_TOPIC, key=key.encode(), value=codec.encode(value))


def replay(letters: Iterable[DeadLetter], operator: str, now: datetime) -> dict[int, int]:
    """Put `letters` back on their source partitions (each decided REPLAY): pending
    markers, then the copies, then done markers, each step acknowledged by the broker
    before the next. Returns dead letter offset -> the copy's offset."""
    chosen = list(letters)
    producer = client.producer()
    for letter in chosen:
        _send_marker(producer, letter.marker_key or "", marker(letter, operator, now))
    client.flush(producer)
    landed: dict[int, int] = {}
    failed: list[str] = []

    def delivered(letter: DeadLetter) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, record: Message) -> None:
            if error is not None:
                failed.append(f"{letter.marker_key}: {error}")
            else:
                offset = record.offset()
                assert offset is not None
                landed[letter.offset] = offset

        return report

    for letter in chosen:
        assert letter.source_topic is not None and letter.source_partition is not None
        headers: list[tuple[str, str | bytes | None]] = [
            *letter.original_headers,
            (REPLAYED_FROM, (letter.marker_key or "").encode()),
        ]
        producer.produce(
            letter.source_topic,
            key=letter.key,
            value=letter.value,
            partition=letter.source_partition,
            headers=headers,
            on_delivery=delivered(letter),
        )
    client.flush(producer)
    if failed:
        raise client.ClientError(
            f"{len(failed)} record(s) not put back (their pending markers stay: the next "
            f"replay looks for them): {'; '.join(failed)}"
        )
    for letter in chosen:
        done = marker(letter, operator, now, landed[letter.offset])
        _send_marker(producer, letter.marker_key or "", done)
    client.flush(producer)
    return landed


def mark_done(letter: DeadLetter, pending: m.DeadLetterReplayed, offset: int) -> None:
    """Record that a pending replay's copy landed at `offset`."""
    from dataclasses import replace

    producer = client.producer()
    _send_marker(producer, letter.marker_key or "", replace(pending, replayed_offset=offset))
    client.flush(producer)
