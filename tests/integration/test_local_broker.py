"""`saga kafka start|stop|status|logs` on a broker of its own: the lifecycle, and data kept
(and a worker refused on it until its topics are applied).

The broker lives in a temporary SAGA_HOME on free ports, so the shared broker (9092)
and the chaos runs are not touched; the Kafka jars already fetched for the usual home
are hard-linked in instead of running Maven again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from cli.chaos_cmd import share_jars
from messaging import local_broker
from tests.ports import broker_port, free_ports

pytestmark = pytest.mark.integration


def saga(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pid_alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for whichever process adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def read_back(bootstrap: str, topic: str, timeout: float = 30.0) -> list[tuple[Any, Any]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4()}", "log_level": 0}
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    records: list[tuple[Any, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while not records and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                records.append((message.key(), message.value()))
    finally:
        consumer.close()
    return records


def test_start_stop_status_logs_and_data_survives_a_restart(tmp_path: Path) -> None:
    port = broker_port()
    bootstrap = f"127.0.0.1:{port}"
    env = {**os.environ, "SAGA_HOME": str(tmp_path), "SAGA_KAFKA_PORT": str(port)}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    share_jars(tmp_path)
    home = local_broker.Paths(tmp_path / "kafka").single
    try:
        first = saga(env, "kafka", "start")
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"local Kafka is up at {bootstrap}" in first.stdout
        pid = int(home.pid.read_text())
        cluster = (home.data / "meta.properties").read_text()

        again = saga(env, "kafka", "start")  # idempotent: finds the running broker
        assert again.returncode == 0, again.stdout + again.stderr
        assert f"local Kafka already running (pid {pid})" in again.stdout

        status = saga(env, "kafka", "status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"local Kafka running (pid {pid}), answering at {bootstrap}" in status.stdout

        # The console tools run against this broker too (auto-create is off).
        created = saga(
            env, "kafka", "tool", "kafka-topics",
            "--create", "--topic", "lifecycle", "--partitions", "1", "--replication-factor", "1",
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        producer = Producer({"bootstrap.servers": bootstrap, "log_level": 0})
        producer.produce("lifecycle", key=b"k", value=b"kept across a restart")
        assert producer.flush(30) == 0

        stopped = saga(env, "kafka", "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"local Kafka stopped (pid {pid})" in stopped.stdout
        assert not pid_alive(pid) and not home.pid.exists()

        status = saga(env, "kafka", "status")
        assert status.returncode == 1, status.stdout + status.stderr
        assert status.stdout.startswith("local Kafka stopped"), status.stdout

        restarted = saga(env, "kafka", "start")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert int(home.pid.read_text()) != pid
        assert (home.data / "meta.properties").read_text() == cluster  # not formatted again
        assert read_back(bootstrap, "lifecycle") == [(b"k", b"kept across a restart")]

        # On a cluster topics.yaml was not applied to, a worker refuses to start (restarting
        # cannot help), naming the command that fixes it.
        worker = saga(env, "worker", "payment", "--web-port", str(free_ports(1)), timeout=120)
        assert worker.returncode == 78, worker.stdout + worker.stderr
        assert "lacks topics of topics.yaml" in worker.stderr, worker.stderr
        assert "saga topics apply" in worker.stderr, worker.stderr

        logs = saga(env, "kafka", "logs", "--lines", "5000")
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.count("Kafka Server started") == 2, logs.stdout[-3000:]
    finally:
        final = saga(env, "kafka", "stop")
        assert final.returncode == 0, final.stdout + final.stderr
