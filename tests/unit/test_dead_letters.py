"""messaging/dead_letters.py: headers and the send (a stub producer, no broker)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from faust.exceptions import ValueDecodeError

from messaging.dead_letters import (
    DEAD_LETTER_TOPIC,
    dead_letter_headers,
    send_dead_letter,
)
from schemas.codec import MessageDecodeError, decode

AT = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)


def test_headers() -> None:
    headers = dead_letter_headers(
        "no schema has fingerprint 0000", "unknown-fingerprint", "saga.replies", 3, 1234, now=AT
    )
    assert headers == [
        ("error", b"no schema has fingerprint 0000"),
        ("error.reason", b"unknown-fingerprint"),
        ("source.topic", b"saga.replies"),
        ("source.partition", b"3"),
        ("source.offset", b"1234"),
        ("dead_lettered_at", b"2024-05-17T12:30:45.123Z"),
    ]
    assert datetime.fromisoformat(dict(headers)["dead_lettered_at"].decode()) == AT.replace(
        microsecond=123000
    )


def test_header_time_is_utc() -> None:
    def at(now: datetime | None) -> str:
        return dict(dead_letter_headers("e", "r", "t", 0, 0, now=now))["dead_lettered_at"].decode()

    assert at(datetime(2024, 5, 17, 14, 30, tzinfo=timezone(timedelta(hours=2)))) == (
        "2024-05-17T12:30:00.000Z"
    )
    assert at(datetime(2024, 5, 17, 12, 30)) == "2024-05-17T12:30:00.000Z"  # naive = UTC
    before = datetime.now(UTC)
    default = datetime.fromisoformat(at(None))
    assert before - timedelta(milliseconds=1) <= default <= datetime.now(UTC)
    assert default.utcoffset() == timedelta(0)


def test_headers_are_utf8_and_bounded() -> None:
    headers = dict(dead_letter_headers("clé ✗ " * 1000, "r", "t", 0, 0, now=AT))
    error = headers["error"].decode("utf-8")
    assert error.startswith("clé ✗ clé") and error.endswith("…")
    assert len(error) == 2000


class RecordingProducer:
    """Stands in for messaging.producer.KafkaProducer: records send() calls."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, dict[str, Any]]] = []

    def send(self, topic: str, key: Any, value: Any, **kwargs: Any) -> str:
        self.produced.append((topic, {"key": key, "value": value, **kwargs}))
        return "future"


def test_sends_the_raw_record_with_headers() -> None:
    producer = RecordingProducer()
    value = b"\xc3\x01garbage"
    try:
        decode(value)
    except MessageDecodeError as error:
        send_dead_letter(producer, b"saga-1", value, error, "saga.replies", 2, 77)
    [(topic, sent)] = producer.produced
    assert topic == DEAD_LETTER_TOPIC == "saga.dead-letters"
    assert sent["key"] == b"saga-1"
    assert sent["value"] == value
    headers = dict(sent["headers"])
    assert headers["error.reason"] == b"truncated"
    assert b"header" in headers["error"]
    assert (headers["source.topic"], headers["source.partition"], headers["source.offset"]) == (
        b"saga.replies",
        b"2",
        b"77",
    )


def test_the_records_own_headers_are_kept_before_the_dead_letters() -> None:
    producer = RecordingProducer()
    own = [("traceparent", b"00-ab-cd-01"), ("replayed-from", b"t/0/5")]
    send_dead_letter(producer, b"k", b"v", KeyError("x"), "t", 0, 1, headers=own)
    send_dead_letter(producer, b"k", b"v", KeyError("x"), "t", 0, 2, headers={"a": "text"})
    first, second = (sent["headers"] for _, sent in producer.produced)
    assert first[:2] == own and [name for name, _ in first[2:]] == [
        "error", "error.reason", "source.topic", "source.partition", "source.offset",
        "dead_lettered_at",
    ]  # fmt: skip
    assert second[0] == ("a", b"text")


def test_reason_of_other_errors() -> None:
    producer = RecordingProducer()
    send_dead_letter(producer, None, None, KeyError("x"), "t", 0, 1)
    send_dead_letter(producer, None, None, RuntimeError(), "t", 0, 1)
    try:
        try:
            decode(b"nope")
        except MessageDecodeError as error:
            raise ValueDecodeError(str(error)) from error
    except ValueDecodeError as wrapped:
        send_dead_letter(producer, None, None, wrapped, "t", 0, 1)
    reasons = [dict(sent["headers"])["error.reason"] for _, sent in producer.produced]
    errors = [dict(sent["headers"])["error"] for _, sent in producer.produced]
    assert reasons == [b"KeyError", b"RuntimeError", b"not-avro"]
    assert errors[:2] == [b"'x'", b"RuntimeError"]
    assert all(sent["key"] is None and sent["value"] is None for _, sent in producer.produced)
