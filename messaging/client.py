"""Plain confluent-kafka clients for the CLI, tests and benchmarks (no Faust)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from messaging import settings, topics, tracing
from schemas import codec
from schemas import messages as m

EVENTS_TOPIC = "saga.events"
REQUEST_TOPIC = "orders.requested"
OPERATIONS_TOPIC = "saga.operations"
ANSWERS_TOPIC = "saga.operations.answers"


class ClientError(RuntimeError):
    """The cluster could not be reached or answered with an error."""


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Faust (aiokafka) and Java clients pick for a key: murmur2."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def producer(**extra: Any) -> Producer:
    # murmur2_random: the same partitioner as Faust, so keys land where their table rows live.
    return Producer(
        settings.confluent_config(
            **{"partitioner": "murmur2_random", "linger.ms": 1, "enable.idempotence": True, **extra}
        )
    )


def require_broker(timeout: float = 5.0) -> None:
    # log_level 0: the failure is reported below once, not as librdkafka lines every 50 ms.
    admin = AdminClient(settings.confluent_config(log_level=0))
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ClientError(
            f"cannot reach Kafka at {settings.bootstrap_servers()}: {exc.args[0].str()} "
            "(start it with `saga kafka start`, or set KAFKA_BOOTSTRAP_SERVERS)"
        ) from exc


COORDINATOR_STARTING = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
}


def group_members(group: str, timeout: float = 10.0) -> int:
    """How many consumers are in `group` now: 0 when it is empty or never existed."""
    admin = AdminClient(settings.confluent_config(log_level=0))
    deadline = time.monotonic() + timeout
    while True:
        try:
            future = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
            return len(future.result().members)
        except KafkaException as exc:
            # A fresh broker has no group coordinator until its offsets topic is loaded.
            error = exc.args[0]
            waiting = error.retriable() or error.code() in COORDINATOR_STARTING
            if not waiting or time.monotonic() > deadline:
                raise ClientError(
                    f"cannot describe consumer group {group}: {error.name()} {error.str()}"
                ) from exc
            time.sleep(0.2)


def worker_urls(service: str, timeout: float = 10.0) -> list[str]:
    """The URLs the running workers of `service` advertise (empty when none runs).

    Each Faust worker puts its canonical URL (`--web-host`, `--web-port`) in the metadata
    of its consumer group membership, where Faust's router finds the owner of a key; the
    group's description carries it, which confluent-kafka's admin client does not expose.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    group = settings.APP_IDS[service]

    async def describe() -> list[Any]:
        admin = AIOKafkaAdminClient(
            **settings.aiokafka_options(), request_timeout_ms=int(timeout * 1000)
        )
        await admin.start()
        try:
            return await admin.describe_consumer_groups([group])
        finally:
            await admin.close()

    try:
        responses = asyncio.run(asyncio.wait_for(describe(), timeout))
    except Exception as exc:
        raise ClientError(
            f"cannot describe consumer group {group} at {settings.bootstrap_servers()}: "
            f"{exc or type(exc).__name__}"
        ) from exc
    urls: set[str | None] = set()
    for response in responses:
        for error_code, _group, _state, _protocol_type, _protocol, members, *_ in response.groups:
            if error_code:
                raise ClientError(f"cannot describe consumer group {group}: error {error_code}")
            urls.update(member_url(member[3]) for member in members)
    return sorted(url for url in urls if url)


def member_url(metadata: bytes) -> str | None:
    """The URL in a Faust worker's group member metadata (None: not a Faust worker's)."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

    try:
        user_data = ConsumerProtocolMemberMetadata.decode(metadata).user_data
        url = json.loads(user_data)["url"]
    except Exception:
        return None
    return url if isinstance(url, str) and url else None


def end_offset(consumer_: Consumer, partition: TopicPartition, timeout: float = 30.0) -> int:
    """The partition's end offset, waiting out a freshly created topic's leader election."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _low, high = consumer_.get_watermark_offsets(partition, timeout=10)
            return int(high)
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise ClientError(f"no end offset for {partition.topic}: {exc}") from exc
            time.sleep(0.2)


