"""topics.yaml: loading, validation, and applying it to a cluster.

Replication comes from the file's `environments` (replication factor and
min.insync.replicas each); which one applies is `chosen_environment()`.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from messaging import settings

TOPICS_FILE = settings.PROJECT_ROOT / "topics.yaml"
_TOPIC_FIELDS = {"doc", "partitions", "replication_factor", "configs"}
_TOP_LEVEL_KEYS = {"defaults", "topics", "co_partitioned", "environments"}
_ENVIRONMENT_FIELDS = {"doc", "replication_factor", "min_insync_replicas"}
MIN_INSYNC_REPLICAS = "min.insync.replicas"
ENVIRONMENT_VARIABLE = "SAGA_ENV"
SINGLE, CLUSTER = "single", "cluster"  # the environments the project's topics.yaml declares
# Kafka's own rule for topic names (org.apache.kafka.common.internals.Topic).
_LEGAL_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class TopicsFileError(ValueError):
    """topics.yaml is malformed; the message names the topic and the field."""


class ReplicationError(TopicsFileError):
    """topics.yaml asks for more replicas than the cluster has brokers that answer."""


@dataclass(frozen=True)
class Environment:
    """The environment whose replication applies, and why it was chosen."""

    name: str
    reason: str


def chosen_environment() -> Environment:
    """SAGA_ENV if set; else `cluster` against an external cluster (KAFKA_BOOTSTRAP_SERVERS)
    or while the local three-broker cluster is started; else `single`, the local broker.

    An external cluster defaults to `cluster` so that real data is never left on one
    replica by accident: on a one-broker cluster `apply` then refuses, naming SAGA_ENV.
    """
    named = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if named:
        return Environment(named, f"{ENVIRONMENT_VARIABLE}={named}")
    if settings.external_bootstrap():
        return Environment(
            CLUSTER,
            "KAFKA_BOOTSTRAP_SERVERS names an external cluster; "
            f"{ENVIRONMENT_VARIABLE}={SINGLE} for one with a single broker",
        )
    if settings.local_cluster_bootstrap():
        return Environment(CLUSTER, "the local three-broker cluster is started")
    return Environment(SINGLE, "the local single broker")


@dataclass(frozen=True)
class Replication:
    """How many copies of each partition, and how many must have a write before it is
    acknowledged (acks=all)."""

    replication_factor: int
    min_insync_replicas: int
    doc: str = ""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)
    doc: str = ""


@dataclass(frozen=True)
class TopicsFile:
    topics: dict[str, TopicSpec]  # with the replication of `environment`
    co_partitioned: dict[str, list[str]]
    environments: dict[str, Replication] = field(default_factory=dict)
    environment: Environment | None = None  # None: the file declares no environments

    def partitions(self, topic: str) -> int:
        return self.topics[topic].partitions

    @property
    def replication(self) -> Replication | None:
        """The replication of the environment that applies (None without environments)."""
        return self.environments[self.environment.name] if self.environment else None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (YAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may be overridden; that is not a duplicate
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable keys: let PyYAML report them as usual
            if key in seen:
                line = key_node.start_mark.line + 1
                raise TopicsFileError(f"topics.yaml: duplicate key {key!r} (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TopicsFileError(f"{where}: must be a positive integer, got {value!r}")
    return value


def _config_value(value: Any, where: str) -> str:
    """A config value as the broker reports it, so that `apply` does not see false drift."""
    if isinstance(value, bool):  # before int: bool is an int
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, str):
        return value
    raise TopicsFileError(
        f"{where}: must be a string, number or boolean, got {type(value).__name__} {value!r}"
    )


def _configs(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TopicsFileError(f"{where}: field 'configs' must be a mapping")
    configs = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            raise TopicsFileError(f"{where}: field 'configs': key {key!r} must be a name")
        configs[key] = _config_value(value, f"{where}: field 'configs': key {key!r}")
    return configs


def _check_fields(raw: Mapping[str, Any], where: str) -> None:
    """Validate the topic fields present in `raw` (a topic or the defaults)."""
    unknown = set(raw) - _TOPIC_FIELDS
    if unknown:
        raise TopicsFileError(f"{where}: unknown field(s) {sorted(unknown, key=str)}")
    for name in ("partitions", "replication_factor"):
        if name in raw:
            _positive_int(raw[name], f"{where}: field {name!r}")
    if "doc" in raw and not isinstance(raw["doc"], str):
        raise TopicsFileError(f"{where}: field 'doc' must be a string")
    if "configs" in raw:
        _configs(raw["configs"], where)


def _check_topic_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TopicsFileError(f"topics.yaml: topic name {name!r} must be a string")
    if name in {".", ".."} or not _LEGAL_TOPIC_NAME.fullmatch(name):
        raise TopicsFileError(
            f"topics.yaml: topic name {name!r} is not a legal Kafka topic name "
            "(1-249 characters of a-z A-Z 0-9 . _ -, not '.' or '..')"
        )
    return name


def _parse_topic(
    name: str, raw: Any, defaults: Mapping[str, Any], replication: Replication | None
) -> TopicSpec:
    where = f"topics.yaml: topic {name!r}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TopicsFileError(f"{where}: must be a mapping, got {type(raw).__name__}")
    _check_fields(raw, where)
    if replication is not None:
        _refuse_per_topic_replication(raw, where)
    merged = {**defaults, **raw}
    if replication is not None:
        merged["replication_factor"] = replication.replication_factor
    for required in ("partitions", "replication_factor"):
        if required not in merged:
            raise TopicsFileError(f"{where}: field {required!r} is missing (and no default)")
    replication_factor = _positive_int(
        merged["replication_factor"], f"{where}: field 'replication_factor'"
    )
    configs = _configs(merged.get("configs"), where)
    if replication is not None:
        configs[MIN_INSYNC_REPLICAS] = str(replication.min_insync_replicas)
    elif MIN_INSYNC_REPLICAS in configs:
        _check_min_insync(configs[MIN_INSYNC_REPLICAS], replication_factor, where)
    return TopicSpec(
        name=name,
        partitions=_positive_int(merged["partitions"], f"{where}: field 'partitions'"),
        replication_factor=replication_factor,
        configs=configs,
        doc=merged.get("doc", ""),
    )


def _refuse_per_topic_replication(raw: Mapping[str, Any], where: str) -> None:
    """With environments, they alone set replication: no topic is left behind on a cluster."""
    if "replication_factor" in raw:
        raise TopicsFileError(
            f"{where}: field 'replication_factor' comes from 'environments' in this file; "
            "remove it here"
        )
    if isinstance(raw.get("configs"), dict) and MIN_INSYNC_REPLICAS in raw["configs"]:
        raise TopicsFileError(
            f"{where}: config {MIN_INSYNC_REPLICAS!r} comes from 'environments' in this file "
            "(min_insync_replicas); remove it here"
        )


def _check_min_insync(value: str, replication_factor: int, where: str) -> None:
    """A min ISR above the replication factor makes every acks=all write fail."""
    if not value.isdigit() or int(value) < 1:
        raise TopicsFileError(
            f"{where}: config {MIN_INSYNC_REPLICAS!r} must be a positive integer, got {value!r}"
        )
    if int(value) > replication_factor:
        raise TopicsFileError(
            f"{where}: config {MIN_INSYNC_REPLICAS!r} {value} exceeds replication_factor "
            f"{replication_factor}: no acks=all write could ever be acknowledged"
        )


def _parse_environments(raw: Any) -> dict[str, Replication]:
    if not isinstance(raw, dict) or not raw:
        raise TopicsFileError(
            "topics.yaml: 'environments' must map each environment's name to its "
            "replication_factor and min_insync_replicas"
        )
    environments = {}
    for name, fields in raw.items():
        where = f"topics.yaml: environment {name!r}"
        if not isinstance(name, str) or not name:
            raise TopicsFileError(f"{where}: the name must be a string")
        if not isinstance(fields, dict):
            raise TopicsFileError(f"{where}: must be a mapping, got {type(fields).__name__}")
        unknown = set(fields) - _ENVIRONMENT_FIELDS
        if unknown:
            raise TopicsFileError(f"{where}: unknown field(s) {sorted(unknown, key=str)}")
        for required in ("replication_factor", "min_insync_replicas"):
            if required not in fields:
                raise TopicsFileError(f"{where}: field {required!r} is missing")
        replication = Replication(
            _positive_int(fields["replication_factor"], f"{where}: field 'replication_factor'"),
            _positive_int(fields["min_insync_replicas"], f"{where}: field 'min_insync_replicas'"),
            fields.get("doc", ""),
        )
        if not isinstance(replication.doc, str):
            raise TopicsFileError(f"{where}: field 'doc' must be a string")
        if replication.min_insync_replicas > replication.replication_factor:
            raise TopicsFileError(
                f"{where}: min_insync_replicas {replication.min_insync_replicas} exceeds "
                f"replication_factor {replication.replication_factor}: no acks=all write "
                "could ever be acknowledged"
            )
        environments[name] = replication
    return environments


def _choose(environments: dict[str, Replication], environment: Environment) -> Replication:
    if environment.name not in environments:
        declared = ", ".join(sorted(environments))
        raise TopicsFileError(
            f"topics.yaml declares no environment {environment.name!r} "
            f"(chosen because {environment.reason}); declared: {declared}"
        )
    return environments[environment.name]


def parse(text: str, environment: Environment | None = None) -> TopicsFile:
    """The topics of `text` with the replication of `environment` (default: the chosen one)
    if the file declares environments."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise TopicsFileError(f"topics.yaml is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("topics"), dict):
        raise TopicsFileError("topics.yaml: a top-level 'topics' mapping is required")
    unknown = set(data) - _TOP_LEVEL_KEYS
    if unknown:
        allowed = ", ".join(sorted(_TOP_LEVEL_KEYS))
        raise TopicsFileError(
            f"topics.yaml: unknown top-level key(s) {sorted(unknown, key=str)}; allowed: {allowed}"
        )
    environments = _parse_environments(data["environments"]) if "environments" in data else {}
    replication = None
    if environments:
        environment = environment or chosen_environment()
        replication = _choose(environments, environment)
    else:
        environment = None
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise TopicsFileError("topics.yaml: 'defaults' must be a mapping of topic fields")
    unknown = set(defaults) - _TOPIC_FIELDS
    if unknown:
        raise TopicsFileError(
            f"topics.yaml: 'defaults' may only set topic fields "
            f"({', '.join(sorted(_TOPIC_FIELDS))}), not {sorted(unknown, key=str)}"
        )
    _check_fields(defaults, "topics.yaml: defaults")
    if replication is not None:
        _refuse_per_topic_replication(defaults, "topics.yaml: defaults")
    topics = {
        _check_topic_name(name): _parse_topic(name, raw, defaults, replication)
        for name, raw in data["topics"].items()
    }
    groups = data.get("co_partitioned") or {}
    if not isinstance(groups, dict):
        raise TopicsFileError("topics.yaml: 'co_partitioned' must map a group name to topics")
    for group, members in groups.items():
        if not isinstance(members, list):
            raise TopicsFileError(f"topics.yaml: co_partitioned group {group!r} must be a list")
        for member in members:
            if not isinstance(member, str) or member not in topics:
                raise TopicsFileError(
                    f"topics.yaml: co_partitioned group {group!r} names unknown topic {member!r}"
                )
        counts = {topics[m].partitions for m in members}
        if len(counts) > 1:
            detail = ", ".join(f"{m}={topics[m].partitions}" for m in members)
            raise TopicsFileError(
                f"topics.yaml: co_partitioned group {group!r} has unequal partitions: {detail}"
            )
    return TopicsFile(
        topics=topics,
        co_partitioned={g: list(m) for g, m in groups.items()},
        environments=environments,
        environment=environment,
    )


