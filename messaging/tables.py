"""RowTable: a Faust table whose rows are written back, and changelogged, at each commit.

Faust writes every table assignment to RocksDB and sends it to the changelog through its
aiokafka producer: five writes of a saga row cost five encodings, five store writes and
five records of ~0.25 ms of CPU each. A RowTable keeps the rows changed since the last
commit in memory (reads see them at once) and, when Faust is about to commit offsets,
encodes each changed row once, writes it to the store and sends it to the changelog
through the worker's confluent-kafka producer (`messaging.faust_app.flush_before_commit`
orders that: the outputs of the records first, then the rows, then the commit). So the
changelog always holds at least the state at the committed offsets:

- a clean stop commits, so it writes back: the store and the changelog agree;
- a crash loses the changes not written back with the store (the worker discards its
  stores after a crash, `discard_tables_after_crash`): the tables are restored from the
  changelogs and the inputs after the committed offsets are processed again;
- a revoked partition's changes are in the changelog before its new owner restores it
  (Faust flushes before it gives partitions up).

Several rows per record. A record may change a few rows of one partition: a participant
writes its per-saga rows, then the aggregate row (a product's stock, a customer's
account) they belong to. Changes are sent in the order of each key's last write, and the
producer keeps each partition's records in order without gaps (idempotent, gapless), so
if the changelog holds a row a record wrote, it holds every row that record wrote before
it. Writing the aggregate row last, with the record's offset, makes a record's effect
all-or-nothing for a replay (the participants' `applied_offset`).

Rows are immutable values (frozen dataclasses, never changed in place), so decoded rows
are also kept for reads, up to ROW_CACHE_SIZE, and forgotten at every rebalance.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import faust
from faust.stores.base import SerializedStore
from faust.types import TP

from messaging.producer import KafkaProducer
from schemas import codec
from schemas.limits import KEY_SEPARATOR

ROW_CACHE_SIZE = 20_000
OWNED = KEY_SEPARATOR  # in the key of a row that belongs to another row
_MISSING = object()

Changes = dict[int, dict[bytes, bytes | None]]  # partition -> key -> encoded row (None: deleted)


class RowTable(faust.Table):
    """A table of Avro rows (schemas.messages dataclasses) keyed by raw bytes."""

    def __post_init__(self) -> None:  # called by faust.Table.__init__
        super().__post_init__()
        # Changed since the last write-back: partition -> key -> row (None: deleted), each
        # partition's keys in the order of their last write; and the same rows by key.
        self._changed: dict[int, dict[bytes, Any]] = {}
        self._changed_rows: dict[bytes, Any] = {}
        self._rows: dict[bytes, Any] = {}  # decoded rows as the store has them
        self.changelog_records_sent = 0

    # ---- rows ----

    def row(self, key: bytes) -> Any | None:
        """The row of `key` (None if absent): changed ones first, then the store's (the
        current event's partition if there is one, else whichever holds the key)."""
        row = self._changed_rows.get(key, _MISSING)
        if row is not _MISSING:
            return row
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
        self._change(key, value)

    def __delitem__(self, key: bytes) -> None:
        self._change(key, None)

    def __getitem__(self, key: bytes) -> Any:
        row = self.row(key)
        if row is None:
            raise KeyError(key)
        return row

    def get(self, key: bytes, default: Any = None) -> Any:
        row = self.row(key)
        return default if row is None else row

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.row(key) is not None

    def items(self) -> Iterator[tuple[bytes, Any]]:  # type: ignore[override]
        """Every row of this worker's partitions, changed ones as they are now."""
        changed = dict(self._changed_rows)
        for key, row in super().items():
            if key not in changed:
                yield key, row
        for key, row in changed.items():
            if row is not None:
                yield key, row

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]:
        """This worker's rows whose key starts with `prefix`, leaving out the rows that
        belong to another row (keys with a NUL: schemas.limits.row_key), which the store
        seeks past instead of reading: a product's holds, a customer's payments."""
        changed = {k: r for k, r in self._changed_rows.items() if k.startswith(prefix)}
        for key, row in self._stored(prefix, skip_owned=True):
            if key not in changed:
                yield key, row
        for key, row in changed.items():
            if row is not None and OWNED not in key:
                yield key, row

    def owned(self, owner: bytes, kind: str, limit: int, item: str | None = None) -> list[Any]:
        """The rows that belong to the row `owner` (keys `owner NUL kind NUL id`): the one
        of id `item` if given (none if it has none), else up to `limit` in key order. A
        product's holds or its hold for one saga; a customer's payments."""
        prefix = OWNED.join((owner, kind.encode(), b""))
        if item:
            row = self.row(prefix + item.encode())
            return [] if row is None else [row]
        rows = dict(self._stored(prefix, skip_owned=False, limit=limit))
        for key, row in self._changed_rows.items():
            if key.startswith(prefix):
                rows[key] = row
        return [rows[key] for key in sorted(rows) if rows[key] is not None][:limit]

    def _stored(
        self, prefix: bytes, *, skip_owned: bool, limit: int | None = None
    ) -> Iterator[tuple[bytes, Any]]:
        store = self.data
        found = 0
        if not isinstance(store, SerializedStore):  # the memory store (tests)
            for key, row in sorted(store.items()):
                if key.startswith(prefix) and not (skip_owned and OWNED in key):
                    yield key, row
            return
        for db in list(store._dbs_for_actives()):  # type: ignore[attr-defined]
            cursor = db.iter()
            cursor.seek(prefix)
            while cursor.valid():
                key = cursor.key()
                if not key.startswith(prefix) or (limit is not None and found >= limit):
                    break
                if skip_owned and OWNED in key:  # past this owner's rows, to the next key
                    cursor.seek(key.split(OWNED, 1)[0] + b"\x01")
                    continue
                found += 1
                yield key, codec.decode(cursor.value())
                cursor.next()

    def _change(self, key: bytes, row: Any) -> None:
        """Keep the change until the next write-back (instead of Faust's store write and
        changelog send per assignment). A key written again moves to the end."""
        changes = self._changed.setdefault(self._partition(), {})
        changes.pop(key, None)
        changes[key] = row
        self._changed_rows[key] = row

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

    # ---- write-back ----

    @property
    def unsent_changes(self) -> int:
        return len(self._changed_rows)

    def take_changes(self) -> Changes:
        """Write the rows changed since the last call to the store (each encoded once) and
        return them for the changelog (`send_changes`)."""
        changed, self._changed, self._changed_rows = self._changed, {}, {}
        encoded: Changes = {}
        for partition, rows in changed.items():
            encoded[partition] = {
                key: None if row is None else codec.encode(row) for key, row in rows.items()
            }
            self._write_store(partition, rows, encoded[partition])
        return encoded

    def _write_store(
        self, partition: int, rows: dict[bytes, Any], encoded: dict[bytes, bytes | None]
    ) -> None:
        store = self.data
        if isinstance(store, SerializedStore):
            db = store._db_for_partition(partition)  # type: ignore[attr-defined]
            for key, value in encoded.items():
                if value is None:
                    db.delete(key)
                else:
                    db.put(key, value)
        else:
            for key, row in rows.items():
                if row is None:
                    store.pop(key, None)
                else:
                    store[key] = row
        for key, row in rows.items():
            self._remember(key, row)

    def send_changes(self, changes: Changes, producer: KafkaProducer) -> int:
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
