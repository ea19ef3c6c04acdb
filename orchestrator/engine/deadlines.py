"""The deadlines of the open sagas of a worker's partitions, kept in memory."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from orchestrator.engine.machine import expired
from schemas.messages import StepTimedOut


class DeadlineWatch:
    """Deadlines of the open sagas on this worker's partitions, kept in memory.

    The agent updates it on every write; a scan of the table rebuilds it after a start or
    rebalance (rows recovered from the changelog never pass through the agent).
    """

    def __init__(self) -> None:
        self.open: dict[bytes, Any] = {}
        self.fired: set[tuple[bytes, str, int]] = set()
        self.needs_rescan = True
        self.touched: set[bytes] = set()  # keys the agent wrote since the scan began

    def update(self, key: bytes, state: Any | None) -> None:
        """The agent wrote `state` (None: deleted the row)."""
        self.touched.add(key)
        if state is None or state.deadline is None:
            self.open.pop(key, None)
        else:
            self.open[key] = state

    async def rescan(self, rows: Any) -> None:
        """Rebuild from the table, giving the event loop back now and then (tables are big)."""
        self.needs_rescan = False
        self.touched.clear()
        found: dict[bytes, Any] = {}
        for count, (key, state) in enumerate(rows, 1):
            if state is not None and state.deadline is not None:
                found[key] = state
            if count % 500 == 0:
                await asyncio.sleep(0)
        # What the agent wrote meanwhile is newer than what the scan read.
        self.open = {k: s for k, s in self.open.items() if k in self.touched} | {
            k: s for k, s in found.items() if k not in self.touched
        }

    def due(self, now: datetime) -> list[tuple[bytes, StepTimedOut]]:
        """StepTimedOut messages to send now, each at most once per (saga, step, attempt)."""
        result = []
        for key, state in self.open.items():
            timeout = expired(state, now)
            if timeout is None:
                continue
            marker = (key, timeout.step, timeout.attempt)
            if marker not in self.fired:
                self.fired.add(marker)
                result.append((key, timeout))
        if len(self.fired) > 100_000:  # markers only suppress re-sends; losing them is harmless
            self.fired.clear()
        return result
