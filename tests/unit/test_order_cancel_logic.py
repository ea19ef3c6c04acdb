"""Order Service logic for the CancelOrderSaga: begin (hold), undo, confirm; refusals,
duplicates, late commands, replays, and the CreateOrderSaga's commands on an order being
or already cancelled."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from participants.order import logic
from participants.order.logic import (
    APPROVAL_PENDING,
    APPROVED,
    BEGUN,
    CANCEL_PENDING,
    CANCELLED,
    CONFIRMED,
    REFUSED,
    REJECTED,
    UNDONE,
    cancel_key,
    order_invariant_violations,
)
from schemas.messages import (
    ApproveOrder,
    BeginCancelOrder,
    ConfirmCancelOrder,
    CreateOrder,
    OrderApproved,
    OrderCancel,
    OrderCancelBegun,
    OrderCancelled,
    OrderCancelRefused,
    OrderCancelUndone,
    OrderCreated,
    OrderItem,
    OrderRejected,
    OrderRow,
    Outcome,
    RejectOrder,
    UndoBeginCancelOrder,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(seconds=5)
ORDER = "order-1"
ITEMS = [OrderItem("p1", 2), OrderItem("p2", 1)]
KEY = ORDER.encode()


def order(status: str, cancel_saga: str | None = None, offset: int = 10) -> OrderRow:
    return OrderRow(ORDER, "c1", ITEMS, status, None, T0, cancel_saga, offset)


def begin(saga: str = "k1", attempt: int = 1) -> BeginCancelOrder:
    return BeginCancelOrder(saga, f"{saga}:begin_cancel", attempt, T0, ORDER)


def undo(saga: str = "k1", attempt: int = 1) -> UndoBeginCancelOrder:
    return UndoBeginCancelOrder(saga, f"{saga}:undo_cancel", attempt, T0, ORDER)


def confirm(saga: str = "k1", attempt: int = 1) -> ConfirmCancelOrder:
    return ConfirmCancelOrder(saga, f"{saga}:confirm_cancel", attempt, T0, ORDER)


class Rows:
    """An order's rows as the agent keeps them: each handler reads the order and the
    command's saga's row, and its rows are written back."""

    def __init__(self, row: OrderRow | None = None) -> None:
        self.rows: dict[bytes, Any] = {} if row is None else {KEY: row}
        self.offset = 100

    @property
    def order(self) -> OrderRow | None:
        return self.rows.get(KEY)

    def cancel(self, saga: str) -> OrderCancel | None:
        return self.rows.get(cancel_key(ORDER, saga))

    def cancels(self) -> list[OrderCancel]:
        return [r for r in self.rows.values() if isinstance(r, OrderCancel)]

    def handle(self, command: Any, offset: int | None = None) -> logic.Effect:
        if offset is None:
            self.offset += 1
            offset = self.offset
        effect = handle(command, self.rows, offset)
        self.rows.update(effect.rows)
        return effect


def handle(command: Any, rows: dict[bytes, Any], offset: int, now: datetime = T1) -> logic.Effect:
    """What the Order Service's agent does with a command (participants/order/app.py)."""
    row = rows.get(KEY)
    by_type: dict[type, Any] = {
        CreateOrder: logic.create_order,
        ApproveOrder: logic.approve_order,
        RejectOrder: logic.reject_order,
    }
    if type(command) in by_type:
        effect: logic.Effect = by_type[type(command)](row, command, now, offset)
        return effect
    cancel = rows.get(cancel_key(command.order_id, command.saga_id))
    cancel_handlers: dict[type, Any] = {
        BeginCancelOrder: logic.begin_cancel_order,
        UndoBeginCancelOrder: logic.undo_begin_cancel_order,
        ConfirmCancelOrder: logic.confirm_cancel_order,
    }
    effect = cancel_handlers[type(command)](row, cancel, command, now, offset)
    return effect


# ---- begin ----


