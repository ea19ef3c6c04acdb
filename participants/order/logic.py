"""Order Service business logic: pure functions over one `orders` row (key order id).

The agent reads the row (or None), calls a handler, assigns the returned row back (when
not None) and sends the returned reply to saga.replies. No I/O, no clock: `now` is passed in.

Idempotency: the reply to each command follows from the row's status, so a duplicate
(same command_id, possibly a higher attempt) leaves the row unchanged and gets the same
reply again, echoing its own attempt, with `replied_at=now`. Nothing else needs recording,
so the row stays bounded (one per order).

APPROVED and REJECTED are final. A command that contradicts the final status (approve a
REJECTED order, reject an APPROVED one) changes nothing and is answered with outcome
FAILURE: a SUCCESS would tell the orchestrator the opposite of what the order holds.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from schemas.messages import (
    ApproveOrder,
    CreateOrder,
    OrderApproved,
    OrderCreated,
    OrderRejected,
    OrderRow,
    Outcome,
    RejectOrder,
)

APPROVAL_PENDING = "APPROVAL_PENDING"
APPROVED = "APPROVED"
REJECTED = "REJECTED"
STATUSES = (APPROVAL_PENDING, APPROVED, REJECTED)


def create_order(
    row: OrderRow | None, command: CreateOrder, now: datetime
) -> tuple[OrderRow, OrderCreated]:
    """Store the order in APPROVAL_PENDING; an existing order (any status) is left as is."""
    if row is None:
        row = OrderRow(
            order_id=command.order_id,
            customer_id=command.customer_id,
            items=list(command.items),
            status=APPROVAL_PENDING,
            reason=None,
            updated_at=now,
        )
    reply = OrderCreated(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
        order_id=command.order_id,
    )
    return row, reply


def approve_order(
    row: OrderRow | None, command: ApproveOrder, now: datetime
) -> tuple[OrderRow | None, OrderApproved]:
    """APPROVAL_PENDING -> APPROVED.

    An unknown order stays unknown (None: nothing to store) and a REJECTED one stays
    REJECTED; both answer FAILURE. An APPROVED order answers SUCCESS again (duplicate).
    """
    if row is not None and row.status == APPROVAL_PENDING:
        row = replace(row, status=APPROVED, updated_at=now)
    approved = row is not None and row.status == APPROVED
    reply = OrderApproved(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS if approved else Outcome.FAILURE,
        replied_at=now,
        order_id=command.order_id,
    )
    return row, reply


def reject_order(
    row: OrderRow | None, command: RejectOrder, now: datetime
) -> tuple[OrderRow, OrderRejected]:
    """APPROVAL_PENDING -> REJECTED with the command's reason.

    An unknown order is recorded as REJECTED anyway (empty customer and items) so the
    saga can finish and a late CreateOrder cannot bring it back. A REJECTED order keeps
    its first reason (SUCCESS); an APPROVED order stays APPROVED (FAILURE).
    """
    if row is None:
        row = OrderRow(
            order_id=command.order_id,
            customer_id="",
            items=[],
            status=REJECTED,
            reason=command.reason,
            updated_at=now,
        )
    elif row.status == APPROVAL_PENDING:
        row = replace(row, status=REJECTED, reason=command.reason, updated_at=now)
    reply = OrderRejected(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS if row.status == REJECTED else Outcome.FAILURE,
        replied_at=now,
        order_id=command.order_id,
    )
    return row, reply
