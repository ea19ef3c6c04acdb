"""Shared fixtures. The `kafka` fixture gives every integration test a real broker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from cli.processes import Workers
from messaging import catalog, local_broker, settings, topics
from messaging.catalog import Catalog


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


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    """Bootstrap address of a real Kafka broker with the project's topics applied."""
    source = choose_broker_source()
    container = None
    if source == "external":
        bootstrap = local_broker.start(log=lambda _msg: None)
    elif source == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer("apache/kafka:4.1.1").with_kraft()
        container.start()
        bootstrap = container.get_bootstrap_server()
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap  # workers started by tests follow
    else:
        bootstrap = local_broker.start(log=lambda _msg: None)
    report = topics.apply(topics.load())
    assert report.ok, report.drift
    yield bootstrap
    if container is not None:
        container.stop()


_PORT_BASE = int(os.environ.get("SAGA_TEST_PORT_BASE", "6166"))
TEST_WORKER_PORTS = {
    name: _PORT_BASE + i for i, name in enumerate(("orchestrator", "order", "product", "payment"))
}


@pytest.fixture(scope="session")
def workers(kafka: str) -> Iterator[Workers]:
    """The four service workers running as processes against the test broker.

    Web views on ports 6166-6169 (SAGA_TEST_PORT_BASE moves them), so a `saga up` on the
    default ports can run beside.
    """
    log_path = settings.local_home() / "test-workers.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("a", buffering=1)
    running = Workers(
        ports=TEST_WORKER_PORTS, loglevel="info", echo=lambda line: log_file.write(line + "\n")
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
