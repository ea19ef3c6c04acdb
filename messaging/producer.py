"""The one confluent-kafka producer of a worker, with deliveries counted per epoch.

Every record a worker sends goes through it: commands, replies, SagaEvents, forwarded
hops, dead letters and table changelogs. Faust's own (aiokafka) producer costs an agent
~0.25 ms of CPU per record; librdkafka batches and writes in its own threads for a few
microseconds (DESIGN §9).

Nothing waits for a single record: a saga's next hop does not depend on the broker's
acknowledgement, only what may be committed does (rows written back, offsets committed).
So records are counted in epochs, a new one every tick (POLL_SECONDS) that sent
something; an event-loop timer polls librdkafka for delivery reports, and `delivered`
tells up to which epoch everything is in Kafka. `flush` (before each offset commit, see
`messaging.faust_app`) ends the epoch and waits for it. A record the broker does not take
stops the producer for good (`failure`, and the worker is crashed by `on_failure`): its
inputs are processed again after the restart.

Records are handed to librdkafka at the end of the event loop's turn, or, when many are
sent, after a short linger that grows with the rate (LINGER_*): a burst goes out in one
request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import confluent_kafka

from messaging import settings

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]

# Records bigger than this are refused by the producer (and by a default broker, whose
# limit is 1 MiB + 12). Input limits keep every record of the saga far below it.
MAX_RECORD_BYTES = 1_000_000

POLL_SECONDS = 0.002  # how often delivery reports are fetched while records are out

# Adaptive linger: records wait for more only when many are sent (light traffic never
# waits); then 1 ms per LINGER_RATE_PER_MS records/s, at most the producer's maximum.
LINGER_FROM_RATE = 1000.0
LINGER_RATE_PER_MS = 500.0


class _KnownWarnings(logging.Filter):
    """librdkafka warns that enable.gapless.guarantee is experimental each time a producer
    starts: chosen on purpose (see KafkaProducer), so not repeated in every worker log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "enable.gapless.guarantee is experimental" not in record.getMessage()


_librdkafka_log = logging.getLogger("librdkafka")
_librdkafka_log.addFilter(_KnownWarnings())


class SendFailed(Exception):
    """A record could not be sent at all (larger than MAX_RECORD_BYTES)."""

    def __init__(self, topic: str, error: object) -> None:
        super().__init__(f"cannot send to {topic}: {error}")
        self.topic = topic
        self.reason = "send-failed"


class DeliveryFailed(Exception):
    """The producer gave up on a record: the broker did not take it."""

    def __init__(self, topic: str, partition: int, error: object) -> None:
        super().__init__(f"record to {topic}[{partition}] not delivered: {error}")
        self.topic = topic
        self.reason = "delivery-failed"


class ProducerFailed(Exception):
    """The producer hit a fatal error: it sends nothing any more."""

    def __init__(self, error: object) -> None:
        super().__init__(f"the producer failed: {error}")
        self.reason = "producer-failed"


# A failure of the transport, not of the record being processed: the worker must stop
# (its input is processed again after the restart), never dead-letter the input.
TransportError = (SendFailed, DeliveryFailed, ProducerFailed)

Delivered = tuple[int, int]  # (partition, offset)


class _Epoch:
    """The records sent during one tick: how many are not yet reported."""

    __slots__ = ("closed", "number", "producer", "undelivered")

    def __init__(self, number: int, producer: KafkaProducer) -> None:
        self.number = number
        self.undelivered = 0
        self.closed = False
        self.producer = producer

    def report(self, error: Any, message: Any) -> None:  # a delivery report, on the loop
        self.undelivered -= 1
        if error is not None:
            self.producer._fail(DeliveryFailed(message.topic(), message.partition(), error))
        if self.closed and self.undelivered == 0:
            self.producer._settle()