def wait_until_processed(group: str, topic: str, timeout: float = 60.0) -> bool:
    """Wait until `group` has committed `topic` up to its end as of now, so a worker's
    views include everything written before the call. False if it did not in `timeout`."""
    consumer_ = consumer(group)  # reads the group's commits, never joins it
    try:
        wanted = [TopicPartition(topic, p) for p in range(topics.partitions(topic))]
        ends = {tp.partition: end_offset(consumer_, tp) for tp in wanted}
        deadline = time.monotonic() + timeout
        while True:
            committed = consumer_.committed(wanted, timeout=10)
            if all(max(tp.offset, 0) >= ends[tp.partition] for tp in committed):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
    finally:
        consumer_.close()


def send(
    producer_: Producer,
    topic: str,
    key: str,
    message: object,
    headers: tracing.Headers | None = None,
) -> None:
    """Produce `message` (with `headers`: a request starts its saga's trace with
    `tracing.new_trace_headers()`)."""
    options: dict[str, Any] = {"headers": headers} if headers else {}
    producer_.produce(topic, key=key.encode(), value=codec.encode(message), **options)


def flush(producer_: Producer, timeout: float = 15.0) -> None:
    remaining = producer_.flush(timeout)
    if remaining:
        raise ClientError(f"{remaining} message(s) not delivered to {settings.bootstrap_servers()}")


def order_requested(
    customer_id: str, items: Iterable[tuple[str, int]], order_id: str | None = None
) -> m.OrderRequested:
    from messaging.faust_app import utc_now

    return m.OrderRequested(
        order_id=order_id or str(uuid.uuid4()),
        customer_id=customer_id,
        items=[m.OrderItem(product_id=p, quantity=q) for p, q in items],
        requested_at=utc_now(),
    )


def cancel_requested(order_id: str, cancel_id: str | None = None) -> m.CancelOrderRequested:
    from messaging.faust_app import utc_now

    return m.CancelOrderRequested(
        cancel_id=cancel_id or str(uuid.uuid4()), order_id=order_id, requested_at=utc_now()
    )


def operator_action(
    kind: type[m.AbortSaga] | type[m.RetrySaga], saga_id: str, operator: str, reason: str
) -> m.AbortSaga | m.RetrySaga:
    """An operator's action on a saga, with a new action id (its answer echoes it)."""
    from messaging.faust_app import utc_now

    return kind(
        saga_id=saga_id,
        action_id=str(uuid.uuid4()),
        operator=operator,
        reason=reason,
        requested_at=utc_now(),
    )


class ActionAnswers:
    """The orchestrator's answers to operator actions, read from saga.operations.answers
    from its end as it was when this was made: make it before sending the actions, and
    no answer is missed. Reads only the partitions of the given sagas."""

    def __init__(self, saga_ids: Iterable[str]) -> None:
        count = topics.partitions(ANSWERS_TOPIC)
        wanted = sorted({partition_for(s.encode(), count) for s in saga_ids})
        self.consumer = consumer()
        try:
            starts = [
                TopicPartition(
                    ANSWERS_TOPIC, p, end_offset(self.consumer, TopicPartition(ANSWERS_TOPIC, p))
                )
                for p in wanted
            ]
            if starts:
                self.consumer.assign(starts)
        except BaseException:
            self.consumer.close()
            raise

    def wait(self, action_ids: Collection[str], timeout: float) -> Iterator[m.SagaActionAnswered]:
        """Yield the answer to each of `action_ids` as it comes, until all came or
        `timeout` seconds passed."""
        waiting = set(action_ids)
        deadline = time.monotonic() + timeout
        while waiting and time.monotonic() < deadline:
            record = self.consumer.poll(0.2)
            if record is None or record.error() is not None:
                continue
            try:
                answer = codec.decode_as(record.value() or b"", m.SagaActionAnswered)
            except codec.MessageDecodeError:
                continue
            if answer.action_id in waiting:
                waiting.discard(answer.action_id)
                yield answer

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> ActionAnswers:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()


def consumer(group: str | None = None, **extra: Any) -> Consumer:
    return Consumer(
        settings.confluent_config(
            **{
                "group.id": group or f"saga-cli-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                **extra,
            }
        )
    )