def test_begin_holds_an_approved_order_and_answers_its_customer_and_items() -> None:
    rows = Rows(order(APPROVED))
    effect = rows.handle(begin(attempt=2), offset=42)
    assert [k for k, _r in effect.rows] == [cancel_key(ORDER, "k1"), KEY]  # the order last
    assert rows.order == replace(
        order(APPROVED), status=CANCEL_PENDING, cancel_saga="k1", updated_at=T1, applied_offset=42
    )
    assert rows.cancel("k1") == OrderCancel("k1", BEGUN, None, 42, -1)
    reply = effect.reply
    assert isinstance(reply, OrderCancelBegun)
    assert (reply.saga_id, reply.command_id, reply.attempt) == ("k1", "k1:begin_cancel", 2)
    assert (reply.outcome, reply.replied_at, reply.order_id) == (Outcome.SUCCESS, T1, ORDER)
    assert (reply.customer_id, reply.items) == ("c1", ITEMS)


@pytest.mark.parametrize(
    ("row", "why"),
    [
        (None, "unknown order"),
        (order(APPROVAL_PENDING), "not approved yet"),
        (order(REJECTED), "order rejected"),
        (order(CANCEL_PENDING, "k0"), "being cancelled by k0"),
        (order(CANCELLED, "k0"), "already cancelled"),
    ],
)
def test_begin_is_refused_with_the_reason_and_the_order_unchanged(
    row: OrderRow | None, why: str
) -> None:
    rows = Rows(row)
    effect = rows.handle(begin())
    assert [k for k, _r in effect.rows] == [cancel_key(ORDER, "k1")]  # not the order
    assert rows.order is row
    reply = effect.reply
    assert isinstance(reply, OrderCancelRefused)
    assert (reply.outcome, reply.reason, reply.order_id) == (Outcome.FAILURE, why, ORDER)
    assert rows.cancel("k1") == OrderCancel("k1", REFUSED, why, rows.offset, -1)


@pytest.mark.parametrize("status", [CANCEL_PENDING, CANCELLED])
def test_a_duplicate_begin_of_the_holding_saga_is_answered_again(status: str) -> None:
    rows = Rows(order(APPROVED))
    rows.handle(begin())
    if status == CANCELLED:
        rows.handle(confirm())
    before = dict(rows.rows)
    effect = rows.handle(begin(attempt=3))
    assert effect.rows == () and rows.rows == before
    assert isinstance(effect.reply, OrderCancelBegun) and effect.reply.attempt == 3
    assert (effect.reply.customer_id, effect.reply.items) == ("c1", ITEMS)


def test_a_refused_cancel_stays_refused_after_the_order_is_approved() -> None:
    # The refusal of attempt 1 ends the saga (CANCEL_REJECTED); attempt 2, re-sent on its
    # deadline before that reply came, must not hold the order for a saga that ended.
    rows = Rows(order(APPROVAL_PENDING))
    rows.handle(begin(attempt=1))
    rows.handle(ApproveOrder(ORDER, f"{ORDER}:approve_order", 1, T0, ORDER))
    assert rows.order is not None and rows.order.status == APPROVED
    effect = rows.handle(begin(attempt=2))
    assert effect.rows == ()
    assert isinstance(effect.reply, OrderCancelRefused)
    assert (effect.reply.reason, effect.reply.attempt) == ("not approved yet", 2)
    assert rows.order.status == APPROVED and rows.order.cancel_saga is None


def test_a_cancel_refused_by_another_saga_stays_refused_after_that_one_is_undone() -> None:
    rows = Rows(order(APPROVED))
    rows.handle(begin("k0"))
    rows.handle(begin("k1"))
    rows.handle(undo("k0"))
    effect = rows.handle(begin("k1", attempt=2))
    assert isinstance(effect.reply, OrderCancelRefused)
    assert effect.reply.reason == "being cancelled by k0"
    assert rows.order is not None and (rows.order.status, rows.order.cancel_saga) == (
        APPROVED,
        None,
    )
    # a new cancel saga can hold it
    assert isinstance(rows.handle(begin("k2")).reply, OrderCancelBegun)


