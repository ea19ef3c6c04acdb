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
        "product.commands",
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
        # config values that are not scalars would be sent as "None", "['x']", "{...}"
        ("topics: {a: {partitions: 1, replication_factor: 1, configs: {retention.ms: null}}}\n",
         "topic 'a': field 'configs': key 'retention.ms': must be a string, number or boolean"),
        ("topics: {a: {partitions: 1, replication_factor: 1, configs: {retention.ms: [1]}}}\n",
         "topic 'a': field 'configs': key 'retention.ms'"),
        ("topics: {a: {partitions: 1, replication_factor: 1, configs: {x: {y: 1}}}}\n",
         "topic 'a': field 'configs': key 'x'"),
        ("topics: {a: {partitions: 1, replication_factor: 1, configs: {1: x}}}\n",
         "topic 'a': field 'configs': key 1 must be a name"),
        ("topics: {a: {partitions: 1, replication_factor: 1, doc: [x]}}\n",
         "topic 'a': field 'doc' must be a string"),
        # topic names Kafka would refuse
        ("topics: {123: {partitions: 1, replication_factor: 1}}\n",
         "topic name 123 must be a string"),
        ("topics: {'a b': {partitions: 1, replication_factor: 1}}\n",
         "topic name 'a b' is not a legal Kafka topic name"),
        ("topics: {'..': {partitions: 1, replication_factor: 1}}\n",
         "topic name '..' is not a legal Kafka topic name"),
        ("topics: {'.': {partitions: 1, replication_factor: 1}}\n",
         "topic name '.' is not a legal Kafka topic name"),
        (f"topics: {{{'x' * 250}: {{partitions: 1, replication_factor: 1}}}}\n",
         "is not a legal Kafka topic name"),
        ("topics: {'': {partitions: 1, replication_factor: 1}}\n",
         "topic name '' is not a legal Kafka topic name"),
        # YAML keeps the last of duplicate keys: a topic (or config) would silently vanish
        ("topics:\n  a: {partitions: 1, replication_factor: 1}\n"
         "  a: {partitions: 2, replication_factor: 1}\n",
         "duplicate key 'a' (line 3)"),
        ("topics:\n  a:\n    partitions: 1\n    replication_factor: 1\n"
         "    configs: {retention.ms: 1, retention.ms: 2}\n",
         "duplicate key 'retention.ms' (line 5)"),
        # a typo at the top level would silently drop the co-partitioning check
        ("topics: {a: {partitions: 1, replication_factor: 1}}\nco_partitoned: {g: [a]}\n",
         "unknown top-level key(s) ['co_partitoned']; "
         "allowed: co_partitioned, defaults, topics"),
        ("defaults: {partitions: 1, replicas: 3}\ntopics: {a: {replication_factor: 1}}\n",
         "'defaults' may only set topic fields (configs, doc, partitions, replication_factor), "
         "not ['replicas']"),
        ("defaults: {partitions: 0}\ntopics: {a: {replication_factor: 1}}\n",
         "defaults: field 'partitions': must be a positive integer"),
        ("defaults: {configs: {retention.ms: null}}\n"
         "topics: {a: {partitions: 1, replication_factor: 1}}\n",
         "defaults: field 'configs': key 'retention.ms'"),
        ("defaults: [1]\ntopics: {a: {partitions: 1, replication_factor: 1}}\n",
         "'defaults' must be a mapping"),
        ("topics: {a: {partitions: 1, replication_factor: 1}}\nco_partitioned: {g: [[a]]}\n",
         "names unknown topic ['a']"),
    ],
)  # fmt: skip
def test_malformed_file_names_topic_and_field(text: str, message: str) -> None:
    with pytest.raises(topics.TopicsFileError, match=None) as info:
        topics.parse(text)
    assert message in str(info.value)


def test_config_values_are_rendered_as_the_broker_reports_them() -> None:
    # Kafka describes booleans as "true"/"false": "True" would be reported as drift forever.
    spec = topics.parse(
        "topics:\n  a:\n    partitions: 1\n    replication_factor: 1\n    configs:\n"
        "      unclean.leader.election.enable: true\n      preallocate: false\n"
        "      retention.ms: 604800000\n      min.cleanable.dirty.ratio: 0.5\n"
        "      cleanup.policy: compact\n"
    )
    assert spec.topics["a"].configs == {
        "unclean.leader.election.enable": "true",
        "preallocate": "false",
        "retention.ms": "604800000",
        "min.cleanable.dirty.ratio": "0.5",
        "cleanup.policy": "compact",
    }


def test_yaml_merge_keys_may_be_overridden_without_a_duplicate_error() -> None:
    spec = topics.parse(
        "topics:\n  a: &a {partitions: 2, replication_factor: 1}\n  b: {<<: *a, partitions: 3}\n"
    )
    assert spec.partitions("a") == 2
    assert spec.partitions("b") == 3


def test_broker_source_prefers_external(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    assert choose_broker_source() == "external"


def test_broker_source_falls_back_to_local_without_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setattr("tests.conftest.docker_engine_answers", lambda: False)
    assert choose_broker_source() == "local"
    monkeypatch.setattr("tests.conftest.docker_engine_answers", lambda: True)
    assert choose_broker_source() == "testcontainers"
