"""Pure saga logic: `decide(saga, row, message, now)` applies a saga's definition to one
message. Knows no saga; no I/O.

The runner reads the saga's row, calls `decide`, sends `Decision.commands` (routed by the
saga type) and `Decision.events`, and writes `Decision.state` (the row after the message)
once the broker has them.

`decide` is total: any message it cannot use (a reply for another step, a future attempt,
a stale StepTimedOut, anything for a terminal saga, a second request with the same saga
id) returns the row object unchanged with no commands and no events. A row finishes on
the definition version it started on; a new saga starts on the latest. A terminal row
(its `step` is None: it waits for nothing) needs no definition, so a deploy may drop a
version once no saga on it is in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from orchestrator.engine.definition import (
    DEADLINE,
    Notification,
    SagaDefinition,
    Step,
    StepKind,
    Transition,
    command_id,
    forward_steps,
)
from orchestrator.engine.retention import ended_by
from orchestrator.engine.saga import SagaType
from schemas.limits import reason
from schemas.messages import (
    AbortSaga,
    ExpireSaga,
    Outcome,
    RetrySaga,
    SagaActionAnswered,
    SagaEvent,
    StepTimedOut,
)
from schemas.state import StateRefused


class DefinitionMissing(StateRefused):
    """A row started on a definition version this deploy does not have."""

    def __init__(self, saga: SagaType, version: int) -> None:
        deployed = ", ".join(str(d.version) for d in saga.definitions)
        super().__init__(
            f"a {saga.name} saga runs on definition version {version}, which this deploy"
            f" dropped (it has {deployed}): deploy it again, with version {version} kept in"
            f" {saga.name}'s definitions, until every saga on it has ended"
        )
        self.saga, self.version = saga.name, version


@dataclass(frozen=True)
class Decision:
    state: Any  # the saga's row after the message (None: there is no saga)
    commands: tuple[Any, ...] = ()
    events: tuple[SagaEvent, ...] = ()
    answer: SagaActionAnswered | None = None  # to an operator's action
    deleted: bool = False  # the row leaves the table (it expired); `state` is then None


def decide(saga: SagaType, row: Any | None, message: object, now: datetime) -> Decision:
    """The saga's reaction to `message` at `now`: new row, commands to send, events."""
    if isinstance(message, saga.request):
        return start(saga, message, now) if row is None else Decision(row)
    if row is None or not saga.owns(row):  # none yet, or of another saga
        return Decision(row)
    if row.step is None:  # terminal (it waits for nothing), whatever its version
        return Decision(row)
    definition = definition_of(saga, row)
    if isinstance(message, StepTimedOut):
        return on_deadline(saga, definition, row, message, now)
    return on_reply(saga, definition, row, message, now)


def definition_of(saga: SagaType, row: Any) -> SagaDefinition:
    definition = saga.definition(row.version)
    if definition is None:
        raise DefinitionMissing(saga, row.version)
    return definition


def expired(row: Any, now: datetime) -> StepTimedOut | None:
    """The StepTimedOut the timer sends for `row` if its deadline has passed."""
    if row.step is None or row.deadline is None or now < row.deadline:
        return None
    return StepTimedOut(
        saga_id=row.saga_id,
        step=row.step,
        attempt=row.attempt,
        deadline=row.deadline,
        fired_at=now,
    )


# ---- the three kinds of input ----


def start(saga: SagaType, request: object, now: datetime) -> Decision:
    """A new saga in the initial state of the latest definition, sending the first step's
    command; or, for a request its saga type finds wrong, a saga ended at once with the
    reason, asking no participant anything."""
    definition = saga.latest
    begun = saga.start(request)
    engine: dict[str, Any] = {
        "saga_id": saga.saga_id(request),
        "sequence": 1,
        "created_at": now,
        "updated_at": now,
        "version": definition.version,
        "entered_at": now,
    }
    if begun.problems and definition.invalid_request is not None:
        why = reason("invalid request: " + "; ".join(begun.problems))
        row = saga.row(
            **engine,
            **begun.data,
            state=definition.invalid_request,
            step=None,
            attempt=0,
            deadline=None,
            reason=why,
        )
        return Decision(row, (), (event(saga, definition, None, row, request, ()),))
    step = definition.waiting_step(definition.initial)
    if step is None:  # impossible for a validated definition
        return Decision(None)
    row = saga.row(
        **engine,
        **begun.data,
        state=definition.initial,
        step=step.name,
        attempt=1,
        deadline=now + step.deadline_after(1),
        reason=None,
    )
    commands = (build_command(saga, step, row, now),)
    return Decision(row, commands, (event(saga, definition, None, row, request, commands),))


