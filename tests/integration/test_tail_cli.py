"""`saga tail` against the real broker: decoding, dead letters, --key, --follow, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from messaging import client
from schemas import codec
from schemas import messages as m

pytestmark = pytest.mark.integration

DEAD_LETTERS = "saga.dead-letters"
GARBAGE = b"definitely not avro"


def _saga(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def _order_request(order_id: str, quantity: int) -> m.OrderRequested:
    # Customer "tail-test" has no account: if an orchestrator runs, it just rejects the order.
    return m.OrderRequested(
        order_id=order_id,
        customer_id="tail-test",
        items=[m.OrderItem(product_id="widget", quantity=quantity)],
        requested_at=datetime.now(UTC),
    )


def _produce(
    topic: str, key: str, values: list[bytes], headers: list[tuple[str, str | bytes | None]]
) -> None:
    producer = client.producer()
    for value in values:
        producer.produce(topic, key=key.encode(), value=value, headers=headers)
    client.flush(producer)


@pytest.fixture
def dead_letters(kafka: str) -> str:
    """A unique key with two dead letters: a valid message, then garbage."""
    key = f"tail-test-{uuid.uuid4()}"
    request = _order_request(key, 1)
    headers: list[tuple[str, str | bytes | None]] = [
        ("error", b"invalid-body: test"),
        ("source.topic", b"orders.requested"),
    ]
    _produce(DEAD_LETTERS, key, [codec.encode(request), GARBAGE], headers)
    return key


def test_decodes_values_and_reports_undecodable_ones(dead_letters: str) -> None:
    result = _saga("tail", DEAD_LETTERS, "--key", dead_letters, "--from-beginning")
    assert result.returncode == 0, result.stderr
    decoded, garbage = _lines(result.stdout)
    for line in (decoded, garbage):
        assert line["topic"] == DEAD_LETTERS
        assert line["key"] == dead_letters
        assert line["headers"] == {
            "error": "invalid-body: test",
            "source.topic": "orders.requested",
        }
        assert line["timestamp"].endswith("+00:00")
    assert garbage["offset"] == decoded["offset"] + 1
    assert decoded["value"]["type"] == "OrderRequested"
    assert decoded["value"]["order_id"] == dead_letters
    assert "error" not in decoded
    assert garbage["value"] is None
    assert garbage["error"].startswith("not-avro: ")


def test_last_n_of_a_key(dead_letters: str) -> None:
    result = _saga("tail", DEAD_LETTERS, "--key", dead_letters, "--last", "1")
    assert result.returncode == 0, result.stderr
    [line] = _lines(result.stdout)
    assert line["value"] is None and "error" in line


def test_order_request_on_its_partition(kafka: str) -> None:
    request = _order_request(f"tail-test-{uuid.uuid4()}", 2)
    producer = client.producer()
    client.send(producer, client.REQUEST_TOPIC, request.order_id, request)
    client.flush(producer)
    result = _saga("tail", client.REQUEST_TOPIC, "--key", request.order_id)
    assert result.returncode == 0, result.stderr
    [line] = _lines(result.stdout)
    assert line["value"]["customer_id"] == "tail-test"
    assert line["value"]["items"] == [{"type": "OrderItem", "product_id": "widget", "quantity": 2}]


@pytest.mark.timeout(60)  # readline() below would wait forever if nothing came
def test_follow_prints_new_records_and_stops_cleanly_on_ctrl_c(kafka: str) -> None:
    key = f"tail-test-{uuid.uuid4()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "tail", DEAD_LETTERS, "--key", key, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # let it catch up and start following
        _produce(DEAD_LETTERS, key, [GARBAGE], [])
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())
        assert line["key"] == key and line["value"] is None
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_unknown_topic_is_refused(kafka: str) -> None:
    result = _saga("tail", "no.such.topic")
    assert result.returncode != 0
    assert "'no.such.topic' is not a topic of topics.yaml" in result.stderr


def test_unreachable_broker_fails_fast_and_clearly() -> None:
    started = time.monotonic()
    result = _saga("tail", "saga.events", env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
