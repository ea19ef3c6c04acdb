"""Dead letters: a record that cannot be processed goes, unchanged, to saga.dead-letters.

The raw key, value and headers are copied as they were (so an operator can inspect or
replay them: `saga dead-letters`); headers added after the record's own say what went
wrong and where the record came from:

    error             human-readable message
    error.reason      short machine-readable code (MessageDecodeError.reason, or the
                      exception class name)
    source.topic      topic, partition and offset of the original record
    source.partition
    source.offset
    dead_lettered_at  ISO-8601 UTC time, e.g. 2024-05-17T12:30:45.123Z
    traceparent       the original record's, as it was (when it had one): the dead letter
                      stays in its saga's trace

All header values are UTF-8 bytes. The dead-letter topic is keyed by the original key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

DEAD_LETTER_TOPIC = "saga.dead-letters"
MAX_ERROR_LENGTH = 2000  # characters of the error message kept in the header

Headers = list[tuple[str, bytes]]


def dead_letter_headers(
    error: str,
    reason: str,
    source_topic: str,
    partition: int,
    offset: int,
    now: datetime | None = None,
) -> Headers:
    """The headers of a dead letter (``now`` defaults to the current time; naive = UTC)."""
    if now is None:
        now = datetime.now(UTC)
    elif now.utcoffset() is None:
        now = now.replace(tzinfo=UTC)
    at = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if len(error) > MAX_ERROR_LENGTH:
        error = error[: MAX_ERROR_LENGTH - 1] + "…"
    return [
        ("error", error.encode()),
        ("error.reason", reason.encode()),
        ("source.topic", source_topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
        ("dead_lettered_at", at.encode()),
    ]


def error_reason(error: BaseException) -> str:
    """The error's ``reason`` code, else that of its cause (Faust wraps codec errors in
    ValueDecodeError), else the exception class name."""
    seen: BaseException | None = error
    while seen is not None:
        reason = getattr(seen, "reason", None)
        if isinstance(reason, str) and reason:
            return reason
        seen = seen.__cause__
    return type(error).__name__


def error_headers(error: BaseException, source_topic: str, partition: int, offset: int) -> Headers:
    """dead_letter_headers for an exception."""
    message = str(error) or type(error).__name__
    return dead_letter_headers(message, error_reason(error), source_topic, partition, offset)


def send_dead_letter(
    producer: Any,
    key: bytes | None,
    value: bytes | None,
    error: BaseException,
    source_topic: str,
    partition: int,
    offset: int,
    metrics: Any = None,
    headers: Any = None,
) -> Any:
    """Send the raw record to the dead-letter topic with the worker's producer
    (`messaging.producer.KafkaProducer`), and count it by reason and source topic in
    `metrics` (the worker's `messaging.metrics.WorkerMetrics`; None: not counted).

    Returns the delivery future; the producer's flush before each offset commit makes
    sure the dead letter is in Kafka before the bad record's offset is committed. A record
    that cannot be sent as it is (too large with the headers) goes without its value and
    a `value.dropped` header giving its size: the operator still learns where it is.
    `headers` are the record's own (a list of pairs or a mapping; its `traceparent`
    included), kept as they were, before those.
    """
    from messaging.producer import SendFailed

    added = [*original_headers(headers), *error_headers(error, source_topic, partition, offset)]
    try:
        sent = producer.send(DEAD_LETTER_TOPIC, key, value, headers=added)
    except SendFailed:
        dropped = ("value.dropped", str(len(value or b"")).encode())
        sent = producer.send(DEAD_LETTER_TOPIC, key, None, headers=[*added, dropped])
    if metrics is not None:
        metrics.dead_letter(error_reason(error), source_topic)
    return sent


def original_headers(headers: Any) -> Headers:
    """A record's headers (pairs, a mapping or None) as (name, bytes) pairs."""
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return [
        (str(name), value if isinstance(value, bytes) else str(value or "").encode())
        for name, value in pairs
    ]