def on_reply(
    saga: SagaType, definition: SagaDefinition, row: Any, reply: object, now: datetime
) -> Decision:
    step = definition.waiting_step(row.state)
    if step is None or not answers(reply, row, step):
        return Decision(row)
    transition = definition.transition(row.state, type(reply))
    if transition is None:
        return Decision(row)
    return take(saga, definition, row, transition, reply, now)


def on_deadline(
    saga: SagaType, definition: SagaDefinition, row: Any, timeout: StepTimedOut, now: datetime
) -> Decision:
    step = definition.waiting_step(row.state)
    if step is None or not is_current(timeout, row):
        return Decision(row)
    if step.kind is StepKind.RETRIABLE or row.attempt < step.attempts:
        return retry(saga, definition, row, step, timeout, now)
    transition = definition.transition(row.state, DEADLINE)
    if transition is None:
        return Decision(row)
    return take(saga, definition, row, transition, timeout, now)


# ---- retention: a terminal saga leaves the table ----


def expire(saga: SagaType | None, row: Any | None, message: ExpireSaga, now: datetime) -> Decision:
    """An ExpireSaga: a saga that ended at or before its cut-off leaves the table, and its
    participants are told to forget it (first its gate, if its type has one and it has
    something to ask: the row stays until the gate answers). Anything else (no row, a saga
    still running, one that ended after the cut-off: a stale or duplicate ExpireSaga)
    changes nothing.

    Only a terminal row is ever deleted or forgotten: a saga in flight still sends commands
    and needs its participants' rows, and a terminal one never sends another command."""
    if saga is None or not saga.owns(row) or not ended_by(row, message.ended_by):
        return Decision(row)
    ask = saga.forget_gate(row, message.ended_by, now)
    if ask:  # the row stays until the gate answers
        return Decision(row, ask)
    return Decision(None, saga.forget_commands(row, message.ended_by, now), deleted=True)


def forgotten(saga: SagaType | None, row: Any | None, answer: Any, now: datetime) -> Decision:
    """The gate's answer to a forget: SUCCESS for a row that still ended by the cut-off it
    was asked with deletes the row and sends the other forget commands; anything else (a
    FAILURE: something still needs the saga's rows; a duplicate; an answer about an
    earlier saga with the same id) changes nothing."""
    if (
        saga is None
        or not saga.owns(row)
        or getattr(answer, "outcome", None) != Outcome.SUCCESS
        or not ended_by(row, answer.ended_by)
    ):
        return Decision(row)
    return Decision(None, saga.forget_commands(row, answer.ended_by, now), deleted=True)


# ---- operator actions ----

Action = AbortSaga | RetrySaga


def act(saga: SagaType | None, row: Any | None, action: Action, now: datetime) -> Decision:
    """An operator's action on a saga, and its answer (the last of `Decision.commands`'
    companions: `Decision.answer`). Accepted, it is a transition recorded like any other,
    with the operator and the reason; refused, nothing changes but the answer says why."""
    name = type(action).__name__
    if saga is None or row is None:
        return _answered(row, action, now, False, f"no saga {action.saga_id}")
    if row.step is None:
        return _answered(row, action, now, False, f"the saga has ended ({row.state})")
    definition = definition_of(saga, row)
    why = reason(f"{name} by {action.operator}: {action.reason}")
    if isinstance(action, RetrySaga):
        step = definition.waiting_step(row.state)
        assert step is not None  # it waits for a step: it has not ended
        moved = replace(
            row,
            attempt=row.attempt + 1,
            deadline=now + step.deadline_after(1),  # the backoff starts again
            sequence=row.sequence + 1,
            updated_at=now,
        )
        commands = (build_command(saga, step, moved, now),)
        retried = event(saga, definition, row.state, moved, action, commands)
        events = (replace(retried, reason=why, operator=action.operator),)
        answer = f"re-sent {step.command.__name__} of {step.name} (attempt {moved.attempt})"
        return _answered(moved, action, now, True, answer, commands, events)
    target = definition.abort_target(row.state)
    if target is None:
        return _answered(row, action, now, False, _why_not_aborted(definition, row.state))
    transition = Transition(row.state, type(action), target, reason=why)
    taken = take(saga, definition, row, transition, action, now)
    aborted = tuple(replace(e, operator=action.operator) for e in taken.events)
    answer = f"aborted: {row.state} -> {target}, compensating"
    return _answered(taken.state, action, now, True, answer, taken.commands, aborted)


def _why_not_aborted(definition: SagaDefinition, state: str) -> str:
    step = definition.waiting_step(state)
    if step is not None and step not in forward_steps(definition):
        return f"{state} undoes the saga already: it will end rejected"
    pivot = definition.pivot.name if definition.pivot else "?"
    return f"{state} is at or after the pivot ({pivot}): the saga can only go forward"