def assign_from_time(
    consumer_: Consumer, topic: str, since: datetime, partitions: Iterable[int] | None = None
) -> None:
    """Assign partitions of a topic, starting at the first record at or after `since`."""
    count = topics.partitions(topic)
    wanted = list(partitions) if partitions is not None else list(range(count))
    # The ends first: a partition with nothing that new yet starts at its end as it was
    # *before* the lookup, so a record written meanwhile is read, not skipped.
    ends = {p: end_offset(consumer_, TopicPartition(topic, p)) for p in wanted}
    millis = int(since.timestamp() * 1000)
    offsets = consumer_.offsets_for_times(
        [TopicPartition(topic, p, millis) for p in wanted], timeout=10
    )
    start = [
        TopicPartition(topic, tp.partition, tp.offset if tp.offset >= 0 else ends[tp.partition])
        for tp in offsets
    ]
    consumer_.assign(start)


def follow_sagas(saga_ids: Iterable[str], since: datetime, timeout: float) -> Iterator[m.SagaEvent]:
    """Yield the SagaEvents of the given sagas (from `since`) until all are terminal."""
    waiting = set(saga_ids)
    count = topics.partitions(EVENTS_TOPIC)
    partitions = {partition_for(s.encode(), count) for s in waiting}
    deadline = time.monotonic() + timeout
    consumer_ = consumer()
    try:
        assign_from_time(consumer_, EVENTS_TOPIC, since - timedelta(seconds=5), partitions)
        while waiting and time.monotonic() < deadline:
            record = consumer_.poll(0.2)
            if record is None or record.error() is not None:
                continue
            key = (record.key() or b"").decode("utf-8", "replace")
            if key not in waiting:
                continue
            try:
                event = codec.decode_as(record.value() or b"", m.SagaEvent)
            except codec.MessageDecodeError:
                continue
            yield event
            if event.terminal:
                waiting.discard(key)
    finally:
        consumer_.close()


def saga_events(saga_id: str, timeout: float = 30.0) -> list[m.SagaEvent]:
    """All SagaEvents of one saga so far (reads its partition of saga.events to the end).

    Raises ClientError rather than answer from part of the partition.
    """
    return [event for event, _trace in traced_saga_events(saga_id, timeout)]


def traced_saga_events(saga_id: str, timeout: float = 30.0) -> list[tuple[m.SagaEvent, str | None]]:
    """`saga_events`, each with the trace id of its record (None: it carries none)."""
    count = topics.partitions(EVENTS_TOPIC)
    partition = partition_for(saga_id.encode(), count)
    consumer_ = consumer()
    events = []
    try:
        high = end_offset(consumer_, TopicPartition(EVENTS_TOPIC, partition))
        consumer_.assign([TopicPartition(EVENTS_TOPIC, partition, 0)])
        deadline = time.monotonic() + timeout
        position = 0
        while position < high and time.monotonic() < deadline:
            record = consumer_.poll(0.5)
            if record is None or record.error() is not None:
                continue
            position = (record.offset() or 0) + 1
            if record.key() != saga_id.encode():
                continue
            try:
                event = codec.decode_as(record.value() or b"", m.SagaEvent)
            except codec.MessageDecodeError:
                continue
            events.append((event, tracing.trace_id_in(record.headers())))
        if position < high:
            raise ClientError(
                f"read {EVENTS_TOPIC}[{partition}] up to offset {position} of {high} in "
                f"{timeout:.0f}s: too slow to find every event of saga {saga_id}"
            )
    finally:
        consumer_.close()
    return sorted(events, key=lambda traced: traced[0].sequence)


def table_rows(changelog_topic: str, timeout: float = 30.0) -> dict[bytes, object]:
    """The latest row per key of a table, read from its changelog topic to the current end.

    An independent view of a service's state (no worker involved), for checks and tests.
    """
    consumer_ = consumer()
    rows: dict[bytes, object] = {}
    try:
        count = topics.partitions(changelog_topic)
        ends = {}
        for partition in range(count):
            _low, high = consumer_.get_watermark_offsets(
                TopicPartition(changelog_topic, partition), timeout=timeout
            )
            if high > 0:
                ends[partition] = high
        consumer_.assign([TopicPartition(changelog_topic, p, 0) for p in ends])
        positions = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + timeout
        while any(positions[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise ClientError(f"timed out reading {changelog_topic}")
            record = consumer_.poll(0.5)
            if record is None or record.error() is not None:
                continue
            positions[record.partition() or 0] = (record.offset() or 0) + 1
            key = record.key() or b""
            value = record.value()
            if value is None:
                rows.pop(key, None)  # tombstone
            else:
                rows[key] = codec.decode(value)
    finally:
        consumer_.close()
    return rows