def test_a_late_begin_after_the_undo_is_refused() -> None:
    rows = Rows(order(APPROVED))
    rows.handle(begin())
    rows.handle(undo())
    before = dict(rows.rows)
    effect = rows.handle(begin(attempt=3))
    assert effect.rows == () and rows.rows == before
    assert isinstance(effect.reply, OrderCancelRefused)
    assert effect.reply.reason == "this cancel was undone"


def test_a_begin_after_an_undo_that_came_first_is_refused() -> None:
    rows = Rows(order(APPROVED))
    assert isinstance(rows.handle(undo()).reply, OrderCancelUndone)
    assert rows.order == order(APPROVED)
    assert rows.cancel("k1") == OrderCancel("k1", UNDONE, None, -1, rows.offset)
    effect = rows.handle(begin())
    assert isinstance(effect.reply, OrderCancelRefused) and rows.order == order(APPROVED)


# ---- undo ----


def test_undo_gives_the_order_back() -> None:
    rows = Rows(order(APPROVED))
    rows.handle(begin(), offset=50)
    effect = rows.handle(undo(attempt=2), offset=51)
    assert rows.order == replace(order(APPROVED), updated_at=T1, applied_offset=51)
    assert rows.cancel("k1") == OrderCancel("k1", UNDONE, None, 50, 51)
    reply = effect.reply
    assert isinstance(reply, OrderCancelUndone)
    assert (reply.outcome, reply.attempt, reply.command_id) == (
        Outcome.SUCCESS,
        2,
        "k1:undo_cancel",
    )
    # a duplicate undo changes nothing and is answered again
    assert rows.handle(undo(attempt=3)).rows == ()


@pytest.mark.parametrize(
    "row",
    [None, order(APPROVAL_PENDING), order(REJECTED), order(CANCEL_PENDING, "k0")],
)
def test_undo_of_an_order_the_saga_does_not_hold_changes_no_order(row: OrderRow | None) -> None:
    rows = Rows(row)
    effect = rows.handle(undo())
    assert rows.order is row
    assert isinstance(effect.reply, OrderCancelUndone) and effect.reply.outcome is Outcome.SUCCESS


def test_undo_of_a_refused_cancel_keeps_the_refusal() -> None:
    rows = Rows(order(APPROVAL_PENDING))
    rows.handle(begin())
    refused = rows.cancel("k1")
    effect = rows.handle(undo())
    assert effect.rows == () and rows.cancel("k1") is refused
    assert isinstance(effect.reply, OrderCancelUndone)


# ---- confirm ----


def test_confirm_cancels_the_held_order_and_a_duplicate_is_answered_again() -> None:
    rows = Rows(order(APPROVED))
    rows.handle(begin(), offset=60)
    effect = rows.handle(confirm(), offset=61)
    assert rows.order == replace(
        order(APPROVED), status=CANCELLED, cancel_saga="k1", updated_at=T1, applied_offset=61
    )
    assert rows.cancel("k1") == OrderCancel("k1", CONFIRMED, None, 60, 61)
    assert isinstance(effect.reply, OrderCancelled) and effect.reply.outcome is Outcome.SUCCESS
    again = rows.handle(confirm(attempt=2))
    assert again.rows == ()
    assert isinstance(again.reply, OrderCancelled)
    assert (again.reply.outcome, again.reply.attempt) == (Outcome.SUCCESS, 2)


@pytest.mark.parametrize(
    "row",
    [None, order(APPROVED), order(CANCEL_PENDING, "k0"), order(CANCELLED, "k0"), order(REJECTED)],
)
def test_confirm_of_an_order_the_saga_does_not_hold_fails_and_changes_nothing(
    row: OrderRow | None,
) -> None:
    rows = Rows(row)
    effect = rows.handle(confirm())
    assert effect.rows == () and rows.order is row
    assert isinstance(effect.reply, OrderCancelled) and effect.reply.outcome is Outcome.FAILURE


# ---- the CreateOrderSaga's commands on an order being or already cancelled ----


