"""A model of a worker's at-least-once processing, crashes included, for property tests
of the participants' pure logic (no Faust, no broker).

What it models is what messaging.faust_app and messaging.tables guarantee:

- each input topic is one ordered log; the worker reads each from its position and
  hands every record, with its offset, to a handler that returns rows and sends;
- rows change in memory; sends are in flight until delivered;
- a commit delivers every send made so far, then writes the rows changed since the last
  one to the changelog in the order of their last write, then commits the positions it
  had when it began;
- a crash can strike anywhere in that: in-flight sends are delivered up to some point
  per topic (never with a gap), the changelog gets a prefix of what was being written,
  positions go back to the last commit and memory back to the changelog.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Send = tuple[str, bytes, object]  # (topic, key, message)
Handler = Callable[
    [str, bytes, object, int, dict[bytes, Any]], tuple[list[tuple[bytes, Any]], list[Send]]
]


@dataclass
class ModelWorker:
    inputs: list[str]
    handler: Handler  # (topic, key, message, offset, rows) -> (rows to write, sends)
    rng: random.Random
    logs: dict[str, list[tuple[bytes, object]]] = field(default_factory=dict)
    durable: dict[bytes, Any] = field(default_factory=dict)  # what the changelog holds
    memory: dict[bytes, Any] = field(default_factory=dict)
    changed: dict[bytes, Any] = field(default_factory=dict)  # in order of last write
    positions: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    in_flight: list[Send] = field(default_factory=list)
    crashes: int = 0

    def __post_init__(self) -> None:
        for topic in self.inputs:
            self.logs.setdefault(topic, [])
            self.positions.setdefault(topic, 0)
            self.committed.setdefault(topic, 0)

    def log(self, topic: str) -> list[tuple[bytes, object]]:
        return self.logs.setdefault(topic, [])

    def append(self, topic: str, key: bytes, message: object) -> None:
        """A record written to a topic by someone else (the driver, an admin)."""
        self.log(topic).append((key, message))

    def pending(self) -> list[str]:
        return [t for t in self.inputs if self.positions[t] < len(self.log(t))]

    def step(self) -> bool:
        """Process the next record of one input topic (chosen at random); False if none."""
        topics = self.pending()
        if not topics:
            return False
        topic = self.rng.choice(topics)
        offset = self.positions[topic]
        key, message = self.log(topic)[offset]
        rows, sends = self.handler(topic, key, message, offset, self.memory)
        for row_key, row in rows:
            self.memory[row_key] = row
            self.changed.pop(row_key, None)
            self.changed[row_key] = row
        self.in_flight += sends
        self.positions[topic] = offset + 1
        return True

    def deliver(self, count: int | None = None) -> None:
        """Deliver the first `count` in-flight sends (all if None), in order."""
        count = len(self.in_flight) if count is None else count
        for topic, key, message in self.in_flight[:count]:
            self.log(topic).append((key, message))
        del self.in_flight[:count]

    def commit(self, crash: bool = False) -> None:
        """Flush and commit; with `crash`, the worker dies somewhere in the middle."""
        positions = dict(self.positions)
        changes = list(self.changed.items())
        self.changed.clear()
        if crash and self.rng.random() < 0.4:
            self._crash(self.rng.randrange(len(self.in_flight) + 1), 0, changes)
            return
        self.deliver()
        if crash:
            self._crash(0, self.rng.randrange(len(changes) + 1), changes)
            return
        self.durable.update(changes)
        self.committed = positions

    def crash(self) -> None:
        """Die between commits."""
        changes = list(self.changed.items())
        self.changed.clear()
        self._crash(self.rng.randrange(len(self.in_flight) + 1), 0, changes)

    def _crash(self, delivered: int, written: int, changes: list[tuple[bytes, Any]]) -> None:
        self.crashes += 1
        self._deliver_gapless(delivered)
        self.durable.update(changes[:written])
        self.in_flight.clear()
        self.memory = dict(self.durable)
        self.changed.clear()
        self.positions = dict(self.committed)

    def _deliver_gapless(self, delivered: int) -> None:
        """Sends reach each topic in order, without holes: a send is delivered only if
        every earlier send to its topic is."""
        stopped: set[str] = set()
        for index, (topic, key, message) in enumerate(self.in_flight):
            if index >= delivered:
                stopped.add(topic)
            if topic not in stopped:
                self.log(topic).append((key, message))

    def run(self, steps: int, crash_every: float) -> None:
        """Up to `steps` records, with commits and (at rate `crash_every`) crashes."""
        for _ in range(steps):
            if not self.step():
                break
            roll = self.rng.random()
            if roll < crash_every / 2:
                self.crash()
            elif roll < crash_every:
                self.commit(crash=True)
            elif roll < 0.25:
                self.commit()
            elif roll < 0.5:
                self.deliver(self.rng.randrange(len(self.in_flight) + 1))

    def drain(self) -> None:
        """Process everything left, then commit: no more crashes."""
        while self.pending() or self.in_flight:
            while self.step():
                pass
            self.deliver()
        self.commit()
        assert self.memory == self.durable
