"""A saga declared as data: steps, states, transitions, deadlines. Knows no saga.

`SagaDefinition` is what a saga module (orchestrator/sagas/) declares; `validate` checks
it (a SagaType validates each of its definitions when it is built); `machine.decide`
interprets it; `diagram.mermaid` draws it.

Conventions:
- Every waiting state waits for the reply of exactly one step; entering a waiting state
  sends that step's command (attempt 1). Terminal states wait for nothing.
- A transition is triggered by a reply type of the source state's step, or by
  `DEADLINE` (StepTimedOut: the step's deadline passed).
- A RETRIABLE step has no deadline transition: on its deadline the same command is
  re-sent with exponential backoff, forever. COMPENSATABLE and PIVOT steps get a single
  deadline whose transition starts compensation (after `attempts` sends).
- A step's `compensation` is the retriable step of the same participant that undoes it;
  every way back taken once the step may have had its effect runs it (`validate` checks).
- A `Notification` is a one-way command sent when a state is entered: the participant
  applies it (idempotently) and replies nothing. It is as reliable as any command: the
  saga's row is written only once the broker has it, so a crash sends it again.
- A request that breaks its saga's input rules goes straight to `invalid_request`, a
  terminal state, with the reason: no participant is asked anything.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

from schemas.messages import StepTimedOut

DEADLINE = StepTimedOut
"""Trigger of a transition taken when the source state's deadline passes."""


class StepKind(enum.Enum):
    COMPENSATABLE = "compensatable"
    PIVOT = "pivot"
    RETRIABLE = "retriable"


@dataclass(frozen=True)
class Timeout:
    """Deadline of attempt n: `base * 2**(n-1)`, at most `cap` (base == cap: fixed)."""

    base: timedelta
    cap: timedelta

    def after(self, attempt: int) -> timedelta:
        doublings = min(max(attempt - 1, 0), 32)  # 2**32 * base is far beyond any cap
        return min(self.base * 2**doublings, self.cap)


def backoff(base_seconds: float, cap_seconds: float) -> Timeout:
    return Timeout(timedelta(seconds=base_seconds), timedelta(seconds=cap_seconds))


def single_deadline(seconds: float) -> Timeout:
    return Timeout(timedelta(seconds=seconds), timedelta(seconds=seconds))


class DefinitionError(ValueError):
    """The saga definition is inconsistent; the message lists every problem found."""


@dataclass(frozen=True)
class Step:
    name: str  # also the suffix of the command id: "{saga_id}:{name}"
    participant: str  # who receives the command (a key of SagaType.routes)
    command: type
    success: type
    failure: type | None
    kind: StepKind
    timeout: Timeout | None
    compensation: str | None = None  # name of the step that undoes this one
    # Compensatable/pivot steps: how many times the (idempotent) command is sent before a
    # deadline compensates. Re-sending first means a command lost in a crash costs one
    # deadline, not the order. Retriable steps re-send forever.
    attempts: int = 1

    @property
    def replies(self) -> tuple[type, ...]:
        return (self.success,) if self.failure is None else (self.success, self.failure)

    def deadline_after(self, attempt: int) -> timedelta:
        if self.timeout is None:
            raise DefinitionError(f"step {self.name} has no timeout policy")
        return self.timeout.after(attempt)


@dataclass(frozen=True)
class State:
    name: str
    step: str | None  # the step whose reply this state waits for; None when terminal


@dataclass(frozen=True)
class Transition:
    source: str
    trigger: type  # a reply type of the source state's step, or DEADLINE
    target: str  # entering it sends the command of the target's step, if any
    reason: str | None = None  # rejection reason recorded on this transition, if fixed


@dataclass(frozen=True)
class Notification:
    """A one-way command sent to `participant` when the saga enters `state`."""

    name: str  # also the suffix of the command id: "{saga_id}:{name}"
    state: str
    participant: str  # who receives the command (a key of SagaType.routes)
    command: type


