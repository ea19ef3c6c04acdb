"""The one confluent-kafka producer of a worker, with delivery reports as asyncio futures.

Every record a worker sends goes through it: commands, replies, SagaEvents, per-item
messages, dead letters and table changelogs. Faust's own (aiokafka) producer costs an
agent ~0.25 ms of CPU per record; librdkafka batches and writes in its own threads for
a few microseconds (DESIGN §9).

Delivery reports come from a thread that waits in `poll()` with the GIL released; it
hands them to the event loop in batches (one wake-up however many reports are waiting).
`send` returns a future that resolves once the broker has the record (acks=all) and
fails with `DeliveryFailed` if librdkafka gave up on it. Sends outside Faust's producer
are not covered by Faust's commits: `flush` waits until every record sent so far is
acknowledged and is called before each offset commit (`messaging.faust_app`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import confluent_kafka

from messaging import settings

log = logging.getLogger(__name__)


class _KnownWarnings(logging.Filter):
    """librdkafka warns that enable.gapless.guarantee is experimental each time a producer
    starts: chosen on purpose (see KafkaProducer), so not repeated in every worker log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "enable.gapless.guarantee is experimental" not in record.getMessage()


_librdkafka_log = logging.getLogger("librdkafka")
_librdkafka_log.addFilter(_KnownWarnings())

Headers = list[tuple[str, bytes]]

# Records bigger than this are refused by the producer (and by a default broker, whose
# limit is 1 MiB + 12). Input limits keep every record of the saga far below it.
MAX_RECORD_BYTES = 1_000_000


class SendFailed(Exception):
    """A record could not be handed to the producer (too large, unknown topic...)."""

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

# Adaptive linger: records wait for more only when many are sent (light traffic never
# waits); then 1 ms per LINGER_RATE_PER_MS records/s, at most the producer's maximum.
LINGER_FROM_RATE = 1000.0
LINGER_RATE_PER_MS = 1000.0