def _answered(
    row: Any | None,
    action: Action,
    now: datetime,
    accepted: bool,
    answer: str,
    commands: tuple[Any, ...] = (),
    events: tuple[SagaEvent, ...] = (),
) -> Decision:
    answered = SagaActionAnswered(
        saga_id=action.saga_id,
        action_id=action.action_id,
        action=type(action).__name__,
        accepted=accepted,
        answer=answer,
        state=None if row is None else row.state,
        operator=action.operator,
        answered_at=now,
    )
    return Decision(row, commands, events, answered)


# ---- matching ----


def answers(reply: object, row: Any, step: Step) -> bool:
    """Is `reply` an answer to the command of `step` the saga waits for (any sent attempt)?

    Its outcome must match its type: a participant that refuses a command answers with
    the success type and outcome FAILURE (e.g. approving an order it already rejected);
    taking that for success would record an effect that did not happen.
    """
    attempt = getattr(reply, "attempt", None)
    expected = Outcome.SUCCESS if type(reply) is step.success else Outcome.FAILURE
    return (
        type(reply) in step.replies
        and getattr(reply, "outcome", None) == expected
        and getattr(reply, "saga_id", None) == row.saga_id
        and getattr(reply, "command_id", None) == command_id(row.saga_id, step.name)
        and isinstance(attempt, int)
        and 1 <= attempt <= row.attempt
    )


def is_current(timeout: StepTimedOut, row: Any) -> bool:
    return (timeout.saga_id, timeout.step, timeout.attempt) == (row.saga_id, row.step, row.attempt)


# ---- transitions ----


def take(
    saga: SagaType,
    definition: SagaDefinition,
    row: Any,
    transition: Transition,
    trigger: object,
    now: datetime,
) -> Decision:
    """Move to `transition.target`, sending the target step's command (attempt 1) and the
    target state's notifications."""
    step = definition.waiting_step(transition.target)
    absorbed = {} if isinstance(trigger, StepTimedOut) else saga.absorb(row, trigger)
    moved = replace(
        row,
        **absorbed,
        state=transition.target,
        step=None if step is None else step.name,
        attempt=0 if step is None else 1,
        deadline=None if step is None else now + step.deadline_after(1),
        reason=reason_after(saga, row, transition, trigger),
        sequence=row.sequence + 1,
        updated_at=now,
        entered_at=now,
    )
    commands: tuple[Any, ...] = () if step is None else (build_command(saga, step, moved, now),)
    commands += tuple(notify(saga, n, moved, now) for n in definition.notifications_on(moved.state))
    return Decision(
        moved, commands, (event(saga, definition, row.state, moved, trigger, commands),)
    )


def retry(
    saga: SagaType,
    definition: SagaDefinition,
    row: Any,
    step: Step,
    trigger: StepTimedOut,
    now: datetime,
) -> Decision:
    """Stay, re-sending the same command as the next attempt with a longer deadline."""
    attempt = row.attempt + 1
    moved = replace(
        row,
        attempt=attempt,
        deadline=now + step.deadline_after(attempt),
        sequence=row.sequence + 1,
        updated_at=now,
    )
    commands = (build_command(saga, step, moved, now),)
    return Decision(
        moved, commands, (event(saga, definition, row.state, moved, trigger, commands),)
    )


def reason_after(saga: SagaType, row: Any, transition: Transition, trigger: object) -> str | None:
    """A fixed reason of the transition, else the failure a reply reports, else unchanged."""
    if transition.reason is not None:
        return transition.reason
    why = None if isinstance(trigger, StepTimedOut) else saga.failure_reason(trigger)
    return row.reason if why is None else reason(why)


def event(
    saga: SagaType,
    definition: SagaDefinition,
    from_state: str | None,
    row: Any,
    trigger: object,
    commands: tuple[Any, ...],
) -> SagaEvent:
    return SagaEvent(
        saga_id=row.saga_id,
        sequence=row.sequence,
        at=row.updated_at,
        trigger=type(trigger).__name__,
        from_state=from_state,
        to_state=row.state,
        step=row.step,
        attempt=row.attempt,
        reason=row.reason,
        commands=[type(command).__name__ for command in commands],
        terminal=definition.is_terminal(row.state),
        saga=saga.name,
        version=definition.version,
    )


# ---- commands ----


def build_command(saga: SagaType, step: Step, row: Any, now: datetime) -> Any:
    """The command of `step` for the row's current attempt, stamped `now`."""
    return saga.commands[step.command](row, command_id(row.saga_id, step.name), now)


def notify(saga: SagaType, notification: Notification, row: Any, now: datetime) -> Any:
    """The notification's one-way command for the saga (attempt 1: it is never re-sent,
    only sent again when a crash replays the transition)."""
    build = saga.commands[notification.command]
    return build(replace(row, attempt=1), command_id(row.saga_id, notification.name), now)