@dataclass(frozen=True)
class SagaDefinition:
    """One version of a saga: its steps, states and transitions. Rows record the version
    they started on, and finish on it (SagaType.definitions)."""

    name: str
    steps: tuple[Step, ...]
    states: tuple[State, ...]
    transitions: tuple[Transition, ...]
    initial: str
    terminal: frozenset[str]
    notifications: tuple[Notification, ...] = ()
    invalid_request: str | None = None  # where a request breaking the input limits goes
    version: int = 1

    @cached_property
    def _steps(self) -> Mapping[str, Step]:
        return {step.name: step for step in self.steps}

    @cached_property
    def _states(self) -> Mapping[str, State]:
        return {state.name: state for state in self.states}

    @cached_property
    def _transitions(self) -> Mapping[tuple[str, type], Transition]:
        return {(t.source, t.trigger): t for t in self.transitions}

    @cached_property
    def _by_command(self) -> Mapping[type, Step]:
        return {step.command: step for step in self.steps}

    @cached_property
    def _participants(self) -> Mapping[type, str]:
        return {
            **{n.command: n.participant for n in self.notifications},
            **{step.command: step.participant for step in self.steps},
        }

    def step(self, name: str) -> Step | None:
        return self._steps.get(name)

    def waiting_step(self, state: str) -> Step | None:
        """The step whose reply `state` waits for (None for terminal or unknown states)."""
        spec = self._states.get(state)
        return None if spec is None or spec.step is None else self._steps.get(spec.step)

    def transition(self, state: str, trigger: type) -> Transition | None:
        return self._transitions.get((state, trigger))

    def step_for_command(self, command: type) -> Step | None:
        return self._by_command.get(command)

    def participant_of(self, command: type) -> str | None:
        """Who receives `command`: a step's or a notification's participant."""
        return self._participants.get(command)

    def notifications_on(self, state: str) -> tuple[Notification, ...]:
        return tuple(n for n in self.notifications if n.state == state)

    def is_terminal(self, state: str) -> bool:
        return state in self.terminal

    def outgoing(self, state: str) -> Iterator[Transition]:
        return (t for t in self.transitions if t.source == state)

    @cached_property
    def pivot(self) -> Step | None:
        return next((s for s in forward_steps(self) if s.kind is StepKind.PIVOT), None)

    def abort_target(self, state: str) -> str | None:
        """Where an operator's abort takes a saga waiting in `state`: before the pivot, to
        the state that runs the compensation of the step it waits for (the step may have
        taken effect). None at or after the pivot (the saga only goes forward), while it
        compensates already, and when it has ended."""
        step = self.waiting_step(state)
        forward = forward_steps(self)
        if step is None or step not in forward or self.pivot is None:
            return None
        if forward.index(step) >= forward.index(self.pivot):
            return None
        return next((s.name for s in self.states if s.step == step.compensation), None)


def command_id(saga_id: str, step: str) -> str:
    """Stable id of a saga step's command; every re-send of it carries the same id."""
    return f"{saga_id}:{step}"


def validate(definition: SagaDefinition) -> None:
    """Raise DefinitionError listing every inconsistency of `definition`."""
    problems = [
        *_duplicate_names(definition),
        *_bad_states(definition),
        *_bad_transitions(definition),
        *_bad_attempts(definition),
        *_bad_compensations(definition),
        *_unhandled_replies(definition),
        *_missing_deadlines(definition),
        *_unreachable_states(definition),
        *_misordered_steps(definition),
        *_skipped_compensations(definition),
        *_bad_notifications(definition),
        *_unabortable_states(definition),
    ]
    if problems:
        lines = "\n".join(f"- {problem}" for problem in problems)
        raise DefinitionError(
            f"invalid saga definition {definition.name} v{definition.version}:\n{lines}"
        )


def _duplicates(names: Iterable[str]) -> list[str]:
    return sorted(name for name, count in Counter(names).items() if count > 1)


def _duplicate_names(d: SagaDefinition) -> Iterator[str]:
    for name in _duplicates(step.name for step in d.steps):
        yield f"step {name} is declared twice"
    for name in _duplicates(state.name for state in d.states):
        yield f"state {name} is declared twice"
    keys = [f"{t.source} on {t.trigger.__name__}" for t in d.transitions]
    for key in _duplicates(keys):
        yield f"transition from {key} is declared twice"


def _bad_states(d: SagaDefinition) -> Iterator[str]:
    names = {state.name for state in d.states}
    if d.initial not in names:
        yield f"initial state {d.initial} is unknown"
    elif d.initial in d.terminal:
        yield f"initial state {d.initial} is terminal"
    for name in sorted(d.terminal - names):
        yield f"terminal state {name} is unknown"
    for state in d.states:
        if state.step is not None and d.step(state.step) is None:
            yield f"state {state.name} waits for unknown step {state.step}"
        if state.name in d.terminal and state.step is not None:
            yield f"terminal state {state.name} waits for step {state.step}"


