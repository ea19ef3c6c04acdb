"""Order Service business logic: pure functions over an order's rows. No I/O, no clock.

The `orders` table (key order id) holds, per order:
- one `OrderRow`: the order and its status;
- one `OrderCancel` per CancelOrderSaga that asked to cancel it (key: order id, "cancel",
  cancel saga id): whether that saga holds the order (BEGUN), was refused (REFUSED, with
  the reason), gave its hold back (UNDONE) or cancelled the order (CONFIRMED).

The agent reads the rows, calls a handler, writes the rows it returns (in order, the
order last) and sends the reply. `now` and the record's offset are passed in.

Statuses. CreateOrder stores an order in APPROVAL_PENDING; ApproveOrder makes it
APPROVED, RejectOrder REJECTED. REJECTED is final, and so is APPROVED for the
CreateOrderSaga: a command that contradicts it (approve a REJECTED order, reject an
approved one) changes nothing and is answered with outcome FAILURE, since a SUCCESS would
tell the orchestrator the opposite of what the order holds. A CancelOrderSaga then moves
an APPROVED order on: BeginCancelOrder holds it (CANCEL_PENDING, `cancel_saga` set),
UndoBeginCancelOrder gives it back (APPROVED), ConfirmCancelOrder makes it CANCELLED
(final). For the CreateOrderSaga, CANCEL_PENDING and CANCELLED are still approved: a
late ApproveOrder is answered SUCCESS, a late RejectOrder FAILURE, and neither changes
anything.

Idempotency. The answer to a command follows from the order's status and the cancel
saga's row, so a duplicate (same command_id, possibly a higher attempt) leaves the rows
as they are and gets the same answer again, echoing its own attempt, with `replied_at=now`.
A cancel saga's refusal is recorded (REFUSED): its re-sent BeginCancelOrder is refused
again even if the order was approved meanwhile (the saga ended on the first refusal and
would never undo a hold taken then); so is its undo (UNDONE), so a late BeginCancelOrder
of a cancel saga that gave up is refused.

Exact replays, as in the Product and Payment Services: every record that changes the
order writes it with the record's offset (`applied_offset`), after the cancel saga's row.
A record at or below that offset was applied whole, its reply sent: nothing to do. Above
it, the order is as it was before the record (once the records before it are replayed),
but the cancel saga's row may have been written back after this record's move and maybe
a later one: it records the offsets of its two moves (begun or refused, then undone or
confirmed), so the replay recognises its own, decides again from the order as it was, and
leaves the saga's row as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeAlias

from schemas.limits import reason, row_key
from schemas.messages import (
    ApproveOrder,
    BeginCancelOrder,
    ConfirmCancelOrder,
    CreateOrder,
    ForgetCancel,
    ForgetOrder,
    OrderApproved,
    OrderCancel,
    OrderCancelBegun,
    OrderCancelled,
    OrderCancelRefused,
    OrderCancelUndone,
    OrderCreated,
    OrderForgotten,
    OrderRejected,
    OrderRow,
    Outcome,
    RejectOrder,
    UndoBeginCancelOrder,
)

# OrderRow.status
APPROVAL_PENDING = "APPROVAL_PENDING"
APPROVED = "APPROVED"
REJECTED = "REJECTED"
CANCEL_PENDING = "CANCEL_PENDING"
CANCELLED = "CANCELLED"
STATUSES = (APPROVAL_PENDING, APPROVED, REJECTED, CANCEL_PENDING, CANCELLED)
# Approved, as far as the CreateOrderSaga is concerned.
APPROVED_STATUSES = (APPROVED, CANCEL_PENDING, CANCELLED)

# OrderCancel.status
BEGUN = "BEGUN"
REFUSED = "REFUSED"
UNDONE = "UNDONE"
CONFIRMED = "CONFIRMED"
CANCEL_STATUSES = (BEGUN, REFUSED, UNDONE, CONFIRMED)

# Why a BeginCancelOrder is refused.
UNKNOWN_ORDER = "unknown order"
NOT_APPROVED_YET = "not approved yet"
ORDER_REJECTED = "order rejected"
ALREADY_CANCELLED = "already cancelled"
CANCEL_UNDONE = "this cancel was undone"

Reply: TypeAlias = (
    OrderCreated
    | OrderApproved
    | OrderRejected
    | OrderCancelBegun
    | OrderCancelRefused
    | OrderCancelUndone
    | OrderCancelled
    | OrderForgotten
)
Row: TypeAlias = OrderRow | OrderCancel


@dataclass(frozen=True)
class Effect:
    """Rows to write, in this order (the order last; None: delete it), and the reply."""

    rows: tuple[tuple[bytes, Row | None], ...] = ()
    reply: Reply | None = None


NOTHING = Effect()


def order_key(order_id: str) -> bytes:
    return order_id.encode()


def cancel_key(order_id: str, saga_id: str) -> bytes:
    return row_key(order_id, "cancel", saga_id)


# =====================================================================================
# the CreateOrderSaga's commands
# =====================================================================================


def create_order(row: OrderRow | None, command: CreateOrder, now: datetime, offset: int) -> Effect:
    """Store the order in APPROVAL_PENDING; an existing order (any status) is left as is."""
    if _replayed(row, offset):
        return NOTHING
    rows: tuple[tuple[bytes, Row], ...] = ()
    if row is None:
        row = OrderRow(
            order_id=command.order_id,
            customer_id=command.customer_id,
            items=list(command.items),
            status=APPROVAL_PENDING,
            reason=None,
            updated_at=now,
            applied_offset=offset,
        )
        rows = ((order_key(command.order_id), row),)
    reply = OrderCreated(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
        order_id=command.order_id,
    )
    return Effect(rows, reply)


def approve_order(
    row: OrderRow | None, command: ApproveOrder, now: datetime, offset: int
) -> Effect:
    """APPROVAL_PENDING -> APPROVED.

    An unknown order stays unknown (nothing to store) and a REJECTED one stays REJECTED;
    both answer FAILURE. An approved order (APPROVED, or being or already cancelled since)
    answers SUCCESS again (a duplicate) and changes nothing.
    """
    if _replayed(row, offset):
        return NOTHING
    rows: tuple[tuple[bytes, Row], ...] = ()
    if row is not None and row.status == APPROVAL_PENDING:
        row = replace(row, status=APPROVED, updated_at=now, applied_offset=offset)
        rows = ((order_key(command.order_id), row),)
    approved = row is not None and row.status in APPROVED_STATUSES
    reply = OrderApproved(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS if approved else Outcome.FAILURE,
        replied_at=now,
        order_id=command.order_id,
    )
    return Effect(rows, reply)


def reject_order(row: OrderRow | None, command: RejectOrder, now: datetime, offset: int) -> Effect:
    """APPROVAL_PENDING -> REJECTED with the command's reason.

    An unknown order is recorded as REJECTED anyway (empty customer and items) so the
    saga can finish and a late CreateOrder cannot bring it back. A REJECTED order keeps
    its first reason (SUCCESS); an approved order (APPROVED, being or already cancelled)
    stays as it is (FAILURE).
    """
    if _replayed(row, offset):
        return NOTHING
    rows: tuple[tuple[bytes, Row], ...] = ()
    if row is None:
        row = OrderRow(
            order_id=command.order_id,
            customer_id="",
            items=[],
            status=REJECTED,
            reason=command.reason,
            updated_at=now,
            applied_offset=offset,
        )
        rows = ((order_key(command.order_id), row),)
    elif row.status == APPROVAL_PENDING:
        row = replace(
            row, status=REJECTED, reason=command.reason, updated_at=now, applied_offset=offset
        )
        rows = ((order_key(command.order_id), row),)
    reply = OrderRejected(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS if row.status == REJECTED else Outcome.FAILURE,
        replied_at=now,
        order_id=command.order_id,
    )
    return Effect(rows, reply)


# =====================================================================================
# the CancelOrderSaga's commands
# =====================================================================================


def begin_cancel_order(
    row: OrderRow | None,
    cancel: OrderCancel | None,
    command: BeginCancelOrder,
    now: datetime,
    offset: int,
) -> Effect:
    """APPROVED -> CANCEL_PENDING held by the cancel saga: OrderCancelBegun with the
    order's customer and items. Else OrderCancelRefused with the reason, the order
    unchanged: unknown, not approved yet (a cancel racing its order's CreateOrderSaga;
    the client may ask again), rejected, being cancelled by another saga, already
    cancelled.

    The saga's row records the decision: a duplicate of a saga that holds (or cancelled)
    the order is answered OrderCancelBegun again, one of a refused saga gets the same
    refusal, one of a saga that undid its hold is refused.
    """
    if _replayed(row, offset):
        return NOTHING
    saga = command.saga_id
    recorded = cancel is not None and cancel.begin_offset == offset
    if recorded:  # a replay: decide again from the order as it was, the saga's row kept
        cancel = None  # (before this record the saga had none: it decided from the order)
    if _held_by(row, saga, CANCEL_PENDING, CANCELLED):
        assert row is not None
        return Effect((), _begun(row, command, now))  # a duplicate
    if cancel is not None and cancel.status == REFUSED:  # the same answer again
        return Effect((), _refused(command, cancel.reason or "refused", now))
    if cancel is not None and cancel.status == UNDONE:  # late: the saga gave up
        return Effect((), _refused(command, CANCEL_UNDONE, now))
    why = _refusal(row)
    key = cancel_key(command.order_id, saga)
    if why is not None:
        rows = () if recorded else ((key, OrderCancel(saga, REFUSED, why, offset, -1)),)
        return Effect(rows, _refused(command, why, now))
    assert row is not None
    held = replace(
        row, status=CANCEL_PENDING, cancel_saga=saga, updated_at=now, applied_offset=offset
    )
    rows = () if recorded else ((key, OrderCancel(saga, BEGUN, None, offset, -1)),)
    return Effect((*rows, (order_key(command.order_id), held)), _begun(held, command, now))


def undo_begin_cancel_order(
    row: OrderRow | None,
    cancel: OrderCancel | None,
    command: UndoBeginCancelOrder,
    now: datetime,
    offset: int,
) -> Effect:
    """Compensation: CANCEL_PENDING held by the saga -> APPROVED (cancel_saga cleared).
    Anything else changes no order. Always OrderCancelUndone (SUCCESS): the saga is told
    the order is not held for it.

    The saga's row says UNDONE, even if it never held the order (its BeginCancelOrder was
    not handled yet, or is lost), so that a later BeginCancelOrder of the saga is refused.
    A refused saga keeps its refusal. (An undo of a saga that cancelled the order cannot
    come: the saga undoes only when its begin was not answered in time, and confirms only
    after it was; it would change nothing.)
    """
    if _replayed(row, offset):
        return NOTHING
    saga = command.saga_id
    rows: tuple[tuple[bytes, Row], ...] = ()
    if cancel is None or cancel.status == BEGUN:
        begun_at = -1 if cancel is None else cancel.begin_offset
        undone = OrderCancel(saga, UNDONE, None, begun_at, offset)
        rows = ((cancel_key(command.order_id, saga), undone),)
    elif cancel.settle_offset != offset:  # else a replay: its row was written back
        return Effect((), _undone(command, now))
    if _held_by(row, saga, CANCEL_PENDING):
        assert row is not None
        given_back = replace(
            row, status=APPROVED, cancel_saga=None, updated_at=now, applied_offset=offset
        )
        rows += ((order_key(command.order_id), given_back),)
    return Effect(rows, _undone(command, now))


def confirm_cancel_order(
    row: OrderRow | None,
    cancel: OrderCancel | None,
    command: ConfirmCancelOrder,
    now: datetime,
    offset: int,
) -> Effect:
    """CANCEL_PENDING held by the saga -> CANCELLED (cancel_saga kept): OrderCancelled.
    A duplicate (CANCELLED by this saga) is answered the same.

    An order this saga does not hold cannot be confirmed: it is answered OrderCancelled
    with outcome FAILURE and nothing changes. That cannot happen in a sound run (the saga
    confirms only after its BeginCancelOrder was answered OrderCancelBegun, and nothing
    but its own undo or confirm moves the order then). The engine ignores a success type
    with outcome FAILURE, so the saga stays in CONFIRMING_CANCEL and re-sends on its
    deadline, visibly stuck, rather than telling the client a cancel happened that did
    not.
    """
    if _replayed(row, offset):
        return NOTHING
    saga = command.saga_id
    rows: tuple[tuple[bytes, Row], ...] = ()
    if _held_by(row, saga, CANCEL_PENDING):
        assert row is not None
        replayed = cancel is not None and cancel.settle_offset == offset
        if not replayed:  # else its row was written back after this record: kept as it is
            begun_at = -1 if cancel is None else cancel.begin_offset
            confirmed = OrderCancel(saga, CONFIRMED, None, begun_at, offset)
            rows = ((cancel_key(command.order_id, saga), confirmed),)
        row = replace(row, status=CANCELLED, updated_at=now, applied_offset=offset)
        rows += ((order_key(command.order_id), row),)
    done = _held_by(row, saga, CANCELLED)
    reply = OrderCancelled(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS if done else Outcome.FAILURE,
        replied_at=now,
        order_id=command.order_id,
    )
    return Effect(rows, reply)


# =====================================================================================
# retention: an expired saga's rows are forgotten
# =====================================================================================


def forget_order(
    row: OrderRow | None,
    cancels: Iterable[OrderCancel],
    command: ForgetOrder,
    now: datetime,
    offset: int,
) -> Effect:
    """An expired CreateOrderSaga: delete the order and its cancel sagas' rows (cancels
    first, the order last), answering OrderForgotten; an order never known is forgotten
    already. Kept while a cancel holds it (CANCEL_PENDING): that cancel still refunds the
    payment and returns the stock of the order's saga, whose rows the orchestrator
    forgets only after this answer (FAILURE, with the reason: it asks again later).

    Why nothing can come after: the CreateOrderSaga has ended, so it sends no more
    commands, and its last ones came on this partition before this one. A cancel that
    begins later finds no order and is refused (unknown order). A new CreateOrderSaga
    with the same order id (the orchestrator forgot it too) creates a new order. A replay
    of this record finds the order gone (answered again) or, once a new saga created it,
    its `applied_offset` past this one (nothing to do)."""
    if _replayed(row, offset):
        return NOTHING
    if row is not None and row.status == CANCEL_PENDING:
        why = reason(f"kept: being cancelled by {row.cancel_saga}")
        return Effect((), _forgotten(command, now, Outcome.FAILURE, why))
    rows: tuple[tuple[bytes, Row | None], ...] = tuple(
        (cancel_key(command.order_id, cancel.saga_id), None) for cancel in cancels
    )
    if row is not None:
        rows += ((order_key(command.order_id), None),)
    return Effect(rows, _forgotten(command, now, Outcome.SUCCESS, None))


def forget_cancel(
    row: OrderRow | None, cancel: OrderCancel | None, command: ForgetCancel, offset: int
) -> Effect:
    """An expired CancelOrderSaga: delete its OrderCancel row, unless the order still
    names the saga (it cancelled the order): the row then goes with the order. No reply.
    Ended, the saga sends nothing more (its row settled: REFUSED, UNDONE, CONFIRMED)."""
    if _replayed(row, offset) or cancel is None:
        return NOTHING
    if row is not None and row.cancel_saga == command.saga_id:
        return NOTHING
    return Effect(((cancel_key(command.order_id, command.saga_id), None),))


def _forgotten(
    command: ForgetOrder, now: datetime, outcome: Outcome, why: str | None
) -> OrderForgotten:
    return OrderForgotten(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=outcome,
        replied_at=now,
        order_id=command.order_id,
        ended_by=command.ended_by,
        reason=why,
    )


def order_invariant_violations(
    row: OrderRow, cancels: Iterable[OrderCancel] | None = None
) -> list[str]:
    """Broken invariants of one order (empty when sound): a known status, a cancel saga
    exactly while CANCEL_PENDING or CANCELLED; given its cancel sagas' rows, that the one
    holding the order (BEGUN) or that cancelled it (CONFIRMED) is the order's, and that
    no other saga holds or cancelled it."""
    problems: list[str] = []
    if row.status not in STATUSES:
        problems.append(f"unknown status {row.status}")
    cancelling = row.status in (CANCEL_PENDING, CANCELLED)
    if cancelling != (row.cancel_saga is not None):
        problems.append(f"{row.status} with cancel saga {row.cancel_saga}")
    if cancels is None:
        return problems
    cancels = list(cancels)
    expected = {CANCEL_PENDING: BEGUN, CANCELLED: CONFIRMED}.get(row.status)
    for cancel in cancels:
        if cancel.status not in CANCEL_STATUSES:
            problems.append(f"cancel {cancel.saga_id}: unknown status {cancel.status}")
        if cancel.status == REFUSED and not cancel.reason:
            problems.append(f"cancel {cancel.saga_id}: refused without a reason")
        holds = cancel.status in (BEGUN, CONFIRMED)
        if holds and (cancel.status != expected or cancel.saga_id != row.cancel_saga):
            problems.append(
                f"cancel {cancel.saga_id} is {cancel.status}, the order {row.status}"
                f" (cancel saga {row.cancel_saga})"
            )
        if not holds and cancel.saga_id == row.cancel_saga:
            problems.append(f"cancel {cancel.saga_id} is {cancel.status}, the order {row.status}")
    if expected is not None and not any(c.saga_id == row.cancel_saga for c in cancels):
        problems.append(f"{row.status} by {row.cancel_saga}, which has no cancel row")
    return problems


# ---- helpers ----


def _replayed(row: OrderRow | None, offset: int) -> bool:
    """Was the record at `offset` applied whole already (a replay after a crash)?"""
    return row is not None and offset <= row.applied_offset


def _held_by(row: OrderRow | None, saga: str, *statuses: str) -> bool:
    """Is the order in one of `statuses` for the cancel saga `saga`?"""
    return row is not None and row.status in statuses and row.cancel_saga == saga


def _refusal(row: OrderRow | None) -> str | None:
    """Why a cancel saga that never asked before cannot hold the order (None: it can)."""
    if row is None:
        return UNKNOWN_ORDER
    if row.status == APPROVED:
        return None
    if row.status == APPROVAL_PENDING:
        return NOT_APPROVED_YET
    if row.status == REJECTED:
        return ORDER_REJECTED
    if row.status == CANCEL_PENDING:
        return reason(f"being cancelled by {row.cancel_saga}")
    if row.status == CANCELLED:
        return ALREADY_CANCELLED
    return reason(f"order is {row.status}")


def _begun(row: OrderRow, command: BeginCancelOrder, now: datetime) -> OrderCancelBegun:
    return OrderCancelBegun(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
        order_id=command.order_id,
        customer_id=row.customer_id,
        items=list(row.items),
    )


def _refused(command: BeginCancelOrder, why: str, now: datetime) -> OrderCancelRefused:
    return OrderCancelRefused(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.FAILURE,
        replied_at=now,
        order_id=command.order_id,
        reason=why,
    )


def _undone(command: UndoBeginCancelOrder, now: datetime) -> OrderCancelUndone:
    return OrderCancelUndone(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
        order_id=command.order_id,
    )
