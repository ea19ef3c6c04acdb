"""Shared fixtures. The `kafka` fixture gives every integration test a real broker."""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from messaging import catalog, local_broker, settings, topics
from messaging.catalog import Catalog
from messaging.local_workers import Workers

INTEGRATION = "integration"


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One xdist group for the integration tests. `make test` runs pytest with two
    workers (`-n 2 --dist loadgroup`): the integration tests then run one after another in
    one of them, as in a plain run (they share the broker, and the failover and chaos
    tests time what they measure), and the unit and component tests beside them in the
    other, which saves their minute and a half of mostly waiting."""
    group = pytest.mark.xdist_group(INTEGRATION)
    for item in items:
        if INTEGRATION in item.path.parts:
            item.add_marker(group)


def docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


def choose_broker_source() -> str:
    """Where the tests' broker comes from: 'external', 'testcontainers' or 'local'."""
    if settings.external_bootstrap():
        return "external"
    if docker_engine_answers():
        return "testcontainers"
    return "local"


KAFKA_IMAGE = "apache/kafka:4.1.1"  # the version of dev/kafka/pom.xml
# Inside the container only: the inter-broker and controller listeners.
_BROKER_PORT, _CONTROLLER_PORT = 9092, 9093


@dataclass(frozen=True)
class KafkaContainerSpec:
    """How to run the official apache/kafka image as a single KRaft node for the tests."""

    image: str
    env: dict[str, str]
    ports: dict[int, int]  # container port -> host port
    bootstrap: str
    ready_log: str = "Kafka Server started"


def kafka_container_spec(host: str, port: int, image: str = KAFKA_IMAGE) -> KafkaContainerSpec:
    """apache/kafka with its host listener on `port` inside and out, advertised as host:port.

    The host port is fixed (not Docker's random mapping) so the advertised address is
    known before the broker starts. The image drops all its defaults once any KAFKA_*
    variable is set, so every setting is given.
    """
    if port in (_BROKER_PORT, _CONTROLLER_PORT):
        raise ValueError(f"port {port} is taken inside the container by another listener")
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    env = {
        "CLUSTER_ID": cluster_id,
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": f"1@localhost:{_CONTROLLER_PORT}",
        "KAFKA_LISTENERS": (
            f"HOST://:{port},BROKER://:{_BROKER_PORT},CONTROLLER://:{_CONTROLLER_PORT}"
        ),
        "KAFKA_ADVERTISED_LISTENERS": f"HOST://{host}:{port},BROKER://localhost:{_BROKER_PORT}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": (
            "HOST:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT"
        ),
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "BROKER",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",  # topics come from topics.yaml only
        "KAFKA_LOG_DIRS": "/tmp/kraft-combined-logs",
    }
    return KafkaContainerSpec(image, env, {port: port}, f"{host}:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def start_kafka_container(spec: KafkaContainerSpec, timeout: float = 180.0) -> Any:
    """Start the container and wait until the broker answers on its advertised address."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    container = DockerContainer(spec.image)
    for key, value in spec.env.items():
        container.with_env(key, value)
    for container_port, host_port in spec.ports.items():
        container.with_bind_ports(container_port, host_port)
    container.waiting_for(LogMessageWaitStrategy(spec.ready_log).with_startup_timeout(int(timeout)))
    try:
        container.start()
        # The log line says the broker runs; a metadata request proves it is reachable
        # at the address it advertises.
        deadline = time.monotonic() + 60
        while not local_broker.answers(spec.bootstrap, timeout=2):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Kafka container does not answer at {spec.bootstrap}")
            time.sleep(0.5)
    except BaseException:
        container.stop()
        raise
    return container


def docker_host() -> str:
    """The address containers' published ports are reached at (TC_HOST overrides it)."""
    from testcontainers.core.docker_client import DockerClient

    return DockerClient().host()


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    """Bootstrap address of a real Kafka broker with the project's topics applied."""
    source = choose_broker_source()
    container = None
    if source == "external":
        bootstrap = local_broker.start(log=lambda _msg: None)
    elif source == "testcontainers":
        spec = kafka_container_spec(docker_host(), free_port())
        container = start_kafka_container(spec)
        bootstrap = spec.bootstrap
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap  # workers started by tests follow
        os.environ.setdefault("SAGA_ENV", "single")  # one broker: topics.yaml's `single`
    else:
        bootstrap = local_broker.start(log=lambda _msg: None)
    try:
        report = topics.apply(topics.load())
        assert report.ok, report.drift
        yield bootstrap
    finally:
        if container is not None:
            container.stop()


# The test orchestrator's operator token: the web page's Abort and Retry are on.
TEST_OPERATOR_TOKEN = "test-operator-token-" + uuid.uuid4().hex

_PORT_BASE = int(os.environ.get("SAGA_TEST_PORT_BASE", "6166"))
TEST_WORKER_PORTS = {
    name: _PORT_BASE + i for i, name in enumerate(("orchestrator", "order", "product", "payment"))
}


@pytest.fixture(scope="session")
def workers(kafka: str) -> Iterator[Workers]:
    """The four service workers running as processes against the test broker.

    Web views on ports 6166-6169 (SAGA_TEST_PORT_BASE moves them), so a `saga up` on the
    default ports can run beside. Operator actions are on (TEST_OPERATOR_TOKEN).
    """
    log_path = settings.local_home() / "test-workers.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("a", buffering=1)
    running = Workers(
        ports=TEST_WORKER_PORTS,
        loglevel="info",
        echo=lambda line: log_file.write(line + "\n"),
        env={"SAGA_OPERATOR_TOKEN": TEST_OPERATOR_TOKEN},
    )
    running.start()
    try:
        running.wait_ready(timeout=180)
        yield running
    finally:
        codes = running.stop()
        log_file.close()
        # A worker that does not stop gracefully (or crashed) fails the run loudly.
        bad = {name: code for name, code in codes.items() if code not in (0, None)}
        assert not bad, f"workers exited badly: {bad}"


@pytest.fixture(scope="session")
def test_catalog(kafka: str) -> Catalog:
    """Products and customers unique to this test session, seeded once."""
    run = uuid.uuid4().hex[:8]
    text = f"""
currency: EUR
products:
  - {{id: t-{run}-widget, stock: 100000, price: "2.50"}}
  - {{id: t-{run}-scarce, stock: 1, price: "10.00"}}
  - {{id: t-{run}-pricey, stock: 1000, price: "400.00"}}
customers:
  - {{id: t-{run}-rich, balance: "1000000.00"}}
  - {{id: t-{run}-poor, balance: "1.00"}}
"""
    parsed = catalog.parse(text)
    catalog.publish(parsed)
    return parsed