def _bad_transitions(d: SagaDefinition) -> Iterator[str]:
    names = {state.name for state in d.states}
    for t in d.transitions:
        where = f"transition {t.source} --{t.trigger.__name__}--> {t.target}"
        if t.source not in names:
            yield f"{where} starts from unknown state {t.source}"
        if t.target not in names:
            yield f"{where} targets unknown state {t.target}"
        if t.source in d.terminal:
            yield f"{where} leaves terminal state {t.source}"
            continue
        step = d.waiting_step(t.source)
        if step is not None and t.trigger is not DEADLINE and t.trigger not in step.replies:
            yield f"{where}: {t.trigger.__name__} is not a reply of step {step.name}"


def _bad_attempts(d: SagaDefinition) -> Iterator[str]:
    for step in d.steps:
        if step.attempts < 1:
            yield f"step {step.name}: attempts must be at least 1, got {step.attempts}"


def _compensation_problem(d: SagaDefinition, step: Step) -> str | None:
    """Why `step.compensation` cannot undo `step` (None if it can, or if there is none)."""
    if step.compensation is None:
        return None
    undo = d.step(step.compensation)
    if undo is None:
        return f"step {step.name} has unknown compensation step {step.compensation}"
    if undo.participant != step.participant:
        return (
            f"step {step.name}: compensation {undo.name} belongs to participant"
            f" {undo.participant}, not {step.participant}"
        )
    if undo.kind is not StepKind.RETRIABLE:
        return (
            f"step {step.name}: compensation {undo.name} must be retriable, not {undo.kind.value}"
        )
    if undo in forward_steps(d):
        return f"step {step.name}: compensation {undo.name} is a step of the forward path"
    return None


def _bad_compensations(d: SagaDefinition) -> Iterator[str]:
    """A compensation undoes its step: a retriable step of the same participant that is
    not itself on the forward path. A compensatable step must name one."""
    for step in d.steps:
        if step.kind is StepKind.COMPENSATABLE and step.compensation is None:
            yield f"compensatable step {step.name} names no compensation"
        problem = _compensation_problem(d, step)
        if problem is not None:
            yield problem


def _unhandled_replies(d: SagaDefinition) -> Iterator[str]:
    for state in d.states:
        step = d.waiting_step(state.name)
        for reply in step.replies if step is not None else ():
            if d.transition(state.name, reply) is None:
                yield f"state {state.name} has no transition for reply {reply.__name__}"


def _missing_deadlines(d: SagaDefinition) -> Iterator[str]:
    for state in d.states:
        if state.name in d.terminal:
            continue
        if state.step is None:
            yield f"waiting state {state.name} has no step, so no deadline policy"
            continue
        step = d.step(state.step)
        if step is None:
            continue  # reported by _bad_states
        timeout = step.timeout
        if timeout is None:
            yield f"waiting state {state.name}: step {step.name} has no deadline policy"
        elif not timedelta(0) < timeout.base <= timeout.cap:
            yield f"step {step.name}: timeout needs 0 < base <= cap, got {timeout}"
        on_deadline = d.transition(state.name, DEADLINE)
        if step.kind is StepKind.RETRIABLE and on_deadline is not None:
            yield f"state {state.name}: retriable step {step.name} must retry, not leave"
        if step.kind is not StepKind.RETRIABLE and on_deadline is None:
            kind = step.kind.value
            yield f"state {state.name}: {kind} step {step.name} has no deadline transition"


def _unreachable_states(d: SagaDefinition) -> Iterator[str]:
    reached = {d.initial}
    queue = deque([d.initial])
    while queue:
        for t in d.outgoing(queue.popleft()):
            if t.target not in reached:
                reached.add(t.target)
                queue.append(t.target)
    for state in d.states:
        if state.name not in reached:
            yield f"state {state.name} is unreachable from {d.initial}"


def forward_steps(d: SagaDefinition) -> list[Step]:
    """Steps of the happy path: from the initial state, follow every success reply."""
    steps: list[Step] = []
    state: str | None = d.initial
    while state is not None:
        step = d.waiting_step(state)
        if step is None or step in steps:
            break
        steps.append(step)
        transition = d.transition(state, step.success)
        state = None if transition is None else transition.target
    return steps