class _Unsent:
    """Stands for the message of a record librdkafka refused outright."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return -1


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
                # flushes rely on (RowTable).
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
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reports: collections.deque[tuple[Any, Any, Any]] = collections.deque()
        self._wakeup_pending = False
        # Records are counted per epoch; a flush starts a new epoch and waits only for the
        # earlier ones, so records sent meanwhile (the agents go on) do not hold it up.
        self._epoch = 0
        self._undelivered: dict[int, int] = {}  # epoch -> records not yet reported
        self._epoch_done: asyncio.Event | None = None
        self.failure: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self.sent = 0  # records sent (for tests and figures)
        # Held back until the end of the event loop's turn, or `linger_s` under load.
        self._held: list[tuple[str, dict[str, Any], Any]] = []
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
    ) -> asyncio.Future[Delivered]:
        """Queue a record; the future resolves to (partition, offset) once the broker has it.

        `on_delivery` runs on the event loop for a delivered record (before the future's
        waiters). Raises SendFailed for a record larger than MAX_RECORD_BYTES; one that
        librdkafka refuses for another reason fails its future (and the producer).
        """
        loop = self._bind_loop()
        size = len(value or b"") + len(key or b"")
        if size > MAX_RECORD_BYTES:
            raise SendFailed(topic, f"a record of {size} bytes, more than {MAX_RECORD_BYTES}")
        future: asyncio.Future[Delivered] = loop.create_future()
        epoch = self._epoch
        report = (future, on_delivery, epoch)
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": self._reporter(report)}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = headers
        self._held.append((topic, kwargs, report))
        if not self._handoff_scheduled:
            self._handoff_scheduled = True
            if self.linger_s > 0:
                loop.call_later(self.linger_s, self._hand_off)
            else:
                loop.call_soon(self._hand_off)
        self._undelivered[epoch] = self._undelivered.get(epoch, 0) + 1
        self.sent += 1
        return future

    def _hand_off(self) -> None:
        """Give the records held back to librdkafka, in order: held for the rest of the
        event loop's turn, or for `linger_s` under load, they go out in fewer requests."""
        self._handoff_scheduled = False
        held, self._held = self._held, []
        produce = self._producer.produce
        for topic, kwargs, report in held:
            while True:
                try:
                    produce(topic, **kwargs)
                    break
                except BufferError:
                    # librdkafka's queue is full (100,000 records): let deliveries catch up.
                    self._producer.poll(0.05)
                    self._drain()
                except confluent_kafka.KafkaException as exc:
                    error = exc.args[0] if exc.args else exc
                    self._reports.append((report, error, _Unsent(topic)))
                    self._drain()
                    break

    def adjust_linger(self, now: float) -> float:
        """Hold records longer the more are sent (see LINGER_*); called periodically."""
        rate = (self.sent - self._sent_before) / max(now - self._adjusted_at, 1e-3)
        self._sent_before, self._adjusted_at = self.sent, now
        if self.max_linger_s <= 0 or rate < LINGER_FROM_RATE:
            self.linger_s = 0.0
        else:
            self.linger_s = min(self.max_linger_s, rate / LINGER_RATE_PER_MS / 1000)
        return self.linger_s

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent before the call is acknowledged; raise if one was
        not (or if any earlier one was not). Records are never given up on while the
        broker is away, so without a timeout this waits for it to come back."""
        self._bind_loop()
        self._hand_off()
        assert self._epoch_done is not None
        last = self._epoch
        self._epoch += 1
        async with asyncio.timeout(timeout):
            while self.failure is None and any(e <= last for e in self._undelivered):
                self._epoch_done.clear()
                await self._epoch_done.wait()
        if self.failure is not None:
            raise self.failure

    @property
    def outstanding(self) -> int:
        """Records sent and not yet reported delivered (or failed)."""
        return sum(self._undelivered.values())

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout` seconds) and stop the report thread."""
        self._closing = True
        self._hand_off()
        remaining = self._producer.flush(timeout)
        if remaining:
            log.warning("%d records still undelivered after %.0f s", remaining, timeout)
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._drain()

    # ---- delivery reports ----

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._epoch_done = asyncio.Event()
            self._thread = threading.Thread(
                target=self._poll_forever, name="producer-reports", daemon=True
            )
            self._thread.start()
        return self._loop

    def _reporter(self, report: tuple[Any, Any, int]) -> Callable[[Any, Any], None]:
        reports = self._reports

        def on_delivery(error: Any, message: Any) -> None:  # in the report thread
            reports.append((report, error, message))

        return on_delivery

    def _poll_forever(self) -> None:
        while not self._closing:
            try:
                served = self._producer.poll(0.5)
            except confluent_kafka.KafkaException as exc:  # a fatal error, raised again
                self._on_error(exc.args[0] if exc.args else exc)
                served = 1
            if served and self._reports:
                self._wake_loop()
        if self._reports:
            self._wake_loop()

    def _on_error(self, error: Any) -> None:  # in the report thread
        """librdkafka's client-wide errors: a fatal one stops the producer for good (the
        records it still held are reported failed too); others (a broker away) it
        recovers from by itself."""
        fatal = getattr(error, "fatal", lambda: False)()
        if not fatal:
            log.warning("kafka producer: %s", error)
            return
        self._reports.append((None, error, None))
        self._wake_loop()

    def _wake_loop(self) -> None:
        if self._wakeup_pending or self._loop is None:
            return
        self._wakeup_pending = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the worker is gone
            self._wakeup_pending = False

    def _fail(self, failure: Exception) -> None:
        if self.failure is None:
            self.failure = failure
            log.critical("%s", failure)
            if self._on_failure is not None:
                self._on_failure(failure)

    def _drain(self) -> None:
        """Resolve the futures of the reports waiting (on the event loop)."""
        self._wakeup_pending = False
        reports = self._reports
        undelivered = self._undelivered
        epoch_done = False
        while reports:
            report, error, message = reports.popleft()
            if report is None:  # the producer failed for good (see _on_error)
                self._fail(ProducerFailed(error))
                epoch_done = True
                continue
            future, on_delivery, epoch = report
            left = undelivered[epoch] - 1
            if left:
                undelivered[epoch] = left
            else:
                del undelivered[epoch]
                epoch_done = True
            if error is not None:
                failure = DeliveryFailed(message.topic(), message.partition(), error)
                self._fail(failure)
                epoch_done = True  # wakes a flush, which raises the failure
                if not future.done():
                    future.set_exception(failure)
                    future.exception()  # retrieved: nobody may be waiting for it
                continue
            delivered = (message.partition(), message.offset())
            if on_delivery is not None:
                on_delivery(delivered)
            if not future.done():
                future.set_result(delivered)
        if epoch_done and self._epoch_done is not None:
            self._epoch_done.set()
