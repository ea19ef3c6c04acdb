"""SagaType: everything specific to one kind of saga, declared by its module.

A saga module (orchestrator/sagas/) declares its definitions (one per deployed version)
and the few functions the engine cannot know: what a request puts in the saga's row, how
each command is built from the row, where each participant's commands go, and what a
reply adds to the row. The engine (machine, runner, views) reads nothing else.

The saga's row is a dataclass of schemas.messages with the engine's fields (ROW_FIELDS)
and the saga's own data (an order id, the order's items, a total...). Each kind of saga
has its own row type, so the sagas table tells them apart by the row's schema.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from orchestrator.engine.definition import DefinitionError, SagaDefinition, validate

# Fields every saga row has, kept by the engine.
ROW_FIELDS = (
    "saga_id",
    "state",
    "step",
    "attempt",
    "deadline",
    "reason",
    "sequence",
    "created_at",
    "updated_at",
    "version",
    "entered_at",  # when it entered its state (a re-send leaves it): how long it waits
)
# A row that also has `traceparent: str | None = None` remembers its saga's trace
# context (the runner fills it in): what the timer sends later continues the trace.
OPTIONAL_ROW_FIELDS = ("traceparent",)


@dataclass(frozen=True)
class Route:
    """Where a participant's commands go: its command topic, keyed by `key(command)`
    (where the row the command changes lives: an order, a product, an account)."""

    topic: str
    key: Callable[[Any], str]


@dataclass(frozen=True)
class Start:
    """What a request puts in its saga's row (the saga's own fields), and why it cannot
    be served (empty if it can: then the saga starts; else it ends at once, rejected)."""

    data: Mapping[str, Any]
    problems: list[str] = field(default_factory=list)


# build(row, command_id, now) -> the command, for the row's current attempt.
Build = Callable[[Any, str, datetime], Any]
# forget(row, ended_by, now) -> the command asking a participant to forget its rows of
# the saga (None: it has none). `ended_by` is the ExpireSaga's cut-off.
ForgetBuild = Callable[[Any, datetime, datetime], Any | None]


@dataclass(frozen=True)
class Forget:
    """What the participants forget of a saga that expired (see engine/retention.py).

    `commands` ((participant, command type, build)) are sent when the saga's row leaves the
    table. With a `gate` (the same), the orchestrator first asks that participant, and
    the row stays until its `answer` (a reply type with an `outcome` and the `ended_by` it
    was asked with) says SUCCESS: the participant that knows whether anything still needs
    the saga's rows (a cancel in flight needs its order's payment) decides, and the other
    commands follow. A FAILURE, or no answer, leaves the row: the expiry timer asks again.
    """

    commands: tuple[tuple[str, type, ForgetBuild], ...] = ()
    gate: tuple[str, type, ForgetBuild] | None = None
    answer: type | None = None

    @property
    def participants(self) -> dict[type, str]:
        """The participant of each forget command type."""
        every = (*self.commands, *((self.gate,) if self.gate else ()))
        return {command: participant for participant, command, _ in every}


def _nothing(_row: Any, _reply: Any) -> Mapping[str, Any]:
    return {}


def _nothing_of(_row: Any) -> Mapping[str, Any]:
    return {}


def _no_reason(_reply: Any) -> str | None:
    return None


@dataclass(frozen=True)
class SagaType:
    name: str
    definitions: tuple[SagaDefinition, ...]  # every deployed version; the last starts sagas
    request: type  # the message that starts one
    request_topic: str  # where requests come (key: the saga id)
    row: type  # its row in the sagas table
    saga_id: Callable[[Any], str]  # of a request
    start: Callable[[Any], Start]
    commands: Mapping[type, Build]
    routes: Mapping[str, Route]  # by participant
    absorb: Callable[[Any, Any], Mapping[str, Any]] = _nothing  # row fields a reply sets
    failure_reason: Callable[[Any], str | None] = _no_reason  # of a failure reply
    # What the web views show of a row besides the engine's fields: a few values in
    # lists (summary), everything that matters on its page (describe).
    summary: Callable[[Any], Mapping[str, Any]] = _nothing_of
    describe: Callable[[Any], Mapping[str, Any]] = _nothing_of
    # What its participants forget once it expired (default: nothing, no gate).
    forget: Forget = Forget()

    def __post_init__(self) -> None:
        problems = list(self._problems())
        if problems:
            lines = "\n".join(f"- {problem}" for problem in problems)
            raise DefinitionError(f"invalid saga type {self.name}:\n{lines}")

    @cached_property
    def _versions(self) -> Mapping[int, SagaDefinition]:
        return {d.version: d for d in self.definitions}

    @property
    def latest(self) -> SagaDefinition:
        """The definition new sagas start on."""
        return self.definitions[-1]

    def owns(self, row: object) -> bool:
        """Is `row` a row of this saga type?"""
        return type(row) is self.row

    def definition(self, version: int) -> SagaDefinition | None:
        """The definition of `version`, if it is deployed."""
        return self._versions.get(version)

    @cached_property
    def replies(self) -> frozenset[type]:
        """Every reply type a step of any deployed version waits for."""
        return frozenset(r for d in self.definitions for step in d.steps for r in step.replies)

    def route(self, command: Any) -> tuple[str, bytes]:
        """(topic, key) of a command of this saga (a step's, a notification's, a forget's)."""
        for definition in reversed(self.definitions):
            participant = definition.participant_of(type(command))
            if participant is not None:
                route = self.routes[participant]
                return route.topic, route.key(command).encode("utf-8")
        participant = self.forget.participants.get(type(command))
        if participant is not None:
            route = self.routes[participant]
            return route.topic, route.key(command).encode("utf-8")
        raise TypeError(f"{type(command).__name__} is not a command of {self.name}")

    def forget_commands(self, row: Any, ended_by: datetime, now: datetime) -> tuple[Any, ...]:
        """The commands sent when the saga's row leaves the table."""
        return self._forget_built(self.forget.commands, row, ended_by, now)

    def forget_gate(self, row: Any, ended_by: datetime, now: datetime) -> tuple[Any, ...]:
        """The command asking the gate whether the saga may be forgotten (none: no gate)."""
        gate = () if self.forget.gate is None else (self.forget.gate,)
        return self._forget_built(gate, row, ended_by, now)

    def _forget_built(
        self,
        builds: tuple[tuple[str, type, ForgetBuild], ...],
        row: Any,
        ended_by: datetime,
        now: datetime,
    ) -> tuple[Any, ...]:
        commands = []
        for _participant, command_type, build in builds:
            command = build(row, ended_by, now)
            if command is not None and type(command) is not command_type:
                made = type(command).__name__
                raise TypeError(f"{self.name}: a forget of {command_type.__name__} made a {made}")
            if command is not None:
                commands.append(command)
        return tuple(commands)

    def _problems(self) -> list[str]:
        problems = []
        for participant in self.forget.participants.values():
            if participant not in self.routes:
                problems.append(f"no route for participant {participant} (forget)")
        if (self.forget.gate is None) != (self.forget.answer is None):
            problems.append("forget: a gate needs its answer type, and an answer its gate")
        if not self.definitions:
            problems.append("it has no definition")
        for definition in self.definitions:
            try:
                validate(definition)
            except DefinitionError as exc:
                problems.append(str(exc))
            if definition.name != self.name:
                problems.append(f"definition v{definition.version} is named {definition.name}")
            for command in [
                *(step.command for step in definition.steps),
                *(n.command for n in definition.notifications),
            ]:
                if command not in self.commands:
                    problems.append(f"no builder for {command.__name__}")
            for participant in [
                *(step.participant for step in definition.steps),
                *(n.participant for n in definition.notifications),
            ]:
                if participant not in self.routes:
                    problems.append(f"no route for participant {participant}")
        versions = [d.version for d in self.definitions]
        if versions != sorted(set(versions)):
            problems.append(f"versions must increase, oldest first: {versions}")
        if not dataclasses.is_dataclass(self.row):
            problems.append(f"row {self.row.__name__} is not a dataclass")
        else:
            names = {f.name for f in dataclasses.fields(self.row)}
            missing = [name for name in ROW_FIELDS if name not in names]
            if missing:
                problems.append(f"row {self.row.__name__} lacks the engine's fields {missing}")
        return sorted(set(problems), key=problems.index)
