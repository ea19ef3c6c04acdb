"""CancelOrderSaga on the engine, decided purely: the way through, a refusal, the hold
undone on its deadline, retries, and what each command carries and where it goes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from orchestrator.engine import Decision, command_id, decide, expired
from orchestrator.sagas.cancel_order import (
    BEGIN_CANCEL,
    BEGINNING_CANCEL,
    CANCEL_REJECTED,
    CONFIRMING_CANCEL,
    DEFINITION,
    ORDER_CANCELLED,
    REFUNDING_PAYMENT,
    RETURNING_PRODUCTS,
    SAGA,
    UNDOING_CANCEL,
)
from schemas.messages import (
    BeginCancelOrder,
    CancelOrderRequested,
    CancelSagaState,
    ConfirmCancelOrder,
    Money,
    OrderCancelBegun,
    OrderCancelled,
    OrderCancelRefused,
    OrderCancelUndone,
    OrderItem,
    Outcome,
    PaymentRefunded,
    ProductsReturned,
    RefundPayment,
    ReturnProducts,
    UndoBeginCancelOrder,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CANCEL, ORDER, CUSTOMER = "cancel-1", "ord-1", "cus-7"
ITEMS = [OrderItem("p-2", 1), OrderItem("p-1", 2)]
REFUND = Money(Decimal("42.50"), "EUR")


def answer(command: Any, reply_type: type, **body: Any) -> Any:
    failure = reply_type is OrderCancelRefused
    return reply_type(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.FAILURE if failure else Outcome.SUCCESS,
        replied_at=T0,
        **body,
    )


def started() -> Decision:
    return decide(SAGA, None, CancelOrderRequested(CANCEL, ORDER, T0), T0)


def test_a_cancel_goes_through_refund_return_and_confirm() -> None:
    first = started()
    row = first.state
    assert isinstance(row, CancelSagaState) and row.state == BEGINNING_CANCEL
    (begin,) = first.commands
    assert begin == BeginCancelOrder(CANCEL, f"{CANCEL}:{BEGIN_CANCEL}", 1, T0, ORDER)
    assert SAGA.route(begin) == ("order.commands", ORDER.encode())

    begun = decide(
        SAGA, row, answer(begin, OrderCancelBegun, order_id=ORDER, customer_id=CUSTOMER,
                          items=ITEMS), T0,
    )  # fmt: skip
    row = begun.state
    assert row.state == REFUNDING_PAYMENT and (row.customer_id, row.items) == (CUSTOMER, ITEMS)
    (refund,) = begun.commands
    assert isinstance(refund, RefundPayment) and (refund.order_id, refund.customer_id) == (
        ORDER,
        CUSTOMER,
    )
    assert SAGA.route(refund) == ("payment.commands", CUSTOMER.encode())

    refunded = decide(SAGA, row, answer(refund, PaymentRefunded, refunded=REFUND), T0)
    row = refunded.state
    assert row.state == RETURNING_PRODUCTS and row.refunded == REFUND
    (give_back,) = refunded.commands
    assert isinstance(give_back, ReturnProducts) and give_back.items == ITEMS
    assert SAGA.route(give_back) == ("product.commands", b"p-2")  # the first product

    returned = decide(SAGA, row, answer(give_back, ProductsReturned), T0)
    row = returned.state
    (confirm,) = returned.commands
    assert row.state == CONFIRMING_CANCEL and isinstance(confirm, ConfirmCancelOrder)

    done = decide(SAGA, row, answer(confirm, OrderCancelled, order_id=ORDER), T0)
    assert done.state.state == ORDER_CANCELLED and done.commands == ()
    assert done.events[0].terminal and done.events[0].saga == "CancelOrderSaga"
    assert decide(SAGA, done.state, answer(confirm, OrderCancelled, order_id=ORDER), T0).state is (
        done.state
    )


def test_a_refused_cancel_ends_rejected_with_the_reason_and_nothing_to_undo() -> None:
    first = started()
    (begin,) = first.commands
    refused = decide(
        SAGA, first.state, answer(begin, OrderCancelRefused, order_id=ORDER,
                                  reason="not approved yet"), T0,
    )  # fmt: skip
    assert refused.state.state == CANCEL_REJECTED
    assert refused.state.reason == "cancel refused: not approved yet"
    assert refused.commands == ()


def test_an_unanswered_hold_is_re_sent_then_undone_and_the_cancel_rejected() -> None:
    row = started().state
    for attempt in (2, 3):
        timeout = expired(row, row.deadline)
        assert timeout is not None
        retried = decide(SAGA, row, timeout, row.deadline)
        (again,) = retried.commands
        assert isinstance(again, BeginCancelOrder) and again.attempt == attempt
        row = retried.state
    undoing = decide(SAGA, row, expired(row, row.deadline), row.deadline)
    (undo,) = undoing.commands
    assert undoing.state.state == UNDOING_CANCEL and isinstance(undo, UndoBeginCancelOrder)
    assert undoing.state.reason == "order not held for cancel in time"
    late = OrderCancelBegun(CANCEL, command_id(CANCEL, BEGIN_CANCEL), 3, Outcome.SUCCESS, T0,
                            ORDER, CUSTOMER, ITEMS)  # fmt: skip
    assert decide(SAGA, undoing.state, late, T0).state is undoing.state  # the undo follows it
    undone = decide(SAGA, undoing.state, answer(undo, OrderCancelUndone, order_id=ORDER), T0)
    assert undone.state.state == CANCEL_REJECTED
    assert undone.state.reason == "order not held for cancel in time"


def test_after_the_hold_every_step_is_retried_with_backoff_until_it_is_answered() -> None:
    first = started()
    (begin,) = first.commands
    row = decide(
        SAGA, first.state, answer(begin, OrderCancelBegun, order_id=ORDER, customer_id=CUSTOMER,
                                  items=ITEMS), T0,
    ).state  # fmt: skip
    waits = []
    for _ in range(6):
        retried = decide(SAGA, row, expired(row, row.deadline), row.deadline)
        assert retried.state.state == REFUNDING_PAYMENT
        waits.append((retried.state.deadline - row.deadline).total_seconds())
        row = retried.state
    assert waits == [10, 20, 40, 60, 60, 60]


def test_a_request_naming_no_valid_order_is_rejected_at_once() -> None:
    decision = decide(SAGA, None, CancelOrderRequested(CANCEL, "", T0), T0)
    assert decision.state.state == CANCEL_REJECTED and decision.commands == ()
    assert decision.state.reason == "invalid request: order id is empty"


def test_every_waiting_state_has_a_deadline() -> None:
    row = started().state
    assert row.deadline == T0 + timedelta(seconds=10)
    assert {s.name for s in DEFINITION.states if s.step is None} == {
        ORDER_CANCELLED,
        CANCEL_REJECTED,
    }
