"""Pure saga logic: `decide(state, message, now)` applies the definition to one message.

No I/O. The agent reads the saga row, calls `decide`, writes `Decision.state` back, sends
`Decision.commands` (see `definition.route`) and `Decision.events` (to EVENTS_TOPIC).

`decide` is total: any message it cannot use (unknown type, a reply for another step,
a future attempt, a stale StepTimedOut, anything for a terminal saga, a second
OrderRequested) returns the state object unchanged with no commands and no events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from orchestrator.definition import (
    CREATE_ORDER_SAGA,
    DEADLINE,
    Command,
    Notification,
    SagaDefinition,
    Step,
    StepKind,
    Transition,
    command_id,
)
from schemas.limits import id_problem, reason, request_problems
from schemas.messages import (
    ApproveOrder,
    AuthorizePayment,
    CancelPayment,
    CreateOrder,
    Money,
    OrderRequested,
    Outcome,
    PaymentFailed,
    ProductsReserved,
    ProductsUnavailable,
    RejectOrder,
    ReleaseProducts,
    ReserveProducts,
    SagaEvent,
    SagaState,
    SellProducts,
    StepTimedOut,
)


@dataclass(frozen=True)
class Decision:
    state: SagaState | None
    commands: tuple[Command, ...] = ()
    events: tuple[SagaEvent, ...] = ()


def decide(
    state: SagaState | None,
    message: object,
    now: datetime,
    definition: SagaDefinition = CREATE_ORDER_SAGA,
) -> Decision:
    """The saga's reaction to `message` at `now`: new state, commands to send, events."""
    if isinstance(message, OrderRequested):
        return start(message, now, definition) if state is None else Decision(state)
    if state is None or definition.is_terminal(state.state):
        return Decision(state)
    if isinstance(message, StepTimedOut):
        return on_deadline(state, message, now, definition)
    return on_reply(state, message, now, definition)


def expired(state: SagaState, now: datetime) -> StepTimedOut | None:
    """The StepTimedOut the timer sends for `state` if its deadline has passed."""
    if state.step is None or state.deadline is None or now < state.deadline:
        return None
    return StepTimedOut(
        saga_id=state.saga_id,
        step=state.step,
        attempt=state.attempt,
        deadline=state.deadline,
        fired_at=now,
    )


# ---- the three kinds of input ----


def start(request: OrderRequested, now: datetime, definition: SagaDefinition) -> Decision:
    """A new saga in the initial state, sending the first step's command; or, for a
    request that breaks the input limits, a saga ended at once with the reason."""
    problems = request_problems(request)
    if problems and definition.invalid_request is not None:
        return reject_request(request, problems, now, definition.invalid_request, definition)
    step = definition.waiting_step(definition.initial)
    if step is None:  # impossible for a validated definition
        return Decision(None)
    saga = SagaState(
        saga_id=request.order_id,
        order_id=request.order_id,
        customer_id=request.customer_id,
        items=list(request.items),
        state=definition.initial,
        step=step.name,
        attempt=1,
        deadline=now + step.deadline_after(1),
        total=None,
        reason=None,
        sequence=1,
        created_at=now,
        updated_at=now,
    )
    commands = (build_command(step, saga, now),)
    return Decision(saga, commands, (event(None, saga, request, commands, definition),))


def reject_request(
    request: OrderRequested,
    problems: list[str],
    now: datetime,
    target: str,
    definition: SagaDefinition,
) -> Decision:
    """The saga of an invalid request: terminal at once, nothing sent to participants.

    Its row keeps none of the request's lines and no invalid customer id, so even the
    largest request makes a small row.
    """
    saga = SagaState(
        saga_id=request.order_id,
        order_id=request.order_id,
        customer_id="" if id_problem("customer id", request.customer_id) else request.customer_id,
        items=[],
        state=target,
        step=None,
        attempt=0,
        deadline=None,
        total=None,
        reason=reason("invalid request: " + "; ".join(problems)),
        sequence=1,
        created_at=now,
        updated_at=now,
    )
    return Decision(saga, (), (event(None, saga, request, (), definition),))


