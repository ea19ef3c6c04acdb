"""Adaptive fetch batching: no wait when traffic is light, batches when it is heavy.

A Faust agent pays a large fixed cost per fetch (the hand-off from the consumer thread,
wake-ups, bookkeeping): in a steady trickle, where each fetch brings one record, a record
costs it several times what it costs in bulk. Asking the broker to gather records before
it answers saves that, at the price of waiting; a fixed wait (the seed's 20 ms) costs
every hop of a saga that wait when traffic is light, and makes an idle worker fetch 50
times a second for nothing.

So the wait follows the rate at which the worker's agents take records (measured every
half second, smoothed): below BATCH_FROM_RATE records/s the broker answers as soon as a
record is there (min 1 byte; an idle fetch waits 500 ms); above, it may wait about as long
as BATCH_RECORDS records take to come at that rate (a shorter wait would add latency and
still bring one record a fetch), at most `max_wait_ms`, or until that long's worth of
bytes has come. `SAGA_FETCH_MAX_WAIT_MS=0` turns batching off. Whatever the rate, it never
waits while the machine's CPUs have time to spare (messaging.cpu): then a wait would only
add latency.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import faust

from messaging.faust_workarounds import set_fetch_limits

BATCH_FROM_RATE = 200.0  # records/s below which fetches never wait for more
BATCH_RECORDS = 8  # above it, wait for about this many records
IDLE_WAIT_MS = 500  # how long an empty fetch waits at the broker (min bytes 1)
MAX_MIN_BYTES = 1 << 20
SMOOTHING = 0.5  # weight of the newest measurement


@dataclass(frozen=True)
class FetchLimits:
    min_bytes: int
    max_wait_ms: int


def fetch_limits(records_per_s: float, bytes_per_s: float, max_wait_ms: int) -> FetchLimits:
    """What to ask the broker for at this rate (see the module doc)."""
    if max_wait_ms <= 0 or records_per_s < BATCH_FROM_RATE:
        return FetchLimits(1, IDLE_WAIT_MS)
    wait_ms = max(1, min(max_wait_ms, round(1000 * BATCH_RECORDS / records_per_s)))
    min_bytes = int(bytes_per_s * wait_ms / 1000)
    return FetchLimits(max(1, min(MAX_MIN_BYTES, min_bytes)), wait_ms)


class FetchBatching:
    """Counts what the agents take and sets the consumer's fetch limits from it (Faust
    has no setting for them: `messaging.faust_workarounds.set_fetch_limits`)."""

    def __init__(self, app: faust.App, max_wait_ms: int) -> None:
        self.app = app
        self.max_wait_ms = max_wait_ms
        self.records = 0
        self.bytes = 0
        self.records_per_s = 0.0
        self.bytes_per_s = 0.0
        self.limits = FetchLimits(1, IDLE_WAIT_MS)
        self._since = time.monotonic()

    def took(self, value: bytes | None) -> None:
        """An agent took a record (called for each, so it stays cheap)."""
        self.records += 1
        self.bytes += len(value) if value else 0

    def adjust(self, now: float | None = None, batch: bool = True) -> FetchLimits:
        """Fold the counts since the last call into the rates; set the limits (never a
        wait without `batch`: see messaging.cpu)."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self._since, 1e-3)
        self._since = now
        self.records_per_s = _smooth(self.records_per_s, self.records / elapsed)
        self.bytes_per_s = _smooth(self.bytes_per_s, self.bytes / elapsed)
        self.records = self.bytes = 0
        max_wait_ms = self.max_wait_ms if batch else 0
        self.limits = fetch_limits(self.records_per_s, self.bytes_per_s, max_wait_ms)
        # Read by the consumer's fetcher each time it builds a request (once it started).
        set_fetch_limits(self.app, self.limits.min_bytes, self.limits.max_wait_ms)
        return self.limits


def _smooth(old: float, new: float) -> float:
    return SMOOTHING * new + (1 - SMOOTHING) * old
