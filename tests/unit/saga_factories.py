"""Small factories of saga messages and states for the orchestrator unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from orchestrator.engine import command_id
from orchestrator.sagas.create_order import DEFINITION as CREATE_ORDER_SAGA
from schemas.messages import (
    MissingItem,
    Money,
    OrderApproved,
    OrderCreated,
    OrderItem,
    OrderRejected,
    OrderRequested,
    Outcome,
    PaymentAuthorized,
    PaymentCancelled,
    PaymentFailed,
    ProductsReleased,
    ProductsReserved,
    ProductsUnavailable,
    SagaState,
    StepTimedOut,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SAGA = "ord-1"  # saga id == order id
CUSTOMER = "cus-7"
ITEMS = [OrderItem("p-1", 2), OrderItem("p-2", 1)]
TOTAL = Money(Decimal("42.50"), "EUR")

REPLY_TYPES: tuple[type, ...] = (
    OrderCreated,
    ProductsReserved,
    ProductsUnavailable,
    PaymentAuthorized,
    PaymentFailed,
    PaymentCancelled,
    ProductsReleased,
    OrderApproved,
    OrderRejected,
)
SUCCESS: dict[type, Outcome] = {
    **{t: Outcome.SUCCESS for t in REPLY_TYPES},
    ProductsUnavailable: Outcome.FAILURE,
    PaymentFailed: Outcome.FAILURE,
}
STEP_OF_REPLY: dict[type, str] = {
    reply: step.name for step in CREATE_ORDER_SAGA.steps for reply in step.replies
}


def body(reply_type: type) -> dict[str, Any]:
    """The type-specific fields of a reply."""
    if reply_type in (OrderCreated, OrderApproved, OrderRejected):
        return {"order_id": SAGA}
    if reply_type is ProductsReserved:
        return {"total": TOTAL}
    if reply_type is ProductsUnavailable:
        return {"missing": [MissingItem("p-2", requested=1, available=0)]}
    if reply_type is PaymentAuthorized:
        return {"amount": TOTAL}
    if reply_type is PaymentFailed:
        return {"reason": "insufficient funds"}
    if reply_type is PaymentCancelled:
        return {"refunded": Money(Decimal("0.00"), "EUR")}
    return {}


def reply(
    reply_type: type,
    step: str | None = None,
    attempt: int = 1,
    saga_id: str = SAGA,
    at: datetime = T0,
) -> Any:
    """A reply of `reply_type` to the command of `step` (default: the step that sends it)."""
    return reply_type(
        saga_id=saga_id,
        command_id=command_id(saga_id, step or STEP_OF_REPLY[reply_type]),
        attempt=attempt,
        outcome=SUCCESS[reply_type],
        replied_at=at,
        **body(reply_type),
    )


def reply_for(saga: SagaState, success: bool = True, attempt: int | None = None) -> Any:
    """The participant's answer to the command `saga` waits for."""
    assert saga.step is not None
    step = CREATE_ORDER_SAGA.step(saga.step)
    assert step is not None
    reply_type = step.success if success or step.failure is None else step.failure
    return reply(reply_type, saga.step, saga.attempt if attempt is None else attempt)


def answer(command: Any, success: bool = True, at: datetime = T0) -> Any:
    """A participant's reply to a command it received."""
    step = CREATE_ORDER_SAGA.step_for_command(type(command))
    assert step is not None
    reply_type = step.success if success or step.failure is None else step.failure
    return reply_type(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=SUCCESS[reply_type],
        replied_at=at,
        **body(reply_type),
    )


def timed_out(saga: SagaState, at: datetime | None = None, **changes: Any) -> StepTimedOut:
    fields: dict[str, Any] = {
        "saga_id": saga.saga_id,
        "step": saga.step or "create_order",
        "attempt": saga.attempt,
        "deadline": saga.deadline or T0,
        "fired_at": at or saga.deadline or T0,
    }
    return StepTimedOut(**(fields | changes))


def requested(
    order_id: str = SAGA, items: list[OrderItem] | None = None, customer: str = CUSTOMER
) -> OrderRequested:
    return OrderRequested(order_id, customer, list(ITEMS if items is None else items), T0)


def saga_in(state: str, attempt: int = 1, reason: str | None = None) -> SagaState:
    """A saga in `state`, as decide(CREATE_ORDER, ) would have left it (sequence 4)."""
    step = CREATE_ORDER_SAGA.waiting_step(state)
    has_total = state not in ("CREATING_ORDER", "VERIFYING_PRODUCTS", "ORDER_REJECTED")
    return SagaState(
        saga_id=SAGA,
        order_id=SAGA,
        customer_id=CUSTOMER,
        items=list(ITEMS),
        state=state,
        step=None if step is None else step.name,
        attempt=0 if step is None else attempt,
        deadline=None if step is None else T0 + timedelta(seconds=5),
        total=TOTAL if has_total else None,
        reason=reason,
        sequence=4,
        created_at=T0 - timedelta(minutes=1),
        updated_at=T0 - timedelta(seconds=1),
        entered_at=T0 - timedelta(seconds=1),
    )