def on_reply(
    state: SagaState, reply: object, now: datetime, definition: SagaDefinition
) -> Decision:
    step = definition.waiting_step(state.state)
    if step is None or not answers(reply, state, step):
        return Decision(state)
    transition = definition.transition(state.state, type(reply))
    if transition is None:
        return Decision(state)
    return take(state, transition, reply, now, definition)


def on_deadline(
    state: SagaState, timeout: StepTimedOut, now: datetime, definition: SagaDefinition
) -> Decision:
    step = definition.waiting_step(state.state)
    if step is None or not is_current(timeout, state):
        return Decision(state)
    if step.kind is StepKind.RETRIABLE or state.attempt < step.attempts:
        return retry(state, step, timeout, now, definition)
    transition = definition.transition(state.state, DEADLINE)
    if transition is None:
        return Decision(state)
    return take(state, transition, timeout, now, definition)


# ---- matching ----


def answers(reply: object, state: SagaState, step: Step) -> bool:
    """Is `reply` an answer to the command of `step` the saga waits for (any sent attempt)?

    Its outcome must match its type: a participant that refuses a command answers with
    the success type and outcome FAILURE (e.g. approving an order it already rejected);
    taking that for success would record an approval that did not happen.
    """
    attempt = getattr(reply, "attempt", None)
    expected = Outcome.SUCCESS if type(reply) is step.success else Outcome.FAILURE
    return (
        type(reply) in step.replies
        and getattr(reply, "outcome", None) == expected
        and getattr(reply, "saga_id", None) == state.saga_id
        and getattr(reply, "command_id", None) == command_id(state.saga_id, step.name)
        and isinstance(attempt, int)
        and 1 <= attempt <= state.attempt
    )


def is_current(timeout: StepTimedOut, state: SagaState) -> bool:
    return (timeout.saga_id, timeout.step, timeout.attempt) == (
        state.saga_id,
        state.step,
        state.attempt,
    )


# ---- transitions ----


def take(
    state: SagaState,
    transition: Transition,
    trigger: object,
    now: datetime,
    definition: SagaDefinition,
) -> Decision:
    """Move to `transition.target`, sending the target step's command (attempt 1)."""
    step = definition.waiting_step(transition.target)
    saga = replace(
        state,
        state=transition.target,
        step=None if step is None else step.name,
        attempt=0 if step is None else 1,
        deadline=None if step is None else now + step.deadline_after(1),
        total=total_after(state, trigger),
        reason=reason_after(state, transition, trigger),
        sequence=state.sequence + 1,
        updated_at=now,
    )
    commands: tuple[Command, ...] = () if step is None else (build_command(step, saga, now),)
    commands += tuple(notify(n, saga, now) for n in definition.notifications_on(saga.state))
    return Decision(saga, commands, (event(state.state, saga, trigger, commands, definition),))


def retry(
    state: SagaState, step: Step, trigger: StepTimedOut, now: datetime, definition: SagaDefinition
) -> Decision:
    """Stay, re-sending the same command as the next attempt with a longer deadline."""
    attempt = state.attempt + 1
    saga = replace(
        state,
        attempt=attempt,
        deadline=now + step.deadline_after(attempt),
        sequence=state.sequence + 1,
        updated_at=now,
    )
    commands = (build_command(step, saga, now),)
    return Decision(saga, commands, (event(state.state, saga, trigger, commands, definition),))


def total_after(state: SagaState, trigger: object) -> Money | None:
    return trigger.total if isinstance(trigger, ProductsReserved) else state.total


def reason_after(state: SagaState, transition: Transition, trigger: object) -> str | None:
    """A fixed reason of the transition, else the failure a reply reports, else unchanged."""
    if transition.reason is not None:
        return transition.reason
    if isinstance(trigger, ProductsUnavailable):
        return reason(unavailable_reason(trigger))
    if isinstance(trigger, PaymentFailed):
        return reason(f"payment failed: {trigger.reason}" if trigger.reason else "payment failed")
    return state.reason


