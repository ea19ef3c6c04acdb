"""Order Service logic: create, approve, reject; duplicates, missing rows, final statuses."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from participants.order import logic
from participants.order.logic import (
    APPROVAL_PENDING,
    APPROVED,
    REJECTED,
)
from schemas.messages import (
    ApproveOrder,
    CreateOrder,
    OrderApproved,
    OrderCreated,
    OrderItem,
    OrderRejected,
    OrderRow,
    Outcome,
    RejectOrder,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(seconds=5)
ORDER = "order-1"
ITEMS = [OrderItem("p1", 2), OrderItem("p2", 1)]


def create(attempt: int = 1) -> CreateOrder:
    return CreateOrder(ORDER, f"{ORDER}:create_order", attempt, T0, ORDER, "c1", list(ITEMS))


def approve(attempt: int = 1) -> ApproveOrder:
    return ApproveOrder(ORDER, f"{ORDER}:approve_order", attempt, T0, ORDER)


def reject(attempt: int = 1, reason: str = "no stock") -> RejectOrder:
    return RejectOrder(ORDER, f"{ORDER}:reject_order", attempt, T0, ORDER, reason)


OFFSETS = itertools.count()  # each record's offset: later records come later


def handled(
    handler: Callable[..., logic.Effect], row: OrderRow | None, command: Any, now: datetime
) -> tuple[Any, Any]:
    """The order after `handler` (the same object if it wrote none) and the reply."""
    effect = handler(row, command, now, next(OFFSETS))
    written = [r for _k, r in effect.rows if isinstance(r, OrderRow)]
    return (written[-1] if written else row), effect.reply


def create_order(row: OrderRow | None, command: CreateOrder, now: datetime) -> tuple[Any, Any]:
    return handled(logic.create_order, row, command, now)


def approve_order(row: OrderRow | None, command: ApproveOrder, now: datetime) -> tuple[Any, Any]:
    return handled(logic.approve_order, row, command, now)


def reject_order(row: OrderRow | None, command: RejectOrder, now: datetime) -> tuple[Any, Any]:
    return handled(logic.reject_order, row, command, now)


def pending() -> OrderRow:
    row: OrderRow = create_order(None, create(), T0)[0]
    return row


# ---- create ----


def test_create_stores_a_pending_order_and_replies_created() -> None:
    effect = logic.create_order(None, create(), T0, 7)
    ((key, row),) = effect.rows
    reply = effect.reply
    assert isinstance(reply, OrderCreated)
    assert key == ORDER.encode()
    assert row == OrderRow(ORDER, "c1", ITEMS, APPROVAL_PENDING, None, T0, applied_offset=7)
    assert (reply.saga_id, reply.command_id, reply.attempt) == (ORDER, f"{ORDER}:create_order", 1)
    assert (reply.outcome, reply.replied_at, reply.order_id) == (Outcome.SUCCESS, T0, ORDER)


def test_duplicate_create_changes_nothing_and_echoes_its_attempt() -> None:
    row = pending()
    again, reply = create_order(row, create(attempt=2), T1)
    assert again is row
    assert (reply.attempt, reply.outcome, reply.replied_at) == (2, Outcome.SUCCESS, T1)


def test_create_after_final_status_does_not_reopen_the_order() -> None:
    for final in (approve_order(pending(), approve(), T1)[0], reject_order(None, reject(), T1)[0]):
        assert final is not None
        again, reply = create_order(final, create(), T1)
        assert again is final
        assert reply.outcome is Outcome.SUCCESS


# ---- approve ----


def test_approve_pending_order() -> None:
    row, reply = approve_order(pending(), approve(attempt=2), T1)
    assert row is not None
    assert (row.status, row.updated_at, row.reason) == (APPROVED, T1, None)
    # The reply echoes the command (the orchestrator matches it by id and attempt).
    assert reply == OrderApproved(ORDER, f"{ORDER}:approve_order", 2, Outcome.SUCCESS, T1, ORDER)


def test_duplicate_approve_replies_again_without_change() -> None:
    row, _ = approve_order(pending(), approve(), T1)
    again, second = approve_order(row, approve(attempt=3), T1 + timedelta(seconds=1))
    assert again is row
    assert second.outcome is Outcome.SUCCESS and second.attempt == 3


def test_approve_of_unknown_order_fails_and_stores_nothing() -> None:
    row, reply = approve_order(None, approve(), T1)
    assert row is None
    assert reply.outcome is Outcome.FAILURE


def test_approve_after_reject_keeps_rejected_and_fails() -> None:
    rejected, _ = reject_order(pending(), reject(), T1)
    row, reply = approve_order(rejected, approve(), T1)
    assert row is rejected and row.status == REJECTED
    assert reply.outcome is Outcome.FAILURE


# ---- reject ----


def test_reject_pending_order_with_reason() -> None:
    row, reply = reject_order(pending(), reject(attempt=2, reason="payment failed"), T1)
    assert (row.status, row.reason, row.updated_at) == (REJECTED, "payment failed", T1)
    assert (row.customer_id, row.items) == ("c1", ITEMS)
    assert reply == OrderRejected(ORDER, f"{ORDER}:reject_order", 2, Outcome.SUCCESS, T1, ORDER)


def test_duplicate_reject_keeps_the_first_reason() -> None:
    row, _ = reject_order(pending(), reject(reason="first"), T1)
    again, reply = reject_order(row, reject(attempt=2, reason="second"), T1)
    assert again is row and row.reason == "first"
    assert (reply.outcome, reply.attempt) == (Outcome.SUCCESS, 2)


def test_reject_of_unknown_order_records_it_rejected() -> None:
    row, reply = reject_order(None, reject(), T1)
    assert row == OrderRow(
        ORDER, "", [], REJECTED, "no stock", T1, applied_offset=row.applied_offset
    )
    assert reply.outcome is Outcome.SUCCESS


def test_reject_after_approve_keeps_approved_and_fails() -> None:
    approved, _ = approve_order(pending(), approve(), T1)
    assert approved is not None
    row, reply = reject_order(approved, reject(), T1)
    assert row is approved and row.status == APPROVED
    assert reply.outcome is Outcome.FAILURE


# ---- property: final statuses never flip, replies tell the truth ----

COMMANDS = st.sampled_from(["create", "approve", "reject"])


@given(st.lists(st.tuples(COMMANDS, st.integers(1, 3)), max_size=12))
def test_any_command_sequence_keeps_the_first_final_status(
    commands: list[tuple[str, int]],
) -> None:
    row: OrderRow | None = None
    final: str | None = None
    for name, attempt in commands:
        before = row
        if name == "create":
            row, created = create_order(row, create(attempt), T1)
            assert created.outcome is Outcome.SUCCESS
        elif name == "approve":
            row, approved = approve_order(row, approve(attempt), T1)
            ok = row is not None and row.status == APPROVED
            assert approved.outcome is (Outcome.SUCCESS if ok else Outcome.FAILURE)
        else:
            row, rejected = reject_order(row, reject(attempt), T1)
            ok = row.status == REJECTED
            assert rejected.outcome is (Outcome.SUCCESS if ok else Outcome.FAILURE)
        if final is not None:
            assert row is before  # nothing changes a final order
        elif row is not None and row.status != APPROVAL_PENDING:
            final = row.status