def load(path: Path | None = None, environment: Environment | None = None) -> TopicsFile:
    path = path or TOPICS_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopicsFileError(f"cannot read {path}: {exc}") from exc
    return parse(text, environment)


def project_topics() -> TopicsFile:
    """The repository's topics.yaml for the chosen environment."""
    return _project_topics(chosen_environment())


@functools.cache
def _project_topics(environment: Environment) -> TopicsFile:
    return load(environment=environment)  # read once per process and environment


def partitions(topic: str) -> int:
    return project_topics().partitions(topic)


# ---- applying to a cluster ----


def check_replication_fits(spec: TopicsFile, brokers: int) -> None:
    """Refuse topics with more replicas than the `brokers` that answer, naming them."""
    too_many = [t.name for t in spec.topics.values() if t.replication_factor > brokers]
    if not too_many:
        return
    wanted = max(spec.topics[name].replication_factor for name in too_many)
    shown = ", ".join(too_many[:3]) + (
        f" and {len(too_many) - 3} more" if len(too_many) > 3 else ""
    )
    if spec.environment is not None:
        source = f"environment {spec.environment.name!r} ({spec.environment.reason})"
        fix = (
            "start more brokers (`saga kafka start --brokers 3` locally) or choose an "
            f"environment with fewer replicas (--env, {ENVIRONMENT_VARIABLE})"
        )
    else:
        source = "topics.yaml"
        fix = "start more brokers or lower replication_factor"
    raise ReplicationError(
        f"replication factor {wanted} of {shown} ({source}) exceeds the {brokers} "
        f"broker(s) answering at {settings.bootstrap_servers()}: {fix}"
    )