def unavailable_reason(reply: ProductsUnavailable) -> str:
    missing = ", ".join(
        f"{item.product_id} (requested {item.requested}, available {item.available})"
        for item in reply.missing
    )
    return f"products unavailable: {missing}" if missing else "products unavailable"


def event(
    from_state: str | None,
    saga: SagaState,
    trigger: object,
    commands: tuple[Command, ...],
    definition: SagaDefinition,
) -> SagaEvent:
    return SagaEvent(
        saga_id=saga.saga_id,
        sequence=saga.sequence,
        at=saga.updated_at,
        trigger=type(trigger).__name__,
        from_state=from_state,
        to_state=saga.state,
        step=saga.step,
        attempt=saga.attempt,
        reason=saga.reason,
        commands=[type(command).__name__ for command in commands],
        terminal=definition.is_terminal(saga.state),
    )


# ---- commands ----


def build_command(step: Step, saga: SagaState, now: datetime) -> Command:
    """The command of `step` for `saga`'s current attempt, stamped `now`."""
    return _BUILDERS[step.command](saga, command_id(saga.saga_id, step.name), now)


def notify(notification: Notification, saga: SagaState, now: datetime) -> Command:
    """The notification's one-way command for `saga` (attempt 1: it is never re-sent,
    only sent again when a crash replays the transition)."""
    return _BUILDERS[notification.command](
        replace(saga, attempt=1), command_id(saga.saga_id, notification.name), now
    )


def _create_order(saga: SagaState, cid: str, now: datetime) -> CreateOrder:
    return CreateOrder(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
        customer_id=saga.customer_id,
        items=list(saga.items),
    )


def _products_command(
    command_type: type[ReserveProducts | ReleaseProducts | SellProducts],
) -> Callable[[SagaState, str, datetime], Command]:
    """Builder of a Product Service command: the order's items, which travel product to
    product (reserve, release and sell carry the same fields)."""

    def build(saga: SagaState, cid: str, now: datetime) -> Command:
        return command_type(
            saga_id=saga.saga_id,
            command_id=cid,
            attempt=saga.attempt,
            sent_at=now,
            order_id=saga.order_id,
            items=list(saga.items),
        )

    return build


def _authorize_payment(saga: SagaState, cid: str, now: datetime) -> AuthorizePayment:
    if saga.total is None:  # only entered from ProductsReserved, which sets it
        raise ValueError(f"saga {saga.saga_id} authorizes a payment without a total")
    return AuthorizePayment(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
        customer_id=saga.customer_id,
        amount=saga.total,
    )


def _approve_order(saga: SagaState, cid: str, now: datetime) -> ApproveOrder:
    return ApproveOrder(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
    )


def _reject_order(saga: SagaState, cid: str, now: datetime) -> RejectOrder:
    return RejectOrder(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
        reason=saga.reason or "rejected",
    )


def _cancel_payment(saga: SagaState, cid: str, now: datetime) -> CancelPayment:
    return CancelPayment(
        saga_id=saga.saga_id,
        command_id=cid,
        attempt=saga.attempt,
        sent_at=now,
        order_id=saga.order_id,
        customer_id=saga.customer_id,
    )


_BUILDERS: dict[type, Callable[[SagaState, str, datetime], Command]] = {
    CreateOrder: _create_order,
    ReserveProducts: _products_command(ReserveProducts),
    AuthorizePayment: _authorize_payment,
    ApproveOrder: _approve_order,
    RejectOrder: _reject_order,
    ReleaseProducts: _products_command(ReleaseProducts),
    CancelPayment: _cancel_payment,
    SellProducts: _products_command(SellProducts),
}

_UNBUILDABLE = {
    *(step.command for step in CREATE_ORDER_SAGA.steps),
    *(n.command for n in CREATE_ORDER_SAGA.notifications),
} - _BUILDERS.keys()
if _UNBUILDABLE:
    raise TypeError(f"no builder for commands {sorted(c.__name__ for c in _UNBUILDABLE)}")
