"""topics.yaml parsing and validation (no broker)."""

from __future__ import annotations

import pytest

from messaging import topics
from tests.conftest import choose_broker_source


def test_orchestrator_sources_are_co_partitioned() -> None:
    spec = topics.load()
    assert spec.partitions("orders.requested") == spec.partitions("saga.replies")
    assert spec.partitions("saga.replies") == spec.partitions("saga-orchestrator-sagas-changelog")


def test_every_co_partitioned_group_has_equal_counts() -> None:
    spec = topics.load()
    for members in spec.co_partitioned.values():
        assert len({spec.partitions(m) for m in members}) == 1


def test_every_topic_of_the_design_is_declared() -> None:
    declared = set(topics.load().topics)
    design = {
        "orders.requested", "saga.replies", "saga.events", "order.commands",
        "product.commands", "product.stock", "product.item-results",
        "payment.commands", "saga.dead-letters",
    }  # fmt: skip
    assert design <= declared
    assert all(t.replication_factor >= 1 for t in topics.load().topics.values())


def test_dead_letters_are_kept_long() -> None:
    retention = int(topics.load().topics["saga.dead-letters"].configs["retention.ms"])
    assert retention >= 30 * 24 * 3600 * 1000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("topics:\n  a:\n    partitions: zero\n    replication_factor: 1\n",
         "topic 'a': field 'partitions'"),
        ("topics:\n  a:\n    partitions: 0\n    replication_factor: 1\n",
         "topic 'a': field 'partitions'"),
        ("topics:\n  b:\n    partitions: 1\n", "topic 'b': field 'replication_factor' is missing"),
        ("topics:\n  c:\n    partitions: 1\n    replication_factor: 1\n    colour: red\n",
         "topic 'c': unknown field(s) ['colour']"),
        ("topics:\n  d:\n    partitions: 1\n    replication_factor: 1\n    configs: [x]\n",
         "topic 'd': field 'configs'"),
        ("topics: [1, 2]\n", "a top-level 'topics' mapping is required"),
        ("topics: {a: {partitions: 1, replication_factor: 1}, b: {partitions: 2, "
         "replication_factor: 1}}\nco_partitioned: {g: [a, b]}\n",
         "group 'g' has unequal partitions: a=1, b=2"),
        ("topics: {a: {partitions: 1, replication_factor: 1}}\nco_partitioned: {g: [a, z]}\n",
         "names unknown topic 'z'"),
        ("topics: {a: [\n", "not valid YAML"),
    ],
)  # fmt: skip
def test_malformed_file_names_topic_and_field(text: str, message: str) -> None:
    with pytest.raises(topics.TopicsFileError, match=None) as info:
        topics.parse(text)
    assert message in str(info.value)


def test_broker_source_prefers_external(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert choose_broker_source() == "external"


def test_broker_source_falls_back_to_local_without_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setattr("tests.conftest.docker_engine_answers", lambda: False)
    assert choose_broker_source() == "local"
    monkeypatch.setattr("tests.conftest.docker_engine_answers", lambda: True)
    assert choose_broker_source() == "testcontainers"
