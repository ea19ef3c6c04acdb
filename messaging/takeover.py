"""Whether a worker has caught up with the partitions it took over.

A worker's rows reach the changelog at its commits, with its input offsets. A worker that
is killed loses what it did since its last commit: the new owner of its partitions
restores their tables from the changelogs, without those rows, and processes the
uncommitted input again, which writes them again. Meanwhile a row may be missing that
was there before (a saga whose first event is out, an order that was created).

So at each assignment the worker notes where its input partitions end (their high
water); until it has committed up to there, it cannot tell "no such row" from "a row
this worker is still re-making", and its views answer 503 (retry) for a row they do not
find (`messaging.web.missing`). After a clean hand-over the previous owner committed
everything: the new owner is caught up as soon as it has processed what came meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import faust
from faust.types import TP

log = logging.getLogger(__name__)


class Takeover:
    def __init__(self, app: faust.App) -> None:
        self.app = app
        # Input partition -> its end offset when assigned (None: not known yet).
        self.horizons: dict[TP, int | None] = {}
        self.assignments = 0  # a newer assignment makes an older look-up obsolete
        self.look_up: asyncio.Future[None] | None = None

    async def on_assigned(self, _app: Any, assigned: set[TP], **_signal: Any) -> None:
        inputs = {tp for tp in assigned if self.app.topics.acks_enabled_for(tp.topic)}
        self.assignments += 1
        self.horizons = dict.fromkeys(inputs)
        if inputs:  # not in the rebalance itself: the look-up is a broker round trip
            self.look_up = asyncio.ensure_future(self._look_up_horizons(self.assignments, inputs))

    async def _look_up_horizons(self, assignment: int, inputs: set[TP]) -> None:
        """Until it has them, or a newer assignment makes them obsolete (the views say
        503 for missing rows meanwhile)."""
        consumer: Any = self.app.consumer
        pause = 0.5
        while assignment == self.assignments and not self.app.should_stop:
            try:
                ends = await consumer.highwaters(*inputs)
            except Exception as exc:  # the broker is busy or away: ask again
                log.warning("no end offsets for %d partitions yet (%r); retrying", len(inputs), exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            if assignment == self.assignments:
                self.horizons = {tp: int(ends[tp]) for tp in inputs}
            return

    def caught_up(self, partition: int) -> bool:
        """Has the worker committed each of its input partitions numbered `partition` up
        to where it ended when the worker was assigned it?"""
        consumer: Any = self.app.consumer
        for tp, horizon in self.horizons.items():
            if tp.partition != partition:
                continue
            if horizon is None:
                return False
            committed = consumer._committed_offset.get(tp) or 0  # the next offset to read
            if committed < horizon:
                return False
        return True


_TAKEOVERS: weakref.WeakKeyDictionary[faust.App, Takeover] = weakref.WeakKeyDictionary()


def track_takeovers(app: faust.App) -> None:
    takeover = Takeover(app)
    _TAKEOVERS[app] = takeover
    # mode types signal receivers as taking *args; Faust sends (app, assigned).
    app.on_partitions_assigned.connect(takeover.on_assigned)  # type: ignore[arg-type]


def caught_up(app: faust.App, partition: int) -> bool:
    """See Takeover.caught_up; True for an app that does not track takeovers."""
    takeover = _TAKEOVERS.get(app)
    return takeover is None or takeover.caught_up(partition)
