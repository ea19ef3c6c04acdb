"""KafkaProducer (messaging.producer) without a broker: librdkafka is replaced by a stand-in
whose delivery reports the test hands out, so what `delivered`, `wait_delivered`, `flush`
and `outstanding` say can be checked record by record. These are the facts write-after-send
and the commit hook rely on: an epoch counts as delivered only when it and every earlier
one are, and a failure is never forgotten."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from messaging import producer as producer_module
from messaging.producer import DeliveryFailed, KafkaProducer, ProducerFailed, SendFailed


class Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._topic, self._partition, self._offset = topic, partition, offset

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


class Librdkafka:
    """Stands in for confluent_kafka.Producer: keeps what was produced; `poll` hands out
    the delivery reports the test released with `deliver`/`fail`."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, dict[str, Any]]] = []
        self.reports: list[tuple[Any, Any, Message]] = []
        self.full = 0  # produce raises BufferError this many times
        self.polls: list[float] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        self.produced.append((topic, kwargs))

    def deliver(self, index: int, error: Any = None) -> None:
        topic, kwargs = self.produced[index]
        message = Message(topic, kwargs.get("partition", 0), index)
        self.reports.append((kwargs["on_delivery"], error, message))

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        reports, self.reports = self.reports, []
        for on_delivery, error, message in reports:
            on_delivery(error, message)
        return len(reports)

    def flush(self, timeout: float) -> int:
        return 0


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> Librdkafka:
    fake = Librdkafka()
    monkeypatch.setattr(producer_module.confluent_kafka, "Producer", lambda *a, **k: fake)
    return fake


async def turn() -> None:
    """Let the event loop hand records over and poll for reports (a few ticks)."""
    await asyncio.sleep(producer_module.POLL_SECONDS * 3)


async def test_an_epoch_is_delivered_only_once_each_of_its_records_is(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    epoch = producer.send("t", b"k", b"1")
    assert producer.send("t", b"k", b"2") == epoch  # same tick, same epoch
    await turn()
    assert len(kafka.produced) == 2 and producer.outstanding == 2
    kafka.deliver(0)
    await turn()
    assert producer.delivered < epoch and producer.outstanding == 1
    kafka.deliver(1)
    await turn()
    assert producer.delivered >= epoch and producer.outstanding == 0


async def test_a_later_epoch_delivered_first_does_not_deliver_an_earlier_one(
    kafka: Librdkafka,
) -> None:
    producer = KafkaProducer()
    first = producer.send("t", b"a", b"1")
    await turn()
    second = producer.send("t", b"b", b"2")
    await turn()
    assert second > first
    kafka.deliver(1)  # the later record is reported first (another partition)
    await turn()
    assert producer.delivered < first
    waiter = asyncio.ensure_future(producer.wait_delivered(second, timeout=5))
    await turn()
    assert not waiter.done()
    kafka.deliver(0)
    await turn()
    await waiter
    assert producer.delivered >= second


async def test_records_sent_while_a_flush_waits_are_not_part_of_it(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    producer.send("t", b"a", b"1")
    flush = asyncio.ensure_future(producer.flush(timeout=5))
    await turn()
    later = producer.send("t", b"b", b"2")  # processed meanwhile
    await turn()
    kafka.deliver(0)
    await turn()
    await flush  # returns without the later record
    assert producer.delivered < later and producer.outstanding == 1


async def test_a_flush_waits_for_records_not_yet_handed_over(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    producer.send("t", b"a", b"1")
    assert kafka.produced == [] and producer.outstanding == 1  # held for the loop's turn
    flush = asyncio.ensure_future(producer.flush(timeout=5))
    await turn()
    assert not flush.done()
    kafka.deliver(0)
    await turn()
    await flush


async def test_a_record_the_broker_did_not_take_fails_every_wait_for_good(
    kafka: Librdkafka,
) -> None:
    failures: list[BaseException] = []
    producer = KafkaProducer(on_failure=failures.append)
    epoch = producer.send("t", b"a", b"1")
    producer.send("t", b"b", b"2")
    await turn()
    kafka.deliver(0, error="_MSG_TIMED_OUT")
    kafka.deliver(1)
    await turn()
    with pytest.raises(DeliveryFailed, match=r"record to t\[0\] not delivered"):
        await producer.wait_delivered(epoch, timeout=5)
    with pytest.raises(DeliveryFailed):
        await producer.flush(timeout=5)  # and every later one
    assert len(failures) == 1 and producer.failure is failures[0]


async def test_a_flush_gives_up_after_its_timeout(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    producer.send("t", b"a", b"1")
    with pytest.raises(TimeoutError):
        await producer.flush(timeout=0.05)
    assert producer.outstanding == 1


async def test_a_full_librdkafka_queue_is_waited_out_in_order(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    kafka.full = 2
    producer.send("t", b"a", b"1")
    producer.send("t", b"a", b"2")
    await turn()
    assert [kw["value"] for _t, kw in kafka.produced] == [b"1", b"2"]
    assert 0.05 in kafka.polls  # it let deliveries catch up


async def test_a_record_over_the_limit_is_refused_before_it_is_counted(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    limit = producer_module.MAX_RECORD_BYTES
    with pytest.raises(SendFailed):
        producer.send("t", b"k", b"x" * limit)  # key and value together count
    assert producer.outstanding == 0 and producer.sent == 0
    producer.send("t", b"", b"x" * limit)  # exactly the limit is allowed
    assert producer.outstanding == 1


async def test_a_fatal_client_error_stops_the_producer(kafka: Librdkafka) -> None:
    failures: list[BaseException] = []
    producer = KafkaProducer(on_failure=failures.append)

    class Fatal:
        def fatal(self) -> bool:
            return True

    class Transient:
        def fatal(self) -> bool:
            return False

    producer._on_error(Transient())
    assert producer.failure is None
    producer._on_error(Fatal())
    assert isinstance(producer.failure, ProducerFailed) and failures == [producer.failure]


async def test_on_delivery_gets_where_the_record_landed(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    landed: list[tuple[int, int]] = []
    producer.send("t", b"a", b"1", partition=3, on_delivery=landed.append)
    await turn()
    kafka.deliver(0)
    await turn()
    assert landed == [(3, 0)]
