"""Shared fixtures. The `kafka` fixture gives every integration test a real broker."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from messaging import local_broker, settings, topics


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