@pytest.mark.parametrize("status", [CANCEL_PENDING, CANCELLED])
def test_create_saga_duplicates_change_nothing_on_a_cancelled_order(status: str) -> None:
    rows = Rows(order(status, "k1"))
    approved = rows.handle(ApproveOrder(ORDER, f"{ORDER}:approve_order", 4, T0, ORDER))
    assert isinstance(approved.reply, OrderApproved) and approved.reply.outcome is Outcome.SUCCESS
    rejected = rows.handle(RejectOrder(ORDER, f"{ORDER}:reject_order", 1, T0, ORDER, "why"))
    assert isinstance(rejected.reply, OrderRejected) and rejected.reply.outcome is Outcome.FAILURE
    created = rows.handle(CreateOrder(ORDER, f"{ORDER}:create_order", 2, T0, ORDER, "c9", []))
    assert isinstance(created.reply, OrderCreated) and created.reply.outcome is Outcome.SUCCESS
    assert approved.rows == rejected.rows == created.rows == ()
    assert rows.order == order(status, "k1")


# ---- replays ----


@pytest.mark.parametrize(
    "command", [begin(), undo(), confirm(), ApproveOrder(ORDER, "x", 1, T0, ORDER)]
)
def test_a_record_at_or_below_the_orders_offset_is_a_replay_and_does_nothing(
    command: Any,
) -> None:
    rows = Rows(order(CANCEL_PENDING, "k1", offset=70))
    for offset in (69, 70):
        assert rows.handle(command, offset=offset) == logic.NOTHING


def test_a_replayed_begin_decides_from_the_order_as_it_was_not_from_its_undone_row() -> None:
    # Begin (50) and undo (51) were handled, the crash came while writing back: the
    # saga's row (UNDONE) reached the changelog, the order did not.
    rows = Rows(order(APPROVED))
    rows.handle(begin(), offset=50)
    rows.handle(undo(), offset=51)
    undone = rows.cancel("k1")
    rows.rows[KEY] = order(APPROVED)  # the order as the changelog has it
    again = rows.handle(begin(), offset=50)
    assert isinstance(again.reply, OrderCancelBegun)  # the decision it made then
    assert [k for k, _r in again.rows] == [KEY]  # the saga's row is kept as it is
    assert rows.order is not None and rows.order.status == CANCEL_PENDING
    rows.handle(undo(), offset=51)
    assert rows.order == replace(order(APPROVED), updated_at=T1, applied_offset=51)
    assert rows.cancel("k1") is undone


def test_a_replayed_refusal_is_refused_again_though_the_order_was_approved_since() -> None:
    rows = Rows(order(APPROVAL_PENDING, offset=5))
    rows.handle(begin(), offset=50)
    rows.handle(ApproveOrder(ORDER, f"{ORDER}:approve_order", 1, T0, ORDER), offset=51)
    rows.rows[KEY] = order(APPROVAL_PENDING, offset=5)  # the approval not written back
    again = rows.handle(begin(), offset=50)
    assert isinstance(again.reply, OrderCancelRefused) and again.rows == ()


def test_a_replayed_confirm_cancels_the_order_its_row_says_it_confirmed() -> None:
    rows = Rows(order(APPROVED))
    rows.handle(begin(), offset=50)
    held = rows.order
    rows.handle(confirm(), offset=51)
    confirmed = rows.cancel("k1")
    rows.rows[KEY] = held  # the order's CANCELLED not written back
    again = rows.handle(confirm(), offset=51)
    assert [k for k, _r in again.rows] == [KEY]
    assert rows.order is not None and rows.order.status == CANCELLED
    assert rows.cancel("k1") is confirmed
    assert isinstance(again.reply, OrderCancelled) and again.reply.outcome is Outcome.SUCCESS


# ---- invariants ----