class KafkaProducer:
    """An idempotent confluent-kafka producer (acks=all, per-partition order kept across
    retries) that uses the murmur2 partitioner of Faust and the Java clients, so a key
    lands on the partition where its table row lives."""

    def __init__(
        self,
        *,
        max_linger_ms: float = 0.0,
        on_failure: Callable[[BaseException], Any] | None = None,
        **config: settings.ConfigValue,
    ) -> None:
        producer_config: dict[str, Any] = settings.confluent_config(
            **{
                "partitioner": "murmur2_random",
                "enable.idempotence": True,
                # Never give up on a record while the broker is away (no timeout), and
                # stop the producer on any error that would leave a gap: each
                # partition's records arrive in order without holes, which changelog
                # write-backs rely on (RowTable).
                "message.timeout.ms": 0,
                "enable.gapless.guarantee": True,
                # Records are held back here instead (see _hand_off): a burst handed
                # over at once still goes out in one request.
                "linger.ms": 0.5,
                "message.max.bytes": MAX_RECORD_BYTES,
                **config,
            }
        )
        producer_config["error_cb"] = self._on_error
        self._producer = confluent_kafka.Producer(producer_config, logger=_librdkafka_log)
        self._on_failure = on_failure
        self.failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current = _Epoch(1, self)
        self._open: collections.deque[_Epoch] = collections.deque()  # closed, not delivered
        self.delivered = 0  # every record of epochs up to this one is in Kafka
        self._settled: asyncio.Event | None = None
        self._ticking = False
        self.sent = 0  # records sent (for tests and figures)
        # Held back until the end of the event loop's turn, or `linger_s` under load.
        self._held: list[tuple[str, dict[str, Any], _Epoch]] = []
        self._handoff_scheduled = False
        self.max_linger_s = max_linger_ms / 1000
        self.linger_s = 0.0
        self._sent_before = 0
        self._adjusted_at = time.monotonic()

    # ---- sending (event loop thread) ----

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
        on_delivery: Callable[[Delivered], None] | None = None,
    ) -> int:
        """Queue a record; returns its epoch (see `delivered`). `on_delivery` runs on the
        event loop once the broker has it, with (partition, offset).

        Raises SendFailed for a record larger than MAX_RECORD_BYTES; one that librdkafka
        refuses for another reason fails the producer.
        """
        loop = self._bind_loop()
        size = len(value or b"") + len(key or b"")
        if size > MAX_RECORD_BYTES:
            raise SendFailed(topic, f"a record of {size} bytes, more than {MAX_RECORD_BYTES}")
        epoch = self._current
        report = epoch.report if on_delivery is None else _reporting(epoch, on_delivery)
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": report}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        self._held.append((topic, kwargs, epoch))
        epoch.undelivered += 1
        self.sent += 1
        if not self._handoff_scheduled:
            self._handoff_scheduled = True
            if self.linger_s > 0:
                loop.call_later(self.linger_s, self._hand_off)
            else:
                loop.call_soon(self._hand_off)
        if not self._ticking:
            self._ticking = True
            loop.call_later(POLL_SECONDS, self._tick)
        return epoch.number

    def _hand_off(self) -> None:
        """Give the records held back to librdkafka, in order."""
        self._handoff_scheduled = False
        held, self._held = self._held, []
        produce = self._producer.produce
        for topic, kwargs, epoch in held:
            while True:
                try:
                    produce(topic, **kwargs)
                    break
                except BufferError:
                    # librdkafka's queue is full (100,000 records): let deliveries catch up.
                    self._poll(0.05)
                except confluent_kafka.KafkaException as exc:
                    self._fail(ProducerFailed(exc.args[0] if exc.args else exc))
                    epoch.undelivered -= 1  # counted out: the failure stops everything
                    break

    @property
    def current_epoch(self) -> int:
        """The epoch records sent now belong to."""
        return self._current.number

    async def wait_delivered(self, epoch: int, timeout: float | None = None) -> None:
        """Until every record of `epoch` and the ones before is in Kafka; raises the
        producer's failure if one was not taken."""
        self._bind_loop()
        assert self._settled is not None
        if epoch >= self._current.number:
            self._close_epoch()
        async with asyncio.timeout(timeout):
            while self.failure is None and self.delivered < epoch:
                self._settled.clear()
                await self._settled.wait()
        if self.failure is not None:
            raise self.failure

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent before the call is acknowledged; raise if one was
        not (or if any earlier one was not). Records are never given up on while the
        broker is away, so without a timeout this waits for it to come back."""
        await self.wait_delivered(self._current.number, timeout)

    @property
    def outstanding(self) -> int:
        """Records sent and not yet reported delivered (or failed)."""
        return self._current.undelivered + sum(e.undelivered for e in self._open)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout` seconds)."""
        self._hand_off()
        remaining = self._producer.flush(timeout)
        if remaining:
            log.warning("%d records still undelivered after %.0f s", remaining, timeout)

    def adjust_linger(self, now: float, batch: bool = True) -> float:
        """Hold records longer the more are sent (see LINGER_*), never without `batch`
        (see messaging.cpu); called periodically."""
        rate = (self.sent - self._sent_before) / max(now - self._adjusted_at, 1e-3)
        self._sent_before, self._adjusted_at = self.sent, now
        if not batch or self.max_linger_s <= 0 or rate < LINGER_FROM_RATE:
            self.linger_s = 0.0
        else:
            self.linger_s = min(self.max_linger_s, rate / LINGER_RATE_PER_MS / 1000)
        return self.linger_s

    # ---- epochs and delivery reports ----

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._settled = asyncio.Event()
        return self._loop

    def _close_epoch(self) -> None:
        """End the current epoch (if it sent anything) and start the next."""
        epoch = self._current
        if epoch.undelivered == 0 and not self._open:
            self.delivered = epoch.number
            self._current = _Epoch(epoch.number + 1, self)
            return
        epoch.closed = True
        self._open.append(epoch)
        self._current = _Epoch(epoch.number + 1, self)
        self._settle()

    def _settle(self) -> None:
        """Move `delivered` past every closed epoch whose records are all reported."""
        open_ = self._open
        advanced = False
        while open_ and open_[0].undelivered == 0:
            self.delivered = open_.popleft().number
            advanced = True
        if not open_ and self._current.undelivered == 0:
            self.delivered = max(self.delivered, self._current.number - 1)
        if advanced and self._settled is not None:
            self._settled.set()

    def _tick(self) -> None:
        """Fetch delivery reports; start a new epoch. Runs while records are out."""
        self._ticking = False
        if self._current.undelivered:
            self._close_epoch()
        self._poll(0)
        if self.failure is None and (self._open or self._current.undelivered or self._held):
            self._ticking = True
            assert self._loop is not None
            self._loop.call_later(POLL_SECONDS, self._tick)

    def _poll(self, timeout: float) -> None:
        try:
            self._producer.poll(timeout)
        except confluent_kafka.KafkaException as exc:  # a fatal error, raised by poll
            self._fail(ProducerFailed(exc.args[0] if exc.args else exc))

    def _fail(self, failure: BaseException) -> None:
        if self.failure is None:
            self.failure = failure
            log.critical("%s", failure)
            if self._on_failure is not None:
                self._on_failure(failure)
        if self._settled is not None:
            self._settled.set()  # waiters raise the failure

    def _on_error(self, error: Any) -> None:
        """librdkafka's client-wide errors: a fatal one stops the producer for good (the
        records it still held are reported failed too); others (a broker away) it
        recovers from by itself."""
        if not getattr(error, "fatal", lambda: False)():
            log.warning("kafka producer: %s", error)
            return
        self._fail(ProducerFailed(error))


def _reporting(epoch: _Epoch, on_delivery: Callable[[Delivered], None]) -> Any:
    def report(error: Any, message: Any) -> None:
        if error is None:
            on_delivery((message.partition(), message.offset()))
        epoch.report(error, message)

    return report


# The producer of each worker's Faust app (messaging.faust_app.create_app gives it one).
_OF_APP: weakref.WeakKeyDictionary[Any, KafkaProducer] = weakref.WeakKeyDictionary()


def set_producer_of(app: Any, producer: KafkaProducer) -> None:
    """Make `producer` the one every record of the Faust app `app` is sent with."""
    _OF_APP[app] = producer


def producer_of(app: Any) -> KafkaProducer:
    """The confluent-kafka producer every record of `app` is sent with (KeyError: none)."""
    return _OF_APP[app]
