"""What a run moved through the broker: records produced and consumed, bytes written.

Before and after each run the meter reads, for the pipeline's topics:

- every partition's end offset: records produced (changelogs included);
- the committed offsets of the workers' consumer groups: records the workers consumed
  (the baseline relays commit nothing: what they consume is what the hop topics they read
  received);
- bytes written: each topic's records times their mean size (key, value and headers),
  measured on up to SAMPLE_RECORDS of the run's records per topic. (Log sizes on disk
  would include batch overhead, but compaction and retention shrink them at any moment.)

Divided by the sagas completed in the run, they tell where a change moved the cost.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from messaging import client, settings

COMMIT_WAIT_SECONDS = 15.0  # workers commit every ~3 s; their offsets must catch up first
SAMPLE_RECORDS = 1000  # per topic, to measure the mean record size


@dataclass
class Snapshot:
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: dict[tuple[str, str, int], int] = field(default_factory=dict)  # group, topic, p


class TrafficMeter:
    """Records and bytes of `topics`, and records consumed by `groups` (or, without
    groups, every record of `consumed_topics`)."""

    def __init__(
        self,
        topics: Iterable[str],
        groups: Iterable[str] = (),
        consumed_topics: Iterable[str] = (),
    ) -> None:
        self.topics = sorted(set(topics))
        self.groups = list(groups)
        self.consumed_topics = set(consumed_topics)
        self._consumer = client.consumer()
        self._admin = AdminClient(settings.confluent_config())
        self._partitions = {t: self._partition_count(t) for t in self.topics}
        self._before = Snapshot()

    def close(self) -> None:
        self._consumer.close()

    def start(self) -> None:
        self._before = self._snapshot(wait_for_commits=False)

    def stop(self, completed: int) -> dict[str, Any]:
        """The run's traffic: totals, per saga (per completed request) and per topic."""
        after = self._snapshot(wait_for_commits=True)
        sizes = self._mean_record_sizes(self._before.end_offsets, after.end_offsets)
        return summarize(
            self._before, after, sizes, completed, bool(self.groups), self.consumed_topics
        )

    def _mean_record_sizes(
        self, before: dict[tuple[str, int], int], after: dict[tuple[str, int], int]
    ) -> dict[str, float]:
        """Mean bytes (key + value + headers) of the records each topic got in between."""
        sizes: dict[str, float] = {}
        for topic in self.topics:
            ranges = [
                (p, before.get((t, p), 0), end)
                for (t, p), end in after.items()
                if t == topic and end > before.get((t, p), 0)
            ]
            if not ranges:
                continue
            per_partition = max(1, SAMPLE_RECORDS // len(ranges))
            total, count = 0, 0
            for partition, start, end in ranges:
                stop = min(end, start + per_partition)
                for record in _read(self._consumer, topic, partition, start, stop):
                    total += len(record.key() or b"") + len(record.value() or b"")
                    total += sum(len(k) + len(v or b"") for k, v in record.headers() or [])
                    count += 1
            if count:
                sizes[topic] = total / count
        return sizes

    # ---- reading the cluster ----

    def _partition_count(self, topic: str) -> int:
        metadata = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        return len(metadata.partitions) if metadata is not None and metadata.partitions else 0

    def _snapshot(self, wait_for_commits: bool) -> Snapshot:
        ends = self._end_offsets()
        committed = self._committed()
        if wait_for_commits and self.groups:
            deadline = time.monotonic() + COMMIT_WAIT_SECONDS
            while not _caught_up(committed, ends) and time.monotonic() < deadline:
                time.sleep(0.5)
                ends, committed = self._end_offsets(), self._committed()
        return Snapshot(ends, committed)

    def _end_offsets(self) -> dict[tuple[str, int], int]:
        return {
            (topic, p): client.end_offset(self._consumer, TopicPartition(topic, p))
            for topic, count in self._partitions.items()
            for p in range(count)
        }

    def _committed(self) -> dict[tuple[str, str, int], int]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        if not self.groups:
            return {}
        result: dict[tuple[str, str, int], int] = {}
        for group in self.groups:  # the client asks for one group at a time
            request = [ConsumerGroupTopicPartitions(group)]
            try:
                [future] = self._admin.list_consumer_group_offsets(request).values()
                answer = future.result(timeout=10)
            except Exception:
                continue
            for tp in answer.topic_partitions or []:
                if tp.topic in self._partitions and tp.offset >= 0:
                    result[(group, tp.topic, tp.partition)] = tp.offset
        return result


def _caught_up(
    committed: dict[tuple[str, str, int], int], ends: dict[tuple[str, int], int]
) -> bool:
    return all(offset >= ends.get((t, p), 0) for (_g, t, p), offset in committed.items())


def _read(consumer: Any, topic: str, partition: int, start: int, stop: int) -> list[Any]:
    """Records [start, stop) of a partition (fewer if some were compacted away)."""
    consumer.assign([TopicPartition(topic, partition, start)])
    records: list[Any] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        batch = consumer.consume(min(500, stop - start), timeout=1.0)
        for record in batch:
            if record.error() is None and record.offset() < stop:
                records.append(record)
        if not batch or batch[-1].offset() >= stop - 1:
            break
    consumer.unassign()
    return records


def summarize(
    before: Snapshot,
    after: Snapshot,
    mean_sizes: dict[str, float],
    completed: int,
    by_groups: bool,
    consumed_topics: set[str],
) -> dict[str, Any]:
    produced: dict[str, int] = defaultdict(int)
    for (topic, p), end in after.end_offsets.items():
        produced[topic] += end - before.end_offsets.get((topic, p), 0)
    consumed: dict[str, int] = defaultdict(int)
    if by_groups:
        for (group, topic, p), offset in after.committed.items():
            start = before.committed.get((group, topic, p))
            if start is not None:
                consumed[group] += offset - start
    else:
        for topic in consumed_topics:
            consumed[topic] += produced.get(topic, 0)
    written = {t: round(n * mean_sizes.get(t, 0.0)) for t, n in produced.items() if n}
    changelogs = sum(n for t, n in produced.items() if t.endswith("-changelog"))

    def per(value: float | None) -> float | None:
        return None if value is None or not completed else round(value / completed, 2)

    total_written = sum(written.values())
    return {
        "produced": dict(produced),
        "consumed": dict(consumed),
        "bytes_written": written,
        "per_saga": {
            "produced": per(sum(produced.values())),
            "produced_changelog": per(changelogs),
            "consumed": per(sum(consumed.values())),
            "bytes_written": per(total_written),
        },
    }