# Configs `apply` leaves for a person even though Kafka could change them in place:
# turning a compacted changelog into a deleting one (or back) changes what the topic keeps.
CHANGED_BY_HAND = frozenset({"cleanup.policy"})


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # "topic: key old -> new, ..."
    drift: list[str] = field(default_factory=list)  # human-readable differences

    @property
    def ok(self) -> bool:
        return not self.drift


Change = tuple[str | None, str]  # (value on the cluster, value declared)


def compare(
    t: TopicSpec, partitions: int, replicas: set[int], actual: Mapping[str, str | None]
) -> tuple[list[str], dict[str, Change]]:
    """How an existing topic differs from its spec: (drift for a person, configs to set)."""
    differences = []
    if partitions != t.partitions:
        differences.append(f"partitions {partitions} (want {t.partitions})")
    replication_differs = bool(replicas) and replicas != {t.replication_factor}
    if replication_differs:
        replicas_seen = ",".join(str(r) for r in sorted(replicas))
        differences.append(
            f"replication_factor {replicas_seen} (want {t.replication_factor}: "
            "changing it needs a partition reassignment)"
        )
    settable: dict[str, Change] = {}
    for key, want in t.configs.items():
        have = actual.get(key)
        if have == want:
            continue
        if key in CHANGED_BY_HAND or (key == MIN_INSYNC_REPLICAS and replication_differs):
            differences.append(f"{key}={have} (want {want})")
        else:
            settable[key] = (have, want)
    return differences, settable


