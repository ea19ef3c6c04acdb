"""RowTable: a Faust table whose changelog is batched, last value per key.

Faust sends one changelog record per table write, through its aiokafka producer: five
writes of a saga row cost five records of ~0.25 ms of CPU each. A RowTable writes the row
to its store at once (reads see it) and keeps the newest value of each changed key in
memory; `send_changes` sends those through the worker's confluent-kafka producer. It
runs before every offset commit and before partitions are given up (Faust flushes its
producer then; `messaging.faust_app` hooks that flush), so the changelog always holds at
least the state at the committed offsets:

- a clean stop commits, so it flushes: the store and the changelog agree;
- a crash loses the unsent changes with the store (`discard_tables_after_crash`): the
  tables are restored from the changelogs and the inputs after the committed offsets are
  processed again, as before;
- a revoked partition's changes are in the changelog before its new owner restores it.

Several rows per record. A record may change a few rows of one partition (a participant
writes its per-saga row, then the aggregate row of the stock or account it belongs to).
A flush sends each partition's changed keys in the order of their last write, and the
producer keeps each partition's records in order without gaps (idempotent, gapless), so
if the changelog holds a row written by a record, it holds every row that record wrote
before it. Writing the aggregate row last, with the record's offset, makes the record's
effect all-or-nothing for a replay (participants' `applied_offset`).

Rows are immutable values (frozen dataclasses), so decoded rows are also kept for reads,
up to ROW_CACHE_SIZE, and forgotten at every rebalance (recovery rewrites the store).
"""

from __future__ import annotations

from typing import Any

import faust
from faust.stores.base import SerializedStore
from faust.types import TP

from messaging.producer import KafkaProducer
from schemas import codec

ROW_CACHE_SIZE = 20_000
_MISSING = object()


class RowTable(faust.Table):
    """A table of Avro rows (schemas.messages dataclasses) keyed by raw bytes."""

    def __post_init__(self) -> None:  # called by faust.Table.__init__
        super().__post_init__()
        self._pending: dict[int, dict[bytes, bytes | None]] = {}  # partition -> key -> value
        self._rows: dict[bytes, Any] = {}  # decoded rows, see the module doc
        self.changelog_records_sent = 0

    # ---- rows ----

    def row(self, key: bytes) -> Any | None:
        """The row of `key` (None if absent), read from the current event's partition."""
        row = self._rows.get(key, _MISSING)
        if row is not _MISSING:
            return row
        store = self.data
        if isinstance(store, SerializedStore):
            raw = store._get(key)
            row = None if raw is None else codec.decode(raw)
        else:  # the memory store (tests) keeps the objects
            row = store.get(key)
        self._remember(key, row)
        return row

    def __setitem__(self, key: bytes, value: Any) -> None:
        encoded = codec.encode(value)
        self._stage(key, encoded)
        store = self.data
        if isinstance(store, SerializedStore):
            store._set(key, encoded)
        else:
            store[key] = value
        self._remember(key, value)

    def __delitem__(self, key: bytes) -> None:
        self._stage(key, None)
        store = self.data
        if isinstance(store, SerializedStore):
            store._del(key)
        else:
            store.pop(key, None)
        self._rows.pop(key, None)

    def _stage(self, key: bytes, encoded: bytes | None) -> None:
        """Keep the change for the changelog (instead of Faust's send per write).

        A key written again moves to the end: a flush sends the keys in the order of their
        last write (see "Several rows per record" in the module doc).
        """
        changes = self._pending.setdefault(self._partition(), {})
        changes.pop(key, None)
        changes[key] = encoded

    def _remember(self, key: bytes, row: Any) -> None:
        if len(self._rows) >= ROW_CACHE_SIZE:
            self._rows.clear()
        self._rows[key] = row

    def forget_cached_rows(self) -> None:
        self._rows.clear()

    def _partition(self) -> int:
        event = faust.current_event()
        if event is None:
            raise RuntimeError(f"table {self.name} written outside the processing of a record")
        return int(event.message.partition)

    # ---- changelog ----

    @property
    def unsent_changes(self) -> int:
        return sum(len(changes) for changes in self._pending.values())

    def take_changes(self) -> dict[int, dict[bytes, bytes | None]]:
        """The changes made since the last call (partition -> key -> newest value)."""
        changes, self._pending = self._pending, {}
        return changes

    def send_changes(
        self, changes: dict[int, dict[bytes, bytes | None]], producer: KafkaProducer
    ) -> int:
        """Send `changes` to the changelog; returns how many records. Their delivery is
        awaited with the producer's flush."""
        topic = self.changelog_topic.get_topic_name()
        sent = 0
        for partition, rows in changes.items():
            last = len(rows) - 1
            persisted = self._persisted_offset_setter(topic, partition)
            for index, (key, value) in enumerate(rows.items()):
                on_delivery = persisted if index == last else None
                producer.send(topic, key, value, partition=partition, on_delivery=on_delivery)
            sent += len(rows)
        self.changelog_records_sent += sent
        return sent

    def _persisted_offset_setter(self, topic: str, partition: int) -> Any:
        """What Faust's own changelog sends do: remember in the store how far the changelog
        is known to be applied, so a restart reads only what came after."""
        store = self.data

        def persisted(delivered: tuple[int, int]) -> None:
            dbs = getattr(store, "_dbs", None)
            if dbs is not None and partition in dbs:  # still ours
                store.set_persisted_offset(TP(topic, partition), delivered[1])

        return persisted
