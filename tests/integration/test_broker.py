"""The foundation against a real broker: clients, partitioning, topics.yaml."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from messaging import settings, topics

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_topic(kafka: str):
    """A throw-away topic with 6 partitions, deleted afterwards."""
    admin = AdminClient(settings.confluent_config())
    name = f"test.scratch.{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, 6, 1)])[name].result()
    yield name
    admin.delete_topics([name])[name].result()


def _consume(topic: str, count: int, timeout: float = 20.0) -> list:
    consumer = Consumer(
        settings.confluent_config(
            **{"group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest"}
        )
    )
    consumer.subscribe([topic])
    records: list[Any] = []
    try:
        import time

        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                records.append(msg)
    finally:
        consumer.close()
    return records


def test_produce_consume_round_trip(scratch_topic: str) -> None:
    producer = Producer(settings.confluent_config(partitioner="murmur2_random"))
    producer.produce(scratch_topic, key=b"k1", value=b"hello", headers=[("h", b"v")])
    producer.flush(10)
    [record] = _consume(scratch_topic, 1)
    assert (record.key(), record.value()) == (b"k1", b"hello")
    assert record.headers() == [("h", b"v")]


def test_confluent_murmur2_matches_faust_partitioner(scratch_topic: str) -> None:
    producer = Producer(settings.confluent_config(partitioner="murmur2_random"))
    keys = [f"saga-{i}".encode() for i in range(60)]
    for key in keys:
        producer.produce(scratch_topic, key=key, value=b"x")
    producer.flush(10)
    landed = {r.key(): r.partition() for r in _consume(scratch_topic, len(keys))}
    assert len(landed) == len(keys)
    partitioner = DefaultPartitioner()
    all_partitions = list(range(6))
    expected = {k: partitioner(k, all_partitions, all_partitions) for k in keys}
    assert landed == expected
    assert len(set(landed.values())) > 1  # the keys really spread over partitions


def _saga(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=120
    )


def _topic_configs(admin: AdminClient, name: str) -> dict[str, str]:
    [future] = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)]).values()
    return {key: entry.value for key, entry in future.result().items()}


def test_topics_apply_is_idempotent_and_reports_drift(kafka: str, tmp_path: Path) -> None:
    name = f"test.apply.{uuid.uuid4().hex[:8]}"
    spec_file = tmp_path / "topics.yaml"
    spec_file.write_text(
        f"topics:\n  {name}:\n    partitions: 2\n    replication_factor: 1\n"
        "    configs: {retention.ms: '3600000', cleanup.policy: delete}\n"
    )
    first = _saga("topics", "apply", "--file", str(spec_file))
    assert first.returncode == 0, first.stderr
    assert f"created  {name}" in first.stdout
    second = _saga("topics", "apply", "--file", str(spec_file))
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout and "updated" not in second.stdout
    assert "1 topic(s) already as declared" in second.stdout

    admin = AdminClient(settings.confluent_config())
    admin.create_partitions([NewPartitions(name, 3)])[name].result()
    spec_file.write_text(
        f"topics:\n  {name}:\n    partitions: 2\n    replication_factor: 1\n"
        "    configs: {retention.ms: '7200000', cleanup.policy: compact}\n"
    )
    drifted = _saga("topics", "apply", "--file", str(spec_file))
    assert drifted.returncode == 1
    assert "partitions 3 (want 2)" in drifted.stderr
    assert "cleanup.policy=delete (want compact)" in drifted.stderr
    # the retention is no reason for a person: it is set beside the drift reported
    assert f"updated  {name}: retention.ms 3600000 -> 7200000" in drifted.stdout
    configs = _topic_configs(admin, name)
    assert (configs["retention.ms"], configs["cleanup.policy"]) == ("7200000", "delete")
    admin.delete_topics([name])[name].result()


def test_topics_apply_brings_an_earlier_release_s_topic_to_its_configs(
    kafka: str, tmp_path: Path
) -> None:
    """A changelog created before retention declared its segments: `apply` (and so
    `saga up` and the tests) follows the new topics.yaml instead of refusing."""
    name = f"test.apply.{uuid.uuid4().hex[:8]}"
    admin = AdminClient(settings.confluent_config())
    admin.create_topics([NewTopic(name, 2, 1, config={"cleanup.policy": "compact"})])[name].result()
    spec_file = tmp_path / "topics.yaml"
    spec_file.write_text(
        f"topics:\n  {name}:\n    partitions: 2\n    replication_factor: 1\n"
        "    configs: {cleanup.policy: compact, segment.ms: '3600000', "
        "delete.retention.ms: '600000'}\n"
    )
    try:
        applied = _saga("topics", "apply", "--file", str(spec_file))
        assert applied.returncode == 0, applied.stderr
        assert f"updated  {name}: segment.ms 604800000 -> 3600000, " in applied.stdout
        configs = _topic_configs(admin, name)
        assert (configs["segment.ms"], configs["delete.retention.ms"]) == ("3600000", "600000")
        again = _saga("topics", "apply", "--file", str(spec_file))
        assert again.returncode == 0 and "updated" not in again.stdout
    finally:
        admin.delete_topics([name])[name].result()


def test_project_topics_exist_with_declared_partitions(kafka: str) -> None:
    admin = AdminClient(settings.confluent_config())
    existing = admin.list_topics(timeout=10).topics
    for spec in topics.load().topics.values():
        assert spec.name in existing
        assert len(existing[spec.name].partitions) == spec.partitions