def test_order_invariants_find_what_is_broken() -> None:
    held = order(CANCEL_PENDING, "k1")
    assert order_invariant_violations(held, [OrderCancel("k1", BEGUN, None, 1, -1)]) == []
    assert order_invariant_violations(order(APPROVED, "k1")) == ["APPROVED with cancel saga k1"]
    assert order_invariant_violations(order(CANCEL_PENDING)) == [
        "CANCEL_PENDING with cancel saga None"
    ]
    assert order_invariant_violations(held, []) == ["CANCEL_PENDING by k1, which has no cancel row"]
    assert order_invariant_violations(
        held, [OrderCancel("k1", BEGUN, None, 1, -1), OrderCancel("k2", BEGUN, None, 2, -1)]
    ) == ["cancel k2 is BEGUN, the order CANCEL_PENDING (cancel saga k1)"]
    assert order_invariant_violations(
        order(APPROVED), [OrderCancel("k1", REFUSED, None, 1, -1)]
    ) == ["cancel k1: refused without a reason"]
    assert order_invariant_violations(
        order(CANCELLED, "k1"), [OrderCancel("k1", UNDONE, None, 1, 2)]
    ) == ["cancel k1 is UNDONE, the order CANCELLED"]


# ---- property: whatever the commands, the rows stay sound and answers tell the truth ----

SAGAS = ("k1", "k2")
st_command = st.one_of(
    st.builds(
        lambda a: ApproveOrder(ORDER, f"{ORDER}:approve_order", a, T0, ORDER), st.integers(1, 3)
    ),
    st.builds(
        lambda a: RejectOrder(ORDER, f"{ORDER}:reject_order", a, T0, ORDER, "no"),
        st.integers(1, 3),
    ),
    st.builds(begin, st.sampled_from(SAGAS), st.integers(1, 3)),
    st.builds(undo, st.sampled_from(SAGAS), st.integers(1, 3)),
    st.builds(confirm, st.sampled_from(SAGAS), st.integers(1, 3)),
)


@given(start=st.sampled_from([None, APPROVAL_PENDING, APPROVED]), commands=st.lists(st_command))
def test_any_command_sequence_keeps_the_order_sound(start: str | None, commands: list[Any]) -> None:
    rows = Rows(None if start is None else order(start))
    first_answer: dict[str, type] = {}
    for command in commands:
        before = rows.order
        effect = rows.handle(command)
        after = rows.order
        assert after is not None or before is None
        assert order_invariant_violations(after, rows.cancels()) == [] if after else True
        if before is not None and before.status in (REJECTED, CANCELLED):
            assert after is before  # final
        reply = effect.reply
        if isinstance(reply, (OrderCancelBegun, OrderCancelRefused)):
            # a cancel saga's begin gets one answer, however often it is asked, until the
            # saga undoes its hold: then it is refused
            first = first_answer.setdefault(command.saga_id, type(reply))
            cancel = rows.cancel(command.saga_id)
            assert first is type(reply) or (cancel is not None and cancel.status == UNDONE)
            held = after is not None and after.cancel_saga == command.saga_id
            assert isinstance(reply, OrderCancelBegun) == (
                held and after is not None and after.status in (CANCEL_PENDING, CANCELLED)
            )
        if isinstance(reply, OrderCancelled):
            done = after is not None and (after.status, after.cancel_saga) == (
                CANCELLED,
                command.saga_id,
            )
            assert (reply.outcome is Outcome.SUCCESS) == done


@pytest.mark.parametrize("attempt", [1, 3])
def test_every_cancel_reply_answers_its_command(attempt: int) -> None:
    """The orchestrator matches a reply to its step by saga, command id and attempt: a
    reply without them is stale to it, and the step would wait for its deadline."""
    sequences: list[tuple[OrderRow, list[Any]]] = [
        (order(APPROVAL_PENDING), [begin(attempt=attempt)]),  # refused
        (order(APPROVED), [begin(attempt=attempt), confirm(attempt=attempt)]),
        (order(APPROVED), [begin(attempt=attempt), undo(attempt=attempt)]),
        (order(APPROVED), [begin(), confirm(), confirm(attempt=attempt)]),  # a duplicate
    ]
    for row, commands in sequences:
        rows = Rows(row)
        for command in commands:
            reply = rows.handle(command).reply
            assert reply is not None
            answered = (reply.saga_id, reply.command_id, reply.attempt, reply.order_id)
            assert answered == (command.saga_id, command.command_id, command.attempt, ORDER)
