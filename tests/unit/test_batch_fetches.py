"""batch_fetches (messaging.faust_app): the broker may gather records before a fetch returns."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from messaging.faust_app import batch_fetches


async def test_batch_fetches_sets_the_fetcher_limits_once_partitions_are_assigned() -> None:
    handlers: list[Callable[..., Any]] = []
    fetcher = SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=1500)
    consumer = SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(_fetcher=fetcher)))
    signal = SimpleNamespace(connect=handlers.append)
    app = SimpleNamespace(consumer=consumer, on_partitions_assigned=signal)
    batch_fetches(app, 65536, 20)  # type: ignore[arg-type]
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, 1500)
    for handler in handlers:
        await handler(consumer, set())
    assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (65536, 20)
