"""KafkaProducer (messaging.producer) against the real broker: deliveries are counted per
epoch, keys land where Faust and Java clients put them, a flush waits for what was sent
before it, and a record the broker refuses stops the producer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka.admin import NewTopic

from bench.kafka_io import admin_client
from messaging import client
from messaging.producer import (
    DeliveryFailed,
    KafkaProducer,
    ProducerFailed,
    SendFailed,
)

pytestmark = pytest.mark.integration


def create_topic(partitions: int, **config: str) -> str:
    name = f"test.producer.{uuid.uuid4().hex[:8]}"
    admin = admin_client()
    for future in admin.create_topics([NewTopic(name, partitions, 1, config=config)]).values():
        future.result()
    return name


async def test_records_land_by_murmur2_and_report_where(kafka: str) -> None:
    topic = create_topic(4)
    producer = KafkaProducer()
    keys = [f"key-{i}".encode() for i in range(20)]
    where: dict[bytes, tuple[int, int]] = {}

    def noting(key: bytes) -> Callable[[tuple[int, int]], None]:
        return lambda delivered: where.__setitem__(key, delivered)

    for key in keys:
        producer.send(topic, key, b"v", on_delivery=noting(key))
    await producer.flush(timeout=30)
    assert producer.outstanding == 0
    for key in keys:
        partition, offset = where[key]
        assert partition == client.partition_for(key, 4) and offset >= 0
    producer.close()


async def test_an_epoch_is_delivered_once_all_its_records_are(kafka: str) -> None:
    topic = create_topic(1)
    producer = KafkaProducer()
    offsets: list[int] = []
    first = producer.send(topic, b"k", b"1", on_delivery=lambda d: offsets.append(d[1]))
    assert producer.delivered < first  # nothing is reported before the broker answers
    await producer.wait_delivered(first, timeout=30)
    assert producer.delivered >= first and len(offsets) == 1
    later = [producer.send(topic, b"k", str(i).encode()) for i in range(100)]
    await producer.flush(timeout=30)
    assert producer.delivered >= max(later) and producer.outstanding == 0
    producer.close()


async def test_records_sent_together_are_handed_over_together(kafka: str) -> None:
    topic = create_topic(1)
    producer = KafkaProducer()
    offsets: list[int] = []
    producer.send(topic, b"k", b"1", on_delivery=lambda d: offsets.append(d[1]))
    producer.send(topic, b"k", b"2", on_delivery=lambda d: offsets.append(d[1]))
    assert len(producer._held) == 2  # held for the rest of the loop's turn
    await asyncio.sleep(0)
    assert not producer._held  # handed over, in order
    await producer.flush(timeout=30)
    assert offsets[1] == offsets[0] + 1
    producer.close()


async def test_a_record_over_the_size_limit_is_refused_at_once(kafka: str) -> None:
    producer = KafkaProducer()
    with pytest.raises(SendFailed, match="more than 1000000"):
        producer.send(create_topic(1), b"k", b"x" * 1_100_000)
    producer.close()


async def test_a_record_the_broker_refuses_stops_the_producer_for_good(kafka: str) -> None:
    topic = create_topic(1, **{"max.message.bytes": "2000"})
    failures: list[BaseException] = []
    producer = KafkaProducer(on_failure=failures.append)
    producer.send(topic, b"k", b"x" * 10_000)
    with pytest.raises((DeliveryFailed, ProducerFailed)):  # whichever librdkafka said first
        await producer.flush(timeout=30)
    assert len(failures) == 1  # reported once, to stop the worker
    with pytest.raises((DeliveryFailed, ProducerFailed)):
        await producer.flush(timeout=30)  # and for good
    producer.close(timeout=1)


def test_linger_grows_with_the_rate_only_under_load() -> None:
    producer = KafkaProducer(max_linger_ms=20)
    producer.sent = 500
    assert producer.adjust_linger(producer._adjusted_at + 1.0) == 0.0  # 500/s: none
    producer.sent += 3000
    assert producer.adjust_linger(producer._adjusted_at + 1.0) == pytest.approx(0.006)
    producer.sent += 3000
    assert producer.adjust_linger(producer._adjusted_at + 1.0, batch=False) == 0.0  # CPU idle
    producer.sent += 50_000
    assert producer.adjust_linger(producer._adjusted_at + 1.0) == 0.020  # the maximum
