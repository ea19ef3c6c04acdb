"""topics.yaml: loading, validation, and applying it to a cluster."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from messaging import settings

TOPICS_FILE = settings.PROJECT_ROOT / "topics.yaml"
_TOPIC_FIELDS = {"doc", "partitions", "replication_factor", "configs"}
_TOP_LEVEL_KEYS = {"defaults", "topics", "co_partitioned"}
# Kafka's own rule for topic names (org.apache.kafka.common.internals.Topic).
_LEGAL_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


class TopicsFileError(ValueError):
    """topics.yaml is malformed; the message names the topic and the field."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)
    doc: str = ""


@dataclass(frozen=True)
class TopicsFile:
    topics: dict[str, TopicSpec]
    co_partitioned: dict[str, list[str]]

    def partitions(self, topic: str) -> int:
        return self.topics[topic].partitions


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


def _parse_topic(name: str, raw: Any, defaults: Mapping[str, Any]) -> TopicSpec:
    where = f"topics.yaml: topic {name!r}"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TopicsFileError(f"{where}: must be a mapping, got {type(raw).__name__}")
    _check_fields(raw, where)
    merged = {**defaults, **raw}
    for required in ("partitions", "replication_factor"):
        if required not in merged:
            raise TopicsFileError(f"{where}: field {required!r} is missing (and no default)")
    return TopicSpec(
        name=name,
        partitions=_positive_int(merged["partitions"], f"{where}: field 'partitions'"),
        replication_factor=_positive_int(
            merged["replication_factor"], f"{where}: field 'replication_factor'"
        ),
        configs=_configs(merged.get("configs"), where),
        doc=merged.get("doc", ""),
    )


def parse(text: str) -> TopicsFile:
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
    topics = {
        _check_topic_name(name): _parse_topic(name, raw, defaults)
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
    return TopicsFile(topics=topics, co_partitioned={g: list(m) for g, m in groups.items()})


def load(path: Path | None = None) -> TopicsFile:
    path = path or TOPICS_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise TopicsFileError(f"cannot read {path}: {exc}") from exc
    return parse(text)


@functools.cache
def project_topics() -> TopicsFile:
    """The repository's topics.yaml (cached: read once per process)."""
    return load()


def partitions(topic: str) -> int:
    return project_topics().partitions(topic)


# ---- applying to a cluster ----


@dataclass
class ApplyReport:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)  # human-readable differences

    @property
    def ok(self) -> bool:
        return not self.drift


def apply(spec: TopicsFile, admin: Any | None = None, timeout: float = 30.0) -> ApplyReport:
    """Create missing topics; compare existing ones with the spec and report drift.

    Never changes an existing topic: partition counts cannot shrink and changing them
    re-keys every saga, so drift is for a person to resolve.
    """
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

    admin = admin or AdminClient(settings.confluent_config())
    report = ApplyReport()
    existing = admin.list_topics(timeout=timeout).topics
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
    if present:
        resources = [ConfigResource(ResourceType.TOPIC, t.name) for t in present]
        described = {
            res.name: future.result() for res, future in admin.describe_configs(resources).items()
        }
        for t in present:
            meta = existing[t.name]
            differences = []
            if len(meta.partitions) != t.partitions:
                differences.append(f"partitions {len(meta.partitions)} (want {t.partitions})")
            replicas = {len(p.replicas) for p in meta.partitions.values()}
            if replicas and replicas != {t.replication_factor}:
                have = ",".join(str(r) for r in sorted(replicas))
                differences.append(f"replication_factor {have} (want {t.replication_factor})")
            actual = described[t.name]
            for key, want in t.configs.items():
                have_entry = actual.get(key)
                have_value = have_entry.value if have_entry is not None else None
                if have_value != want:
                    differences.append(f"{key}={have_value} (want {want})")
            if differences:
                report.drift.append(f"{t.name}: " + "; ".join(differences))
            else:
                report.unchanged.append(t.name)
    return report
