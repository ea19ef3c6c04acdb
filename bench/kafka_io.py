"""Small confluent-kafka helpers shared by the load generator and the baseline relays."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from messaging import client, settings

BATCH = 500


def plain_consumer(group: str) -> Consumer:
    """A consumer for hand-assigned partitions: the group id is only a label, never committed."""
    extra: dict[str, settings.ConfigValue] = {"group.id": group, "enable.auto.commit": False}
    return Consumer(settings.confluent_config(**extra))


def admin_client() -> AdminClient:
    return AdminClient(settings.confluent_config())


def poll_batch(consumer: Consumer, timeout: float) -> list[Message]:
    """The records available now, waiting at most `timeout` for the first one.

    `consume(n, timeout)` alone would wait the whole timeout unless n records come, which
    adds its timeout to every latency at low rates; poll() returns on the first record.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(BATCH, 0)]


def assign_at_end(consumer: Consumer, topic_names: Iterable[str]) -> None:
    """Assign every partition of the topics at their current end offsets.

    Explicit offsets (not OFFSET_END, resolved lazily) so that anything produced after this
    returns is read: the caller may signal "ready" right away.
    """
    assignment = []
    for topic in topic_names:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        for partition in metadata.partitions:
            high = client.end_offset(consumer, TopicPartition(topic, partition))
            assignment.append(TopicPartition(topic, partition, high))
    consumer.assign(assignment)
