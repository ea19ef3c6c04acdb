"""Retention: how long a terminal saga stays in the `sagas` table, and which are due.

A saga that has ended (its row's `step` is None) leaves the table once it ended more than
the retention ago: the runner's timer sends an `ExpireSaga` keyed by the saga id to the
co-partitioned `saga.operations` topic, and the agent that owns the key's partition
deletes the row (a tombstone in the changelog: compaction then forgets the key) and
sends the saga type's forget commands (`SagaType.forget`). The timer never writes the
table.

Why nothing of the saga can come after that: a terminal saga sends no command (it waits
for nothing, has no deadline, and operator actions on it are refused), so every command
it ever sent left the orchestrator at least the retention before its forget commands,
which follow them on each participant's partitions; the orchestrator replays only the
inputs it had not committed, seconds old, not days. So the retention must be far longer
than any backlog (days, not seconds: the short ones are for tests).

`ExpiryIndex` keeps, in memory, the end time of the terminal rows of the worker's
partitions, ordered by when they are due, so the timer's pass costs the sagas that are
due, not a table scan per second. Like `DeadlineWatch`, the agent updates it on every row
it writes (or deletes) and a scan of the table rebuilds it after a start or rebalance.
"""

from __future__ import annotations

import heapq
import os
from datetime import datetime, timedelta
from typing import Any

from messaging.durations import DurationError, parse_duration
from schemas.messages import ExpireSaga

ENVIRONMENT_VARIABLE = "SAGA_RETENTION"
DEFAULT_RETENTION = timedelta(days=7)
# An ExpireSaga not followed by the row's deletion (lost, or the saga type's gate kept
# the saga: see SagaType.forget) is sent again after this long, or the retention if less.
RESEND_AFTER = timedelta(hours=1)


class RetentionError(ValueError):
    """A retention that is not a positive duration; the message says what is accepted."""


def parse_retention(text: str, source: str = ENVIRONMENT_VARIABLE) -> timedelta:
    """A duration such as "7d", "12h", "30m", "2s" or "500ms" (a positive number and a
    unit); anything else raises RetentionError naming `source`."""
    try:
        return parse_duration(text, source)
    except DurationError:
        raise RetentionError(
            f"{source}={text!r} is not a retention: give a positive number and a unit,"
            " ms, s, m, h or d (e.g. 7d, 12h, 2s), at most 100 years"
        ) from None


def configured_retention(value: timedelta | str | None = None) -> timedelta:
    """`value` (a timedelta or a duration's text), else SAGA_RETENTION, else 7 days."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise RetentionError(f"retention {value} is not positive")
        return value
    if value is not None:
        return parse_retention(value, "retention")
    text = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    return parse_retention(text) if text else DEFAULT_RETENTION


def ended_by(row: Any, cut_off: datetime) -> bool:
    """Has the saga of `row` ended (it waits for nothing) at or before `cut_off`?"""
    return row is not None and row.step is None and row.updated_at <= cut_off


class ExpiryIndex:
    """The end times of the terminal rows of this worker's partitions, by when each is due.

    A heap of (due at, key, end time) with lazy deletion: an entry counts only while the
    key's end time in `ended` is still the one it was pushed with.
    """

    def __init__(self, retention: timedelta, resend_after: timedelta = RESEND_AFTER) -> None:
        self.retention = retention
        self.resend_after = min(resend_after, retention)
        self.ended: dict[bytes, datetime] = {}
        self._due: list[tuple[datetime, bytes, datetime]] = []
        self._scanning = False
        self._found: dict[bytes, datetime] = {}
        self._touched: set[bytes] = set()  # keys the agent wrote since the scan began

    def __len__(self) -> int:
        return len(self.ended)

    def update(self, key: bytes, row: Any | None) -> None:
        """The agent wrote `row` (None: deleted it)."""
        if self._scanning:
            self._touched.add(key)
        if row is None or row.step is not None:
            self.ended.pop(key, None)
        elif self.ended.get(key) != row.updated_at:
            self._add(key, row.updated_at)

    # ---- rebuilding from a scan of the table ----

    def begin_rescan(self) -> None:
        self._scanning, self._found, self._touched = True, {}, set()

    def found(self, key: bytes, row: Any) -> None:
        if row is not None and row.step is None:
            self._found[key] = row.updated_at

    def end_rescan(self) -> None:
        """What the agent wrote meanwhile is newer than what the scan read."""
        kept = {k: e for k, e in self.ended.items() if k in self._touched}
        found = {k: e for k, e in self._found.items() if k not in self._touched}
        self.ended, self._due = {}, []
        for key, end in (kept | found).items():
            self._add(key, end)
        self._scanning, self._found, self._touched = False, {}, set()

    # ---- what is due ----

    def due(self, now: datetime) -> list[tuple[bytes, ExpireSaga]]:
        """An ExpireSaga for each saga that ended more than the retention before `now`;
        one is sent again after `resend_after` if the row is still there then."""
        cut_off = now - self.retention
        result = []
        while self._due and self._due[0][0] <= now:
            _, key, end = heapq.heappop(self._due)
            if self.ended.get(key) != end:
                continue  # written again, or gone, since this entry was pushed
            result.append((key, ExpireSaga(key.decode(), ended_by=cut_off, requested_at=now)))
            heapq.heappush(self._due, (now + self.resend_after, key, end))
        if len(self._due) > 2 * len(self.ended) + 1000:  # drop the stale entries
            self._due = [(at, k, e) for at, k, e in self._due if self.ended.get(k) == e]
            heapq.heapify(self._due)
        return result

    def _add(self, key: bytes, end: datetime) -> None:
        self.ended[key] = end
        heapq.heappush(self._due, (end + self.retention, key, end))
