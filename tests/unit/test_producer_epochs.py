"""KafkaProducer (messaging.producer) without a broker: librdkafka is replaced by a stand-in
whose delivery reports the test hands out, so what `delivered`, `wait_delivered`, `flush`
and `outstanding` say can be checked record by record. These are the facts write-after-send
and the commit hook rely on: an epoch counts as delivered only when it and every earlier
one are, and a failure is never forgotten."""

from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace
from typing import Any

import confluent_kafka
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
        self.config: dict[str, Any] = {}
        self.logger: Any = None
        self.produced: list[tuple[str, dict[str, Any]]] = []
        self.reports: list[tuple[Any, Any, Message]] = []
        self.full = 0  # produce raises BufferError this many times
        self.refusal: BaseException | None = None  # produce raises it, once
        self.fatal: BaseException | None = None  # poll raises it
        self.polls: list[float] = []
        self.flushes: list[float] = []

    def open(self, config: dict[str, Any], logger: Any = None) -> Librdkafka:
        """What confluent_kafka.Producer(config, logger=...) does here."""
        self.config, self.logger = config, logger
        return self

    def produce(self, topic: str, **kwargs: Any) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("queue full")
        if self.refusal is not None:
            refusal, self.refusal = self.refusal, None
            raise refusal
        self.produced.append((topic, kwargs))

    def deliver(self, index: int, error: Any = None) -> None:
        topic, kwargs = self.produced[index]
        message = Message(topic, kwargs.get("partition", 0), index)
        self.reports.append((kwargs["on_delivery"], error, message))

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        if self.fatal is not None:
            raise self.fatal
        reports, self.reports = self.reports, []
        for on_delivery, error, message in reports:
            on_delivery(error, message)
        return len(reports)

    def flush(self, timeout: float) -> int:
        self.flushes.append(timeout)
        return 0


@pytest.fixture
def kafka(monkeypatch: pytest.MonkeyPatch) -> Librdkafka:
    fake = Librdkafka()
    monkeypatch.setattr(producer_module.confluent_kafka, "Producer", fake.open)
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
    await asyncio.wait_for(flush, 5)  # a hang fails the test


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
    with pytest.raises(DeliveryFailed, match=r"^record to t\[0\] not delivered: _MSG_TIMED_OUT$"):
        await producer.wait_delivered(epoch, timeout=5)
    with pytest.raises(DeliveryFailed):
        await producer.flush(timeout=5)  # and every later one
    assert len(failures) == 1 and producer.failure is failures[0]


