"""topics.yaml parsing and validation (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
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
         "allowed: co_partitioned, defaults, environments, topics"),
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


# ---- replication per environment ----

SINGLE = topics.Environment("single", "test")
CLUSTER = topics.Environment("cluster", "test")
TWO_ENVIRONMENTS = """
environments:
  single: {replication_factor: 1, min_insync_replicas: 1}
  cluster: {replication_factor: 3, min_insync_replicas: 2}
defaults: {partitions: 2}
topics:
  a: {configs: {retention.ms: 1000}}
  b: {partitions: 1}
"""


def test_the_project_replicates_every_topic_on_a_cluster_and_none_on_one_broker() -> None:
    single = topics.load(environment=SINGLE)
    cluster = topics.load(environment=CLUSTER)
    for spec, replicas, min_isr in ((single, 1, 1), (cluster, 3, 2)):
        assert spec.replication is not None
        assert spec.replication.replication_factor == replicas
        assert spec.replication.min_insync_replicas == min_isr
    assert set(single.topics) == set(cluster.topics)
    for name in cluster.topics:
        assert single.topics[name].replication_factor == 1
        assert single.topics[name].configs["min.insync.replicas"] == "1"
        assert cluster.topics[name].replication_factor == 3
        assert cluster.topics[name].configs["min.insync.replicas"] == "2"
        # Replication is all that differs.
        assert single.topics[name].partitions == cluster.topics[name].partitions


def test_the_environment_gives_every_topic_its_replication_and_min_isr() -> None:
    spec = topics.parse(TWO_ENVIRONMENTS, CLUSTER)
    assert spec.environment == CLUSTER
    assert {n: (t.replication_factor, t.configs) for n, t in spec.topics.items()} == {
        "a": (3, {"retention.ms": "1000", "min.insync.replicas": "2"}),
        "b": (3, {"min.insync.replicas": "2"}),
    }


def test_which_environment_applies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAGA_HOME", str(tmp_path))  # no local cluster started there
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("SAGA_ENV", raising=False)
    assert topics.chosen_environment() == topics.Environment("single", "the local single broker")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    external = topics.chosen_environment()
    assert external.name == "cluster"
    assert "external cluster; SAGA_ENV=single for one with a single broker" in external.reason
    monkeypatch.setenv("SAGA_ENV", "single")  # says it outright, whatever runs
    assert topics.chosen_environment() == topics.Environment("single", "SAGA_ENV=single")
    assert topics.project_topics().topics["saga.events"].replication_factor == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("environments: {c: {replication_factor: 2, min_insync_replicas: 3}}\n"
         "topics: {a: {partitions: 1}}\n",
         "environment 'c': min_insync_replicas 3 exceeds replication_factor 2: no acks=all "
         "write could ever be acknowledged"),
        ("environments: {c: {replication_factor: 3}}\ntopics: {a: {partitions: 1}}\n",
         "environment 'c': field 'min_insync_replicas' is missing"),
        ("environments: {c: {replication_factor: 3, min_insync_replicas: 2, acks: all}}\n"
         "topics: {a: {partitions: 1}}\n",
         "environment 'c': unknown field(s) ['acks']"),
        ("environments: {c: {replication_factor: 0, min_insync_replicas: 1}}\n"
         "topics: {a: {partitions: 1}}\n",
         "environment 'c': field 'replication_factor': must be a positive integer"),
        ("environments: {c: {replication_factor: 1, min_insync_replicas: 0}}\n"
         "topics: {a: {partitions: 1}}\n",
         "environment 'c': field 'min_insync_replicas': must be a positive integer"),
        ("environments: {c: 3}\ntopics: {a: {partitions: 1}}\n",
         "environment 'c': must be a mapping, got int"),
        ("environments: {}\ntopics: {a: {partitions: 1}}\n",
         "'environments' must map each environment's name to its replication_factor"),
        ("environments: {c: {replication_factor: 1, min_insync_replicas: 1}}\n"
         "topics: {a: {partitions: 1}}\n",
         "topics.yaml declares no environment 'cluster' (chosen because test); declared: c"),
        # With environments, no topic may leave (or lower) the replication they set.
        ("environments: {cluster: {replication_factor: 3, min_insync_replicas: 2}}\n"
         "topics: {a: {partitions: 1, replication_factor: 1}}\n",
         "topic 'a': field 'replication_factor' comes from 'environments' in this file"),
        ("environments: {cluster: {replication_factor: 3, min_insync_replicas: 2}}\n"
         "defaults: {replication_factor: 1}\ntopics: {a: {partitions: 1}}\n",
         "defaults: field 'replication_factor' comes from 'environments' in this file"),
        ("environments: {cluster: {replication_factor: 3, min_insync_replicas: 2}}\n"
         "topics: {a: {partitions: 1, configs: {min.insync.replicas: 1}}}\n",
         "topic 'a': config 'min.insync.replicas' comes from 'environments' in this file"),
        # Without environments a topic's own min.insync.replicas is checked the same way.
        ("topics: {a: {partitions: 1, replication_factor: 2, configs: {min.insync.replicas: 3}}}\n",
         "topic 'a': config 'min.insync.replicas' 3 exceeds replication_factor 2"),
        ("topics: {a: {partitions: 1, replication_factor: 2, configs: {min.insync.replicas: x}}}\n",
         "topic 'a': config 'min.insync.replicas' must be a positive integer, got 'x'"),
    ],
)  # fmt: skip
def test_bad_replication_names_the_environment_or_topic(text: str, message: str) -> None:
    with pytest.raises(topics.TopicsFileError) as info:
        topics.parse(text, CLUSTER)
    assert message in str(info.value)


def test_a_replication_factor_above_the_brokers_that_answer_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:21092")
    spec = topics.parse(TWO_ENVIRONMENTS, topics.Environment("cluster", "--env cluster"))
    topics.check_replication_fits(spec, brokers=3)
    with pytest.raises(topics.ReplicationError) as info:
        topics.check_replication_fits(spec, brokers=1)
    assert str(info.value) == (
        "replication factor 3 of a, b (environment 'cluster' (--env cluster)) exceeds the 1 "
        "broker(s) answering at 127.0.0.1:21092: start more brokers (`saga kafka start "
        "--brokers 3` locally) or choose an environment with fewer replicas (--env, SAGA_ENV)"
    )
    plain = topics.parse("topics: {a: {partitions: 1, replication_factor: 4}}\n")
    with pytest.raises(topics.ReplicationError, match=r"replication factor 4 of a \(topics.yaml"):
        topics.check_replication_fits(plain, brokers=3)


def test_env_is_refused_for_a_file_without_environments(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text("topics: {a: {partitions: 1, replication_factor: 1}}\n")
    result = CliRunner().invoke(cli, ["topics", "apply", "--file", str(path), "--env", "cluster"])
    assert result.exit_code == 1
    assert "declares no environments: --env does not apply" in result.output


def test_workers_give_faust_the_environments_replication(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from messaging.faust_app import create_app, typed_table

    monkeypatch.setenv("SAGA_ENV", "cluster")
    app = create_app("saga-product", web_port=6995, store="memory://", datadir=str(tmp_path))
    table = typed_table(app, "stock")
    assert app.conf.topic_replication_factor == 3
    assert table.changelog_topic.replicas == 3


# ---- comparing an existing topic with its spec (what `saga topics apply` does with it) ----

_CHANGELOG = topics.TopicSpec(
    "saga-x-changelog",
    partitions=6,
    replication_factor=3,
    configs={"cleanup.policy": "compact", "segment.ms": "3600000", "min.insync.replicas": "2"},
)
_AS_DECLARED = {"cleanup.policy": "compact", "segment.ms": "3600000", "min.insync.replicas": "2"}


def test_a_topic_as_declared_has_nothing_to_change() -> None:
    assert topics.compare(_CHANGELOG, 6, {3}, _AS_DECLARED) == ([], {})


def test_a_config_a_release_added_or_changed_is_set_not_drift() -> None:
    # a changelog created by a release before retention: no segment.ms of its own
    actual = {**_AS_DECLARED, "segment.ms": "604800000"}
    assert topics.compare(_CHANGELOG, 6, {3}, actual) == (
        [],
        {"segment.ms": ("604800000", "3600000")},
    )
    missing = {k: v for k, v in _AS_DECLARED.items() if k != "segment.ms"}
    assert topics.compare(_CHANGELOG, 6, {3}, missing)[1] == {"segment.ms": (None, "3600000")}


def test_partitions_replication_and_cleanup_policy_are_left_to_a_person() -> None:
    actual = {**_AS_DECLARED, "cleanup.policy": "delete"}
    drift, settable = topics.compare(_CHANGELOG, 8, {1}, actual)
    assert drift == [
        "partitions 8 (want 6)",
        "replication_factor 1 (want 3: changing it needs a partition reassignment)",
        "cleanup.policy=delete (want compact)",
    ]
    assert settable == {}


def test_min_isr_is_set_only_once_the_replication_factor_is_the_declared_one() -> None:
    actual = {**_AS_DECLARED, "min.insync.replicas": "1"}
    # on one copy, min ISR 2 would refuse every acks=all write: a person first reassigns
    drift, settable = topics.compare(_CHANGELOG, 6, {1}, actual)
    assert "min.insync.replicas=1 (want 2)" in drift and settable == {}
    drift, settable = topics.compare(_CHANGELOG, 6, {3}, actual)
    assert drift == [] and settable == {"min.insync.replicas": ("1", "2")}
