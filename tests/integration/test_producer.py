"""KafkaProducer (messaging.producer) against the real broker: delivery reports resolve
futures on the event loop, keys land where Faust and Java clients put them, flush waits
for what was sent before it, and a record the broker refuses stops the producer."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka.admin import NewTopic

from bench.kafka_io import admin_client
from messaging import client
from messaging.producer import DeliveryFailed, KafkaProducer, ProducerFailed, SendFailed

pytestmark = pytest.mark.integration


def create_topic(partitions: int, **config: str) -> str:
    name = f"test.producer.{uuid.uuid4().hex[:8]}"
    admin = admin_client()
    for future in admin.create_topics([NewTopic(name, partitions, 1, config=config)]).values():
        future.result()
    return name


async def test_sends_resolve_with_partition_and_offset_by_murmur2(kafka: str) -> None:
    topic = create_topic(4)
    producer = KafkaProducer()
    keys = [f"key-{i}".encode() for i in range(20)]
    delivered = await asyncio.gather(*(producer.send(topic, k, b"v") for k in keys))
    for key, (partition, offset) in zip(keys, delivered, strict=True):
        assert partition == client.partition_for(key, 4)
        assert offset >= 0
    assert producer.outstanding == 0
    producer.close()


async def test_flush_waits_for_what_was_sent_before_it(kafka: str) -> None:
    topic = create_topic(1)
    producer = KafkaProducer(max_linger_ms=50)
    producer.linger_s = 0.05  # held back: the flush hands them over
    sent = [producer.send(topic, b"k", str(i).encode()) for i in range(100)]
    await producer.flush()
    assert all(future.done() and not future.exception() for future in sent)
    offsets = [future.result()[1] for future in sent]
    assert offsets == sorted(offsets)  # one partition: kept in order
    producer.close()


async def test_a_record_over_the_size_limit_is_refused_at_once(kafka: str) -> None:
    producer = KafkaProducer()
    with pytest.raises(SendFailed, match="cannot send to"):
        producer.send(create_topic(1), b"k", b"x" * 1_100_000)
    producer.close()


async def test_a_record_the_broker_refuses_fails_delivery_and_stops_the_producer(
    kafka: str,
) -> None:
    topic = create_topic(1, **{"max.message.bytes": "2000"})
    failures: list[BaseException] = []
    producer = KafkaProducer(on_failure=failures.append)
    refused = producer.send(topic, b"k", b"x" * 10_000)
    with pytest.raises(DeliveryFailed):
        await asyncio.wait_for(refused, 30)
    with pytest.raises((DeliveryFailed, ProducerFailed)):  # whichever librdkafka said first
        await producer.flush(timeout=30)
    assert len(failures) == 1  # reported once, to stop the worker
    with pytest.raises((DeliveryFailed, ProducerFailed)):
        await producer.flush(timeout=30)  # and for good
    producer.close(timeout=1)


async def test_records_sent_together_are_handed_over_together(kafka: str) -> None:
    topic = create_topic(1)
    producer = KafkaProducer()
    first = producer.send(topic, b"k", b"1")
    second = producer.send(topic, b"k", b"2")
    assert producer._held and not first.done()  # held for the rest of the loop's turn
    await asyncio.sleep(0)
    assert not producer._held  # handed over
    assert [(await first)[1] + 1, (await second)[1]] == [(await second)[1]] * 2  # in order
    producer.close()


def test_linger_grows_with_the_rate_only_under_load() -> None:
    producer = KafkaProducer(max_linger_ms=5)
    producer.sent = 500
    assert producer.adjust_linger(producer._adjusted_at + 1.0) == 0.0  # 500/s: none
    producer.sent += 3000
    assert producer.adjust_linger(producer._adjusted_at + 1.0) == pytest.approx(0.003)
    producer.sent += 50_000
    assert producer.adjust_linger(producer._adjusted_at + 1.0) == 0.005  # the maximum