def _misordered_steps(d: SagaDefinition) -> Iterator[str]:
    """Forward steps: undoable ones, then exactly one pivot, then retriable ones.

    A RETRIABLE forward step before the pivot is allowed only if it names a compensation
    (it cannot fail, so it is retried on deadline, but it can be undone), as `create_order`
    is undone by `reject_order`. Steps off the forward path are compensations: retriable.
    """
    forward = forward_steps(d)
    pivots = [step.name for step in forward if step.kind is StepKind.PIVOT]
    if len(pivots) != 1:
        yield f"the forward path needs exactly one pivot step, found {pivots or 'none'}"
        return
    pivot_at = next(i for i, step in enumerate(forward) if step.kind is StepKind.PIVOT)
    for step in forward[:pivot_at]:
        if step.kind is StepKind.RETRIABLE and step.compensation is None:
            yield (
                f"retriable step {step.name} comes before the pivot {pivots[0]}"
                " with no compensation"
            )
    for step in forward[pivot_at + 1 :]:
        if step.kind is StepKind.COMPENSATABLE:
            yield f"compensatable step {step.name} comes after the pivot {pivots[0]}"
        if step.compensation is not None:
            yield f"step {step.name} after the pivot {pivots[0]} declares a compensation"
    for step in d.steps:
        if step not in forward and step.kind is not StepKind.RETRIABLE:
            yield f"compensation step {step.name} must be retriable, not {step.kind.value}"


def _skipped_compensations(d: SagaDefinition) -> Iterator[str]:
    """Once a forward step may have taken effect, every way back runs its compensation.

    The saga turns back on the step's own deadline (it may have taken effect) and on the
    failure or deadline of any later forward step; from there, every path to a terminal
    state must pass through a state of the compensation step. The step's own failure
    reply needs no undo: the participant reports it took no effect.
    """
    forward = forward_steps(d)
    for at, step in enumerate(forward):
        if step.compensation is None or _compensation_problem(d, step) is not None:
            continue  # nothing to check, or reported by _bad_compensations
        undo_states = _states_of(d, step.compensation)
        turns: list[tuple[str, type]] = [(state, DEADLINE) for state in _states_of(d, step.name)]
        for later in forward[at + 1 :]:
            for trigger in (later.failure, DEADLINE):
                if trigger is not None:
                    turns += [(state, trigger) for state in _states_of(d, later.name)]
        for source, trigger in turns:
            turn = d.transition(source, trigger)
            if turn is None:
                continue
            end = _terminal_avoiding(d, turn.target, undo_states)
            if end is not None:
                yield (
                    f"{source} --{trigger.__name__}--> {turn.target} can reach {end} without"
                    f" {step.compensation}, which undoes {step.name}"
                )


def _bad_notifications(d: SagaDefinition) -> Iterator[str]:
    """Notifications: of a known state, each its own command, none a step's command (a
    step's command waits for a reply; a notification's does not). The state of invalid
    requests is terminal."""
    names = {state.name for state in d.states}
    for n in d.notifications:
        if n.state not in names:
            yield f"notification {n.name} is sent on unknown state {n.state}"
        if d.step_for_command(n.command) is not None:
            yield f"notification {n.name}: {n.command.__name__} is a step's command"
    for name in _duplicates(n.name for n in d.notifications):
        yield f"notification {name} is declared twice"
    for name in _duplicates(n.command.__name__ for n in d.notifications):
        yield f"command {name} is sent by several notifications"
    for name in _duplicates([*(s.name for s in d.steps), *(n.name for n in d.notifications)]):
        if name not in _duplicates(s.name for s in d.steps):
            yield f"notification {name} has the name of a step (command ids would clash)"
    if d.invalid_request is not None and d.invalid_request not in d.terminal:
        yield f"invalid requests go to {d.invalid_request}, which is not a terminal state"


def _states_of(d: SagaDefinition, step: str) -> list[str]:
    return [state.name for state in d.states if state.step == step]


def _terminal_avoiding(d: SagaDefinition, start: str, avoid: list[str]) -> str | None:
    """A terminal state reachable from `start` without entering `avoid`, if there is one."""
    if start in avoid:
        return None
    reached = {start}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if d.is_terminal(state):
            return state
        for t in d.outgoing(state):
            if t.target not in reached and t.target not in avoid:
                reached.add(t.target)
                queue.append(t.target)
    return None


def _unabortable_states(d: SagaDefinition) -> Iterator[str]:
    """Before the pivot, an operator may abort: each such state needs a way back."""
    forward = forward_steps(d)
    if d.pivot is None or d.pivot not in forward:
        return  # reported by _misordered_steps
    before = forward[: forward.index(d.pivot)]
    for state in d.states:
        if state.step in {step.name for step in before} and d.abort_target(state.name) is None:
            yield f"state {state.name} comes before the pivot but no state runs its undo"