def apply(spec: TopicsFile, admin: Any | None = None, timeout: float = 30.0) -> ApplyReport:
    """Create missing topics; bring existing ones' configs to the spec; report the rest.

    Configs a release adds or changes (a changelog's segment size, a retention) are set in
    place (incremental alter, only the keys that differ), so a cluster created by an
    earlier release follows topics.yaml without a person. Left as drift: partition
    counts (they cannot shrink, and changing them re-keys every saga), replication
    factors (they change only by partition reassignment, which moves data),
    `cleanup.policy` (CHANGED_BY_HAND), and `min.insync.replicas` on a topic whose
    replication factor is not yet the declared one (it could make the topic unwritable).
    Refuses (ReplicationError) before anything is created when a topic wants more replicas
    than there are brokers answering.
    """
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewTopic,
        ResourceType,
    )

    admin = admin or AdminClient(settings.confluent_config())
    report = ApplyReport()
    metadata = admin.list_topics(timeout=timeout)
    check_replication_fits(spec, len(metadata.brokers))
    existing = metadata.topics
    missing = [t for name, t in spec.topics.items() if name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(t.name, t.partitions, t.replication_factor, config=dict(t.configs))
                for t in missing
            ],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                report.created.append(name)
            except Exception as exc:  # created concurrently by someone else is fine
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise
                report.unchanged.append(name)
    present = [t for name, t in spec.topics.items() if name in existing]
    if not present:
        return report
    resources = [ConfigResource(ResourceType.TOPIC, t.name) for t in present]
    described = {
        res.name: future.result() for res, future in admin.describe_configs(resources).items()
    }
    to_set: dict[str, dict[str, Change]] = {}
    for t in present:
        meta = existing[t.name]
        actual = {key: entry.value for key, entry in described[t.name].items()}
        replicas = {len(p.replicas) for p in meta.partitions.values()}
        differences, settable = compare(t, len(meta.partitions), replicas, actual)
        if differences:
            report.drift.append(f"{t.name}: " + "; ".join(differences))
        if settable:
            to_set[t.name] = settable
        if not differences and not settable:
            report.unchanged.append(t.name)
    if to_set:
        altered = admin.incremental_alter_configs(
            [
                ConfigResource(
                    ResourceType.TOPIC,
                    name,
                    incremental_configs=[
                        ConfigEntry(key, want, incremental_operation=AlterConfigOpType.SET)
                        for key, (_, want) in changes.items()
                    ],
                )
                for name, changes in to_set.items()
            ]
        )
        for resource, future in altered.items():
            future.result()  # a refused value (say, out of range) raises with Kafka's reason
            changes = to_set[resource.name]
            report.updated.append(
                f"{resource.name}: "
                + ", ".join(f"{key} {have} -> {want}" for key, (have, want) in changes.items())
            )
    return report


def missing_topics(spec: TopicsFile, admin: Any | None = None, timeout: float = 10.0) -> list[str]:
    """Declared topics the cluster does not have (raises KafkaException if it is unreachable)."""
    from confluent_kafka.admin import AdminClient

    admin = admin or AdminClient(settings.confluent_config())
    existing = admin.list_topics(timeout=timeout).topics
    return [name for name in spec.topics if name not in existing]
