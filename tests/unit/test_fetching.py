"""Adaptive fetch batching (messaging.fetching): no wait when light, batches when heavy."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from messaging.fetching import (
    BATCH_FROM_RATE,
    IDLE_WAIT_MS,
    FetchBatching,
    FetchLimits,
    fetch_limits,
)


def test_light_traffic_is_answered_at_once_and_an_idle_fetch_waits_long() -> None:
    for rate in (0.0, 20.0, BATCH_FROM_RATE - 1):
        assert fetch_limits(rate, rate * 200, 20) == FetchLimits(1, IDLE_WAIT_MS)


def test_heavy_traffic_waits_about_as_long_as_a_few_records_take_to_come() -> None:
    rates = (200, 400, 1000, 5000, 20_000)
    waits = [fetch_limits(rate, rate * 200, 25).max_wait_ms for rate in rates]
    assert waits == [25, 20, 8, 2, 1]  # the cap, then BATCH_RECORDS / rate, at least 1 ms
    assert fetch_limits(1000, 200_000, 25) == FetchLimits(1600, 8)  # 8 ms of 200 KB/s


def test_batching_off_never_waits() -> None:
    assert fetch_limits(10_000, 2_000_000, 0) == FetchLimits(1, IDLE_WAIT_MS)


def test_the_rate_follows_what_agents_take_and_sets_the_fetcher() -> None:
    fetcher = SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=500)
    app: Any = SimpleNamespace(consumer=SimpleNamespace(_thread=SimpleNamespace(
        _consumer=SimpleNamespace(_fetcher=fetcher))))  # fmt: skip
    batching = FetchBatching(app, max_wait_ms=20)
    batching._since = 0.0
    for _ in range(2000):
        batching.took(b"x" * 100)
    assert batching.adjust(now=1.0) == fetch_limits(1000, 100_000, 20)  # smoothed from 0
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (800, 8)
    batching.took(b"x" * 100)  # as busy, but CPU is not scarce: no wait
    assert batching.adjust(now=1.001, batch=False) == FetchLimits(1, IDLE_WAIT_MS)
    for second in range(2, 8):  # quiet again: back to answering at once
        batching.adjust(now=float(second))
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, IDLE_WAIT_MS)
