"""RowTable: a Faust table whose rows are written back, and changelogged, at each commit.

Faust writes every table assignment to RocksDB and sends it to the changelog through its
aiokafka producer: five writes of a saga row cost five encodings, five store writes and
five records of ~0.25 ms of CPU each. A RowTable keeps the rows changed since the last
commit in memory (reads see them at once) and, when Faust is about to commit offsets,
encodes each changed row once and writes it back (`messaging.faust_app.flush_before_commit`
orders that): the outputs of the records that changed the rows are acknowledged first,
then the rows are sent to the changelog through the worker's confluent-kafka producer
and acknowledged, and only then written to the store and the offsets committed. So:

- the store never holds a row the changelog lacks, nor one whose outputs may be lost;
- a clean stop (every row written back, every output acknowledged: see
  `messaging.faust_workarounds.unclean_stop`) leaves a store that matches the changelog;
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
are also kept for reads, up to ROW_CACHE_SIZE. A key's cached row is forgotten when
recovery writes the key from the changelog, and every cached row at each rebalance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import faust
from faust.stores.base import SerializedStore
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP, EventT

from messaging.producer import KafkaProducer
from schemas import codec
from schemas.limits import KEY_SEPARATOR
from schemas.state import StateFromEarlierRelease, StateRefused, refused_schema

log = logging.getLogger(__name__)

ROW_CACHE_SIZE = 20_000
OWNED = KEY_SEPARATOR  # in the key of a row that belongs to another row
FAUST_OFFSET_KEY = RocksDBStore.offset_key  # kept by Faust among the rows of each partition
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
        # Taken for the changelog and not yet in the store (the same shapes).
        self._writing: dict[int, dict[bytes, Any]] = {}
        self._writing_rows: dict[bytes, Any] = {}
        self._changelog_offsets: dict[int, int] = {}  # partition -> last delivered offset
        self._rows: dict[bytes, Any] = {}  # decoded rows as the store has them
        self._checked_partitions: set[int] = set()  # stores checked for refused rows
        # Also refuses rows at start-up (raises StateRefused), if set: e.g. the saga table
        # refuses sagas on a definition version the deploy dropped.
        self.check_row: Callable[[bytes, Any], None] | None = None
        self.changelog_records_sent = 0

    # ---- rows ----

    def row(self, key: bytes) -> Any | None:
        """The row of `key` (None if absent): changed ones first, then the store's (the
        current event's partition if there is one, else whichever holds the key)."""
        row = self._changed_rows.get(key, _MISSING)
        if row is not _MISSING:
            return row
        row = self._writing_rows.get(key, _MISSING)
        if row is not _MISSING:
            return row
        row = self._rows.get(key, _MISSING)
        if row is not _MISSING:
            return row
        store = self.data
        if isinstance(store, SerializedStore):
            raw = store._get(key)
            row = None if raw is None else self._decode(key, raw)
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
        changed = self._unwritten()
        for key, row in self._stored(b"", skip_owned=False):
            if key not in changed:
                yield key, row
        for key, row in changed.items():
            if row is not None:
                yield key, row

    def scan(self, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]:
        """This worker's rows whose key starts with `prefix`, leaving out the rows that
        belong to another row (keys with a NUL: schemas.limits.row_key), which the store
        seeks past instead of reading: a product's holds, a customer's payments."""
        changed = {k: r for k, r in self._unwritten().items() if k.startswith(prefix)}
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
        for key, row in self._unwritten().items():
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
                if key == FAUST_OFFSET_KEY:  # not a row: how far the changelog is applied
                    cursor.next()
                    continue
                found += 1
                yield key, self._decode(key, cursor.value())
                cursor.next()

    def _decode(self, key: bytes, raw: bytes) -> Any:
        schema = refused_schema(raw)
        if schema is not None:
            raise StateFromEarlierRelease(self.name, key, schema)
        return codec.decode(raw)

    def _change(self, key: bytes, row: Any) -> None:
        """Keep the change until the next write-back (instead of Faust's store write and
        changelog send per assignment). A key written again moves to the end."""
        changes = self._changed.setdefault(self._partition(), {})
        changes.pop(key, None)
        changes[key] = row
        self._changed_rows[key] = row

    def _unwritten(self) -> dict[bytes, Any]:
        """The rows not in the store yet, as they are now (None: deleted)."""
        return {**self._writing_rows, **self._changed_rows}

    def _remember(self, key: bytes, row: Any) -> None:
        if len(self._rows) >= ROW_CACHE_SIZE:
            self._rows.clear()
        self._rows[key] = row

    def forget_cached_rows(self) -> None:
        self._rows.clear()

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        self._checked_partitions -= {tp.partition for tp in revoked}

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        """Refuse to go on with rows an earlier release wrote that this one cannot read
        exactly (schemas/state.py), or that `check_row` refuses: each newly assigned
        partition's store is checked once, before its records are processed (reading only
        each row's schema fingerprint, unless there is a `check_row`)."""
        await super().on_recovery_completed(active_tps, standby_tps)
        topic = self.changelog_topic.get_topic_name()
        partitions = {tp.partition for tp in active_tps if tp.topic == topic}
        try:
            self.check_rows(partitions - self._checked_partitions)
        except StateRefused as exc:
            log.critical("%s", exc)
            await self.app.crash(exc)
            return
        self._checked_partitions |= partitions

    def check_rows(self, partitions: Iterable[int]) -> None:
        """Raise StateRefused for the first refused row of `partitions`: one of an earlier
        release (StateFromEarlierRelease), or one `check_row` refuses."""
        store = self.data
        if not isinstance(store, SerializedStore):
            return  # the memory store (tests) keeps decoded rows
        dbs = getattr(store, "_dbs", {})
        for partition in partitions:
            if partition in dbs:
                for key, raw in dbs[partition].items():
                    if key == FAUST_OFFSET_KEY:
                        continue
                    schema = refused_schema(raw)
                    if schema is not None:
                        raise StateFromEarlierRelease(self.name, key, schema)
                    if self.check_row is not None:
                        self.check_row(key, codec.decode(raw))

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        """Recovery writes changelog records to the store: forget what was read of those
        keys before (a web view or a lookup may read a key while its partition recovers;
        its cached "missing" or older row would otherwise outlive the recovery)."""
        events = list(batch)
        super().apply_changelog_batch(events)
        for event in events:
            self._rows.pop(cast(bytes, event.message.key), None)

    def _partition(self) -> int:
        event = faust.current_event()
        if event is None:
            raise RuntimeError(f"table {self.name} written outside the processing of a record")
        return int(event.message.partition)

    # ---- write-back ----

    @property
    def unwritten_rows(self) -> int:
        """Rows changed and not yet written back (in the changelog and the store)."""
        return len(self._unwritten())

    def take_changes(self) -> Changes:
        """The rows changed since the last write-back, each encoded once, for the
        changelog (`send_changes`) and then the store (`write_back`). They stay readable
        meanwhile. Rows taken before and never written back (a flush that failed) are
        taken again, under newer changes of the same keys."""
        writing = self._writing
        for partition, rows in self._changed.items():
            taken = writing.setdefault(partition, {})
            for key, row in rows.items():
                taken.pop(key, None)  # keeps the order of last writes
                taken[key] = row
        self._writing_rows.update(self._changed_rows)
        self._changed, self._changed_rows = {}, {}
        return {
            partition: {key: None if r is None else codec.encode(r) for key, r in rows.items()}
            for partition, rows in writing.items()
        }

    def send_changes(self, changes: Changes, producer: KafkaProducer) -> int:
        """Send `changes` to the changelog; returns how many records. Their delivery is
        awaited with the producer's flush, before `write_back`."""
        topic = self.changelog_topic.get_topic_name()
        sent = 0
        for partition, rows in changes.items():
            last = len(rows) - 1
            for index, (key, value) in enumerate(rows.items()):
                on_delivery = self._delivered if index == last else None
                producer.send(topic, key, value, partition=partition, on_delivery=on_delivery)
            sent += len(rows)
        self.changelog_records_sent += sent
        return sent

    def _delivered(self, delivered: tuple[int, int]) -> None:
        partition, offset = delivered
        self._changelog_offsets[partition] = max(offset, self._changelog_offsets.get(partition, -1))

    def write_back(self, changes: Changes) -> None:
        """Write `changes` (taken, and acknowledged by the changelog) to the store, and
        remember in the store how far the changelog is applied, so a restart reads only
        what came after (what Faust's own changelog writes do)."""
        store = self.data
        topic = self.changelog_topic.get_topic_name()
        for partition, encoded in changes.items():
            rows = self._writing.get(partition, {})
            if isinstance(store, SerializedStore):
                db = store._db_for_partition(partition)  # type: ignore[attr-defined]
                for key, value in encoded.items():
                    if value is None:
                        db.delete(key)
                    else:
                        db.put(key, value)
                offset = self._changelog_offsets.pop(partition, None)
                if offset is not None:
                    store.set_persisted_offset(TP(topic, partition), offset)
            else:  # the memory store (tests) keeps the objects
                for key in encoded:
                    if rows[key] is None:
                        store.pop(key, None)
                    else:
                        store[key] = rows[key]
            for key in encoded:
                self._remember(key, rows[key])
                if self._writing_rows.get(key, _MISSING) is rows[key]:
                    del self._writing_rows[key]
            self._writing.pop(partition, None)


def row_tables(app: faust.App) -> list[RowTable]:
    """The RowTables of `app`."""
    return [table for table in app.tables.values() if isinstance(table, RowTable)]