async def test_a_flush_gives_up_after_its_timeout(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    producer.send("t", b"a", b"1")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(producer.flush(timeout=0.05), 2)  # not the 2 s bound
    assert time.monotonic() - started < 1
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
    with pytest.raises(SendFailed) as refused:
        producer.send("t", b"k", b"x" * limit)  # key and value together count
    assert str(refused.value) == "cannot send to t: a record of 1000001 bytes, more than 1000000"
    assert producer.outstanding == 0 and producer.sent == 0
    producer.send("t", b"", b"x" * limit)  # exactly the limit is allowed
    assert producer.outstanding == 1


async def test_a_fatal_client_error_stops_the_producer(kafka: Librdkafka) -> None:
    failures: list[BaseException] = []
    producer = KafkaProducer(on_failure=failures.append)

    class Fatal:
        def fatal(self) -> bool:
            return True

        def __str__(self) -> str:
            return "Broker: producer fenced"

    class Transient:
        def fatal(self) -> bool:
            return False

    producer._on_error(Transient())
    assert producer.failure is None
    producer._on_error(Fatal())
    assert isinstance(producer.failure, ProducerFailed) and failures == [producer.failure]
    assert str(producer.failure) == "the producer failed: Broker: producer fenced"


async def test_on_delivery_gets_where_the_record_landed(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    landed: list[tuple[int, int]] = []
    producer.send("t", b"a", b"1", partition=3, on_delivery=landed.append)
    await turn()
    kafka.deliver(0)
    await turn()
    assert landed == [(3, 0)]
    await producer.flush(timeout=5)  # and it counts as delivered


async def test_a_record_the_broker_did_not_take_is_not_reported_landed(kafka: Librdkafka) -> None:
    # A changelog record reports where it landed; one that failed must not count.
    producer = KafkaProducer()
    landed: list[tuple[int, int]] = []
    producer.send("t", b"a", b"1", partition=3, on_delivery=landed.append)
    await turn()
    kafka.deliver(0, error="_MSG_TIMED_OUT")
    await turn()
    with pytest.raises(DeliveryFailed, match=r"^record to t\[3\] not delivered: _MSG_TIMED_OUT$"):
        await producer.flush(timeout=5)
    assert landed == []


async def test_the_producer_asks_librdkafka_for_what_the_tables_rely_on(kafka: Librdkafka) -> None:
    KafkaProducer()
    config = kafka.config
    # Idempotent and gapless: each partition's records in order without holes, never
    # given up on while the broker is away (a changelog write-back relies on it).
    assert config["enable.idempotence"] is True and config["enable.gapless.guarantee"] is True
    assert config["message.timeout.ms"] == 0
    assert config["partitioner"] == "murmur2_random"  # where Faust puts a key's table row
    assert config["message.max.bytes"] == producer_module.MAX_RECORD_BYTES
    assert config["error_cb"] is not None


async def test_librdkafka_logs_through_python_without_the_warning_chosen_on_purpose(
    kafka: Librdkafka,
) -> None:
    KafkaProducer()
    logger = kafka.logger
    assert isinstance(logger, logging.Logger)

    def passes(message: str) -> bool:
        record = logger.makeRecord(logger.name, logging.WARNING, "rdkafka", 0, message, (), None)
        return bool(logger.filter(record))

    assert not passes("CONFWARN: enable.gapless.guarantee is experimental")
    assert passes("FAIL: broker down")


async def test_a_record_is_handed_over_with_its_key_value_partition_and_headers(
    kafka: Librdkafka,
) -> None:
    producer = KafkaProducer()
    producer.send("t", b"k", b"v", partition=3, headers=[("error", b"bad")])
    producer.send("u", None, None)
    await turn()
    (topic, record), (other, tombstone) = kafka.produced
    assert (topic, record["key"], record["value"]) == ("t", b"k", b"v")
    assert (record["partition"], record["headers"]) == (3, [("error", b"bad")])
    assert (other, tombstone["key"], tombstone["value"]) == ("u", None, None)
    assert "partition" not in tombstone and "headers" not in tombstone  # librdkafka decides


async def test_a_flush_with_nothing_new_still_waits_for_earlier_records(
    kafka: Librdkafka,
) -> None:
    producer = KafkaProducer()
    producer.send("t", b"a", b"1")
    await turn()  # its epoch is closed; the current one has nothing
    flush = asyncio.ensure_future(producer.flush(timeout=5))
    await turn()
    assert not flush.done()
    kafka.deliver(0)
    await turn()
    await flush


async def test_records_sent_after_everything_was_delivered_are_waited_for(
    kafka: Librdkafka,
) -> None:
    producer = KafkaProducer()
    await producer.flush(timeout=5)  # nothing sent yet
    first = producer.send("t", b"a", b"1")
    flush = asyncio.ensure_future(producer.flush(timeout=5))
    await turn()
    assert not flush.done() and producer.delivered < first
    kafka.deliver(0)
    await turn()
    await flush  # all delivered: the producer stops polling
    later = producer.send("t", b"b", b"2")
    flush = asyncio.ensure_future(producer.flush(timeout=5))
    await turn()
    assert not flush.done() and producer.delivered < later
    kafka.deliver(1)
    await turn()
    await flush
    assert producer.delivered >= later


async def test_the_producer_polls_without_blocking_and_only_while_records_are_out(
    kafka: Librdkafka,
) -> None:
    producer = KafkaProducer()
    producer.send("t", b"a", b"1")
    await turn()
    kafka.deliver(0)
    await turn()
    await producer.flush(timeout=5)
    polls = len(kafka.polls)
    assert polls > 0 and set(kafka.polls) == {0}  # never blocks the event loop
    await turn()
    await turn()
    assert len(kafka.polls) == polls  # nothing out: no polling


async def test_the_producer_polls_once_per_tick_however_many_records_are_sent(
    kafka: Librdkafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    tick = 0.01
    monkeypatch.setattr(producer_module, "POLL_SECONDS", tick)
    producer = KafkaProducer()
    started = time.monotonic()
    for i in range(10):  # none delivered: the producer polls all along
        producer.send("t", b"k", b"%d" % i)
        producer.send("t", b"k", b"%d again" % i)
        await asyncio.sleep(tick)
    elapsed = time.monotonic() - started
    assert len(kafka.polls) <= elapsed / tick + 2


async def test_a_record_librdkafka_refuses_stops_the_producer(kafka: Librdkafka) -> None:
    failures: list[BaseException] = []
    producer = KafkaProducer(on_failure=failures.append)
    kafka.refusal = confluent_kafka.KafkaException("Local: Unknown partition")
    producer.send("t", b"a", b"1", partition=99)
    producer.send("t", b"b", b"2")
    await turn()
    assert isinstance(producer.failure, ProducerFailed) and failures == [producer.failure]
    assert str(producer.failure) == "the producer failed: Local: Unknown partition"
    with pytest.raises(ProducerFailed):  # the refused record is lost: nothing counts
        await producer.flush(timeout=5)


async def test_a_fatal_error_raised_while_polling_stops_the_producer(kafka: Librdkafka) -> None:
    failures: list[BaseException] = []
    producer = KafkaProducer(on_failure=failures.append)
    kafka.fatal = confluent_kafka.KafkaException("Broker: producer fenced")
    producer.send("t", b"a", b"1")
    await turn()
    assert isinstance(producer.failure, ProducerFailed) and failures == [producer.failure]
    assert str(producer.failure) == "the producer failed: Broker: producer fenced"
    with pytest.raises(ProducerFailed):
        await producer.flush(timeout=5)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The producer's clock stands at 100.0 (adjust_linger is given its `now`)."""
    monkeypatch.setattr(producer_module, "time", SimpleNamespace(monotonic=lambda: 100.0))


def send_many(producer: KafkaProducer, count: int) -> None:
    for _ in range(count):
        producer.send("t", b"k", b"v")


@pytest.mark.usefixtures("clock")
async def test_linger_grows_with_the_rate_only_under_load(kafka: Librdkafka) -> None:
    producer = KafkaProducer(max_linger_ms=20)
    send_many(producer, 500)
    assert producer.adjust_linger(100.5) == pytest.approx(0.002)  # 1000/s: 1 ms per 500/s
    send_many(producer, 1998)
    assert producer.adjust_linger(102.5) == 0.0  # 999/s: light traffic never waits
    send_many(producer, 3000)
    assert producer.adjust_linger(103.5) == pytest.approx(0.006)
    send_many(producer, 3000)
    assert producer.adjust_linger(104.5, batch=False) == 0.0  # CPU to spare: no batching
    send_many(producer, 50_000)
    assert producer.adjust_linger(105.5) == 0.020  # at most the maximum
    assert producer.adjust_linger(105.5) == 0.0  # no time passed, nothing sent


@pytest.mark.usefixtures("clock")
async def test_a_producer_without_a_maximum_linger_never_lingers(kafka: Librdkafka) -> None:
    producer = KafkaProducer()
    send_many(producer, 50_000)
    assert producer.adjust_linger(101.0) == 0.0


@pytest.mark.usefixtures("clock")
async def test_under_load_records_wait_for_the_linger_then_go_together(
    kafka: Librdkafka,
) -> None:
    producer = KafkaProducer(max_linger_ms=50)
    send_many(producer, 50_000)
    assert producer.adjust_linger(101.0) == 0.050
    await turn()
    handed_over = len(kafka.produced)
    producer.send("t", b"a", b"1")
    producer.send("t", b"b", b"2")
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(kafka.produced) == handed_over  # held back
    await asyncio.sleep(0.1)
    assert [kw["value"] for _t, kw in kafka.produced[handed_over:]] == [b"1", b"2"]


async def test_close_hands_over_what_is_held_and_waits_a_bounded_time(
    kafka: Librdkafka,
) -> None:
    producer = KafkaProducer()
    producer.send("t", b"a", b"1")
    producer.close(timeout=3.0)
    assert [kw["value"] for _t, kw in kafka.produced] == [b"1"]
    assert kafka.flushes == [3.0]
