"""decide(CREATE_ORDER, ): the full (state x message type) table, then the tricky sequences."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest

from orchestrator.engine import Decision, decide, expired
from orchestrator.sagas.create_order import DEFINITION as CREATE_ORDER_SAGA
from orchestrator.sagas.create_order import SAGA as CREATE_ORDER
from schemas import codec
from schemas.messages import (
    ApproveOrder,
    AuthorizePayment,
    CancelPayment,
    CreateOrder,
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
    RejectOrder,
    ReleaseItem,
    ReleaseProducts,
    ReserveProducts,
    SagaEvent,
    SagaState,
    SellProducts,
    StepTimedOut,
)
from tests.unit.saga_factories import (
    CUSTOMER,
    ITEMS,
    REPLY_TYPES,
    SAGA,
    T0,
    TOTAL,
    answer,
    reply,
    reply_for,
    requested,
    saga_in,
    timed_out,
)

NOW = T0 + timedelta(seconds=7)
EARLIER = "an earlier reason"

STATES = [state.name for state in CREATE_ORDER_SAGA.states]
MESSAGE_TYPES: list[type] = [*REPLY_TYPES, StepTimedOut, OrderRequested]

# where each command goes: (topic, key); saga id == order id by construction
ROUTES: dict[type, tuple[str, bytes]] = {
    CreateOrder: ("order.commands", SAGA.encode()),
    ApproveOrder: ("order.commands", SAGA.encode()),
    RejectOrder: ("order.commands", SAGA.encode()),
    # the order's first product: the command travels on from there
    ReserveProducts: ("product.commands", ITEMS[0].product_id.encode()),
    ReleaseProducts: ("product.commands", ITEMS[0].product_id.encode()),
    SellProducts: ("product.commands", ITEMS[0].product_id.encode()),
    AuthorizePayment: ("payment.commands", CUSTOMER.encode()),
    CancelPayment: ("payment.commands", CUSTOMER.encode()),
}


@dataclass(frozen=True)
class Expect:
    to_state: str
    command: type | None  # the one command sent, if any
    step: str | None  # step of the new state (and suffix of the command id)
    attempt: int  # attempt of the new state and of the command
    deadline_s: int | None  # seconds after NOW
    reason: str | None = EARLIER  # reason of the new state (EARLIER: unchanged)


# Written out by hand from the brief, independently of orchestrator.engine.definition.
TABLE: dict[tuple[str, type], Expect] = {
    ("CREATING_ORDER", OrderCreated): Expect(
        "VERIFYING_PRODUCTS", ReserveProducts, "verify_products", 1, 10
    ),
    ("CREATING_ORDER", StepTimedOut): Expect("CREATING_ORDER", CreateOrder, "create_order", 2, 10),
    ("VERIFYING_PRODUCTS", ProductsReserved): Expect(
        "AUTHORIZING_PAYMENT", AuthorizePayment, "authorize_payment", 1, 10
    ),
    ("VERIFYING_PRODUCTS", ProductsUnavailable): Expect(
        "REJECTING_ORDER",
        RejectOrder,
        "reject_order",
        1,
        5,
        "products unavailable: p-2 (requested 1, available 0)",
    ),
    ("VERIFYING_PRODUCTS", StepTimedOut): Expect(
        "VERIFYING_PRODUCTS", ReserveProducts, "verify_products", 2, 10
    ),
    ("AUTHORIZING_PAYMENT", PaymentAuthorized): Expect(
        "APPROVING_ORDER", ApproveOrder, "approve_order", 1, 5
    ),
    ("AUTHORIZING_PAYMENT", PaymentFailed): Expect(
        "RELEASING_PRODUCTS",
        ReleaseProducts,
        "release_products",
        1,
        5,
        "payment failed: insufficient funds",
    ),
    ("AUTHORIZING_PAYMENT", StepTimedOut): Expect(
        "AUTHORIZING_PAYMENT", AuthorizePayment, "authorize_payment", 2, 10
    ),
    ("APPROVING_ORDER", OrderApproved): Expect("ORDER_APPROVED", None, None, 0, None),
    ("APPROVING_ORDER", StepTimedOut): Expect(
        "APPROVING_ORDER", ApproveOrder, "approve_order", 2, 10
    ),
    ("CANCELLING_PAYMENT", PaymentCancelled): Expect(
        "RELEASING_PRODUCTS", ReleaseProducts, "release_products", 1, 5
    ),
    ("CANCELLING_PAYMENT", StepTimedOut): Expect(
        "CANCELLING_PAYMENT", CancelPayment, "cancel_payment", 2, 10
    ),
    ("RELEASING_PRODUCTS", ProductsReleased): Expect(
        "REJECTING_ORDER", RejectOrder, "reject_order", 1, 5
    ),
    ("RELEASING_PRODUCTS", StepTimedOut): Expect(
        "RELEASING_PRODUCTS", ReleaseProducts, "release_products", 2, 10
    ),
    ("REJECTING_ORDER", OrderRejected): Expect("ORDER_REJECTED", None, None, 0, None),
    ("REJECTING_ORDER", StepTimedOut): Expect(
        "REJECTING_ORDER", RejectOrder, "reject_order", 2, 10
    ),
}


def message_of(message_type: type, saga: SagaState) -> Any:
    """A well-formed message of `message_type` aimed at `saga`'s current step and attempt."""
    if message_type is OrderRequested:
        return requested()
    if message_type is StepTimedOut:
        return timed_out(saga, at=NOW)
    step = CREATE_ORDER_SAGA.waiting_step(saga.state)
    own_step = step is not None and message_type in step.replies
    return reply(message_type, saga.step if own_step else None, max(saga.attempt, 1))


def assert_unchanged(decision: Decision, saga: SagaState | None) -> None:
    assert decision.state is saga
    assert decision.commands == ()
    assert decision.events == ()


def assert_command(command: Any, step: str, attempt: int) -> None:
    assert command.saga_id == SAGA
    assert command.command_id == f"{SAGA}:{step}"
    assert command.attempt == attempt
    assert command.sent_at == NOW
    assert CREATE_ORDER.route(command) == ROUTES[type(command)]


@pytest.mark.parametrize("message_type", MESSAGE_TYPES, ids=lambda t: t.__name__)
@pytest.mark.parametrize("state", STATES)
def test_every_state_and_message_type(state: str, message_type: type) -> None:
    saga = saga_in(state, reason=EARLIER)
    message = message_of(message_type, saga)
    decision = decide(CREATE_ORDER, saga, message, NOW)
    expect = TABLE.get((state, message_type))
    if expect is None:
        assert_unchanged(decision, saga)
        return
    new = decision.state
    assert new is not None
    assert (new.state, new.step, new.attempt) == (expect.to_state, expect.step, expect.attempt)
    expected_deadline = (
        None if expect.deadline_s is None else NOW + timedelta(seconds=expect.deadline_s)
    )
    assert new.deadline == expected_deadline
    assert new.reason == expect.reason
    assert (new.sequence, new.updated_at, new.created_at) == (5, NOW, saga.created_at)
    assert (new.saga_id, new.order_id, new.customer_id, new.items) == (SAGA, SAGA, CUSTOMER, ITEMS)
    assert new.total == saga.total or message_type is ProductsReserved
    notifications = tuple(
        type(c) for c in decision.commands if CREATE_ORDER_SAGA.step_for_command(type(c)) is None
    )
    expected_notices = tuple(n.command for n in CREATE_ORDER_SAGA.notifications_on(new.state))
    assert notifications == expected_notices
    steps = [c for c in decision.commands if type(c) not in notifications]
    if expect.command is None:
        assert steps == []
    else:
        (command,) = steps
        assert type(command) is expect.command
        assert expect.step is not None
        assert_command(command, expect.step, expect.attempt)
    terminal = expect.to_state in ("ORDER_APPROVED", "ORDER_REJECTED")
    assert decision.events == (
        SagaEvent(
            saga_id=SAGA,
            sequence=5,
            at=NOW,
            trigger=message_type.__name__,
            from_state=state,
            to_state=expect.to_state,
            step=expect.step,
            attempt=expect.attempt,
            reason=expect.reason,
            commands=[c.__name__ for c in (expect.command, *expected_notices) if c is not None],
            terminal=terminal,
            saga="CreateOrderSaga",
            version=1,
        ),
    )


def test_table_covers_exactly_the_definition() -> None:
    defined = {(t.source, t.trigger) for t in CREATE_ORDER_SAGA.transitions}
    retries = {(s, StepTimedOut) for s, _ in TABLE} - defined
    assert set(TABLE) == defined | retries
    assert {s for s, _ in retries} == {
        "CREATING_ORDER",
        "APPROVING_ORDER",
        "CANCELLING_PAYMENT",
        "RELEASING_PRODUCTS",
        "REJECTING_ORDER",
    }


# ---- payloads of the commands ----


def test_order_requested_starts_a_saga() -> None:
    decision = decide(CREATE_ORDER, None, requested(), NOW)
    saga = decision.state
    assert saga == SagaState(
        saga_id=SAGA,
        order_id=SAGA,
        customer_id=CUSTOMER,
        items=ITEMS,
        state="CREATING_ORDER",
        step="create_order",
        attempt=1,
        deadline=NOW + timedelta(seconds=5),
        total=None,
        reason=None,
        sequence=1,
        created_at=NOW,
        updated_at=NOW,
        entered_at=NOW,
    )
    assert decision.commands == (
        CreateOrder(SAGA, f"{SAGA}:create_order", 1, NOW, SAGA, CUSTOMER, ITEMS),
    )
    assert CREATE_ORDER.route(decision.commands[0]) == ("order.commands", SAGA.encode())
    (event,) = decision.events
    assert (event.sequence, event.from_state, event.to_state, event.trigger) == (
        1,
        None,
        "CREATING_ORDER",
        "OrderRequested",
    )
    assert (event.commands, event.terminal, event.step, event.attempt) == (
        ["CreateOrder"],
        False,
        "create_order",
        1,
    )


def test_products_reserved_stores_total_and_charges_it() -> None:
    saga = saga_in("VERIFYING_PRODUCTS")
    decision = decide(CREATE_ORDER, saga, reply_for(saga), NOW)
    assert decision.state is not None and decision.state.total == TOTAL
    assert decision.commands == (
        AuthorizePayment(SAGA, f"{SAGA}:authorize_payment", 1, NOW, SAGA, CUSTOMER, TOTAL),
    )


def test_reserve_products_carries_the_items() -> None:
    decision = decide(CREATE_ORDER, saga_in("CREATING_ORDER"), reply(OrderCreated), NOW)
    assert decision.commands == (
        ReserveProducts(SAGA, f"{SAGA}:verify_products", 1, NOW, SAGA, ITEMS),
    )


def test_reject_order_carries_the_saga_reason() -> None:
    saga = saga_in("RELEASING_PRODUCTS", reason="payment failed: insufficient funds")
    decision = decide(CREATE_ORDER, saga, reply(ProductsReleased), NOW)
    assert decision.commands == (
        RejectOrder(
            SAGA, f"{SAGA}:reject_order", 1, NOW, SAGA, "payment failed: insufficient funds"
        ),
    )


def test_cancel_payment_goes_to_the_customer_partition() -> None:
    saga = saga_in("AUTHORIZING_PAYMENT", attempt=3)
    decision = decide(CREATE_ORDER, saga, timed_out(saga), NOW)
    assert decision.commands == (
        CancelPayment(SAGA, f"{SAGA}:cancel_payment", 1, NOW, SAGA, CUSTOMER),
    )


def test_a_request_breaking_the_limits_ends_its_saga_at_once_with_the_reason() -> None:
    decision = decide(CREATE_ORDER, None, requested(items=[]), NOW)
    saga = decision.state
    assert saga is not None and decision.commands == ()
    assert (saga.state, saga.step, saga.deadline) == ("ORDER_REJECTED", None, None)
    assert saga.attempt == 0  # no command was ever sent
    assert saga.reason == "invalid request: the order has no lines"
    (event,) = decision.events
    assert (event.from_state, event.to_state, event.terminal) == (None, "ORDER_REJECTED", True)
    assert (event.trigger, event.attempt, event.commands) == ("OrderRequested", 0, [])
    assert event.reason == saga.reason


def test_the_row_of_the_largest_invalid_request_stays_small() -> None:
    lines = [OrderItem(f"product-{i:06d}" + "x" * 100, 1) for i in range(20_000)]
    decision = decide(CREATE_ORDER, None, requested(items=lines, customer="c" * 500), NOW)
    saga = decision.state
    assert saga is not None and saga.state == "ORDER_REJECTED" and saga.items == []
    assert saga.customer_id == ""  # not a valid id: not kept
    assert saga.reason is not None and "20000 lines, at most 200" in saga.reason
    assert len(codec.encode(saga)) < 2_000
    assert all(len(codec.encode(e)) < 2_000 for e in decision.events)


def test_approval_tells_the_product_service_the_sale_is_final() -> None:
    saga = saga_in("APPROVING_ORDER")
    decision = decide(CREATE_ORDER, saga, reply_for(saga), NOW)
    assert decision.state is not None and decision.state.state == "ORDER_APPROVED"
    items = list(ITEMS)
    assert decision.commands == (SellProducts(SAGA, f"{SAGA}:sell_products", 1, NOW, SAGA, items),)
    assert CREATE_ORDER.route(decision.commands[0]) == (
        "product.commands",
        ITEMS[0].product_id.encode(),
    )
    assert decision.events[0].commands == ["SellProducts"]


# ---- duplicates, stale and foreign messages ----


def test_duplicate_reply_changes_nothing() -> None:
    saga = saga_in("CREATING_ORDER")
    first = decide(CREATE_ORDER, saga, reply(OrderCreated), NOW)
    assert first.state is not None
    assert_unchanged(decide(CREATE_ORDER, first.state, reply(OrderCreated), NOW), first.state)


def test_duplicate_order_requested_changes_nothing() -> None:
    started = decide(CREATE_ORDER, None, requested(), NOW).state
    for state in STATES:
        saga = saga_in(state)
        assert_unchanged(decide(CREATE_ORDER, saga, requested(), NOW), saga)
    assert_unchanged(
        decide(CREATE_ORDER, started, requested(), NOW + timedelta(seconds=1)), started
    )


def test_reply_for_a_future_attempt_changes_nothing() -> None:
    saga = saga_in("CREATING_ORDER", attempt=1)
    assert_unchanged(decide(CREATE_ORDER, saga, reply(OrderCreated, attempt=2), NOW), saga)
    assert_unchanged(decide(CREATE_ORDER, saga, reply(OrderCreated, attempt=0), NOW), saga)


def test_reply_to_an_earlier_attempt_of_the_same_command_counts() -> None:
    saga = saga_in("CREATING_ORDER", attempt=3)
    decision = decide(CREATE_ORDER, saga, reply(OrderCreated, attempt=1), NOW)
    assert decision.state is not None and decision.state.state == "VERIFYING_PRODUCTS"


@pytest.mark.parametrize(
    "message",
    [
        reply(OrderCreated, step="approve_order"),  # right type, other step's command id
        reply(OrderCreated, saga_id="ord-2"),  # another saga
        reply(OrderApproved, step="create_order"),  # other step's type, this command id
    ],
    ids=["other-step-id", "other-saga", "wrong-type"],
)
def test_reply_not_for_the_awaited_command_changes_nothing(message: Any) -> None:
    saga = saga_in("CREATING_ORDER")
    assert_unchanged(decide(CREATE_ORDER, saga, message, NOW), saga)


@pytest.mark.parametrize(
    ("state", "reply_type"),
    [
        ("CREATING_ORDER", OrderCreated),
        ("VERIFYING_PRODUCTS", ProductsReserved),
        ("VERIFYING_PRODUCTS", ProductsUnavailable),
        ("AUTHORIZING_PAYMENT", PaymentFailed),
        ("APPROVING_ORDER", OrderApproved),
        ("REJECTING_ORDER", OrderRejected),
    ],
)
def test_reply_whose_outcome_contradicts_its_type_changes_nothing(
    state: str, reply_type: type
) -> None:
    saga = saga_in(state)
    right = reply(reply_type, step=saga.step)
    flipped = Outcome.FAILURE if right.outcome == Outcome.SUCCESS else Outcome.SUCCESS
    assert_unchanged(decide(CREATE_ORDER, saga, replace(right, outcome=flipped), NOW), saga)
    assert (
        decide(CREATE_ORDER, saga, right, NOW).state is not saga
    )  # the same reply, right outcome, counts


@pytest.mark.parametrize(
    "changes",
    [{"attempt": 2}, {"attempt": 0}, {"step": "create_order"}, {"saga_id": "ord-2"}],
    ids=["future-attempt", "past-attempt", "other-step", "other-saga"],
)
def test_stale_step_timed_out_changes_nothing(changes: dict[str, Any]) -> None:
    saga = saga_in("APPROVING_ORDER")
    assert_unchanged(decide(CREATE_ORDER, saga, timed_out(saga, **changes), NOW), saga)


def test_second_step_timed_out_for_the_same_attempt_changes_nothing() -> None:
    saga = saga_in("CREATING_ORDER")
    timeout = timed_out(saga)
    retried = decide(CREATE_ORDER, saga, timeout, NOW).state
    assert retried is not None and retried.attempt == 2
    assert_unchanged(decide(CREATE_ORDER, retried, timeout, NOW), retried)


@pytest.mark.parametrize(
    "message",
    [
        object(),
        None,
        "OrderCreated",
        42,
        CreateOrder(SAGA, f"{SAGA}:create_order", 1, T0, SAGA, CUSTOMER, ITEMS),
        ReleaseItem(SAGA, "p-1"),
        SagaEvent(SAGA, 1, T0, "x", None, "CREATING_ORDER", None, 1, None, [], False),
    ],
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("state", [None, *STATES], ids=str)
def test_unknown_messages_change_nothing(state: str | None, message: object) -> None:
    saga = None if state is None else saga_in(state)
    assert_unchanged(decide(CREATE_ORDER, saga, message, NOW), saga)


@pytest.mark.parametrize("message_type", (*REPLY_TYPES, StepTimedOut), ids=lambda t: t.__name__)
def test_messages_without_a_saga_change_nothing(message_type: type) -> None:
    message = (
        reply(message_type)
        if message_type is not StepTimedOut
        else timed_out(saga_in("CREATING_ORDER"))
    )
    assert_unchanged(decide(CREATE_ORDER, None, message, NOW), None)


@pytest.mark.parametrize("terminal", ["ORDER_APPROVED", "ORDER_REJECTED"])
def test_terminal_saga_ignores_everything(terminal: str) -> None:
    saga = saga_in(terminal)
    for message_type in MESSAGE_TYPES:
        for attempt in (1, 2):
            message = reply(message_type, attempt=attempt) if message_type in REPLY_TYPES else None
            for candidate in (message, message_of(message_type, saga)):
                assert_unchanged(decide(CREATE_ORDER, saga, candidate, NOW), saga)
    for step in ("create_order", "approve_order", "reject_order"):
        assert_unchanged(
            decide(CREATE_ORDER, saga, timed_out(saga, step=step, attempt=1), NOW), saga
        )


# ---- sequences ----


def run(
    messages: list[Any], start: SagaState | None = None
) -> tuple[SagaState | None, list[Decision]]:
    state, decisions = start, []
    for i, message in enumerate(messages):
        decision = decide(CREATE_ORDER, state, message, NOW + timedelta(seconds=i))
        decisions.append(decision)
        state = decision.state
    return state, decisions


def events_of(decisions: list[Decision]) -> list[SagaEvent]:
    return [event for decision in decisions for event in decision.events]


def test_happy_path_numbers_events_in_order() -> None:
    state, decisions = None, []
    state = decide(CREATE_ORDER, None, requested(), NOW).state
    assert state is not None
    for _ in range(4):
        decision = decide(CREATE_ORDER, state, reply_for(state), NOW)
        decisions.append(decision)
        assert decision.state is not None
        state = decision.state
    assert state.state == "ORDER_APPROVED" and state.step is None and state.deadline is None
    events = events_of(decisions)
    assert [e.sequence for e in events] == [2, 3, 4, 5] and state.sequence == 5
    assert [e.to_state for e in events] == [
        "VERIFYING_PRODUCTS",
        "AUTHORIZING_PAYMENT",
        "APPROVING_ORDER",
        "ORDER_APPROVED",
    ]
    assert [e.terminal for e in events] == [False, False, False, True]
    assert state.reason is None and state.total == TOTAL


@pytest.mark.parametrize(
    ("state", "to_state", "command", "reason"),
    [
        (
            "VERIFYING_PRODUCTS",
            "RELEASING_PRODUCTS",
            ReleaseProducts,
            "products not verified in time",
        ),
        (
            "AUTHORIZING_PAYMENT",
            "CANCELLING_PAYMENT",
            CancelPayment,
            "payment not authorized in time",
        ),
    ],
)
def test_last_attempt_of_a_compensatable_or_pivot_step_compensates_on_deadline(
    state: str, to_state: str, command: type, reason: str
) -> None:
    saga = saga_in(state, attempt=3)
    decision = decide(CREATE_ORDER, saga, timed_out(saga), NOW)
    assert decision.state is not None
    assert (decision.state.state, decision.state.attempt, decision.state.reason) == (
        to_state,
        1,
        reason,
    )
    assert [type(c) for c in decision.commands] == [command]


def test_compensatable_and_pivot_commands_are_resent_before_compensating() -> None:
    saga = saga_in("VERIFYING_PRODUCTS")
    sent: list[Any] = []
    for _ in range(2):
        decision = decide(CREATE_ORDER, saga, timed_out(saga), NOW)
        assert decision.state is not None
        saga = decision.state
        sent.extend(decision.commands)
    assert saga.state == "VERIFYING_PRODUCTS" and saga.attempt == 3
    assert {c.command_id for c in sent} == {f"{saga.saga_id}:verify_products"}
    assert [c.attempt for c in sent] == [2, 3]


def test_late_payment_reply_after_cancellation_is_ignored() -> None:
    saga = saga_in("AUTHORIZING_PAYMENT", attempt=3)
    cancelling = decide(CREATE_ORDER, saga, timed_out(saga), NOW).state
    assert cancelling is not None and cancelling.state == "CANCELLING_PAYMENT"
    for late in (reply(PaymentAuthorized), reply(PaymentFailed)):
        assert_unchanged(decide(CREATE_ORDER, cancelling, late, NOW), cancelling)
    final, decisions = run(
        [
            reply(PaymentCancelled),
            reply(PaymentAuthorized),
            reply(ProductsReleased),
            reply(OrderRejected),
        ],
        start=cancelling,
    )
    assert final is not None and final.state == "ORDER_REJECTED"
    assert final.reason == "payment not authorized in time"
    assert [type(c) for d in decisions for c in d.commands] == [ReleaseProducts, RejectOrder]
    assert [d.events == () for d in decisions] == [False, True, False, False]
    rejection = decisions[2].commands[0]
    assert (
        isinstance(rejection, RejectOrder) and rejection.reason == "payment not authorized in time"
    )


def test_products_deadline_releases_then_rejects() -> None:
    saga = saga_in("VERIFYING_PRODUCTS", attempt=3)
    final, decisions = run(
        [timed_out(saga), reply(ProductsReserved), reply(ProductsReleased), reply(OrderRejected)],
        start=saga,
    )
    assert final is not None and final.state == "ORDER_REJECTED"
    assert [e.to_state for e in events_of(decisions)] == [
        "RELEASING_PRODUCTS",
        "REJECTING_ORDER",
        "ORDER_REJECTED",
    ]


@pytest.mark.parametrize("state", ["CREATING_ORDER", "APPROVING_ORDER", "REJECTING_ORDER"])
def test_retry_backoff_grows_and_caps(state: str) -> None:
    saga: SagaState = saga_in(state)
    deadlines, commands = [], []
    clock = NOW
    for _ in range(7):
        decision = decide(CREATE_ORDER, saga, timed_out(saga, at=clock), clock)
        assert decision.state is not None
        saga = decision.state
        (command,) = decision.commands
        commands.append(command)
        assert saga.deadline is not None
        deadlines.append((saga.deadline - clock).total_seconds())
        assert command.sent_at == clock
        clock = saga.deadline
    assert deadlines == [10, 20, 40, 60, 60, 60, 60]  # attempts 2..8
    assert [c.attempt for c in commands] == [2, 3, 4, 5, 6, 7, 8]
    assert len({c.command_id for c in commands}) == 1
    assert [type(c) for c in commands] == [type(commands[0])] * 7
    assert saga.state == state and saga.sequence == 4 + 7
    # and a reply to any attempt sent so far still completes the step
    assert decide(CREATE_ORDER, saga, reply_for(saga, attempt=3), clock).state is not saga


def test_retry_keeps_reason_and_total() -> None:
    saga = saga_in("REJECTING_ORDER", reason="products unavailable")
    retried = decide(CREATE_ORDER, saga, timed_out(saga), NOW)
    assert retried.state == replace(
        saga, attempt=2, deadline=NOW + timedelta(seconds=10), sequence=5, updated_at=NOW
    )
    assert retried.commands[0] == RejectOrder(
        SAGA, f"{SAGA}:reject_order", 2, NOW, SAGA, "products unavailable"
    )
    (event,) = retried.events
    assert (event.from_state, event.to_state, event.trigger, event.attempt) == (
        "REJECTING_ORDER",
        "REJECTING_ORDER",
        "StepTimedOut",
        2,
    )


def test_a_transition_stamps_when_the_state_was_entered_and_a_re_send_keeps_it() -> None:
    saga = saga_in("VERIFYING_PRODUCTS")
    resent = decide(CREATE_ORDER, saga, timed_out(saga), NOW).state
    assert resent.attempt == 2 and resent.updated_at == NOW
    assert resent.entered_at == saga.entered_at  # still waiting in the state it entered
    later = NOW + timedelta(seconds=3)
    moved = decide(CREATE_ORDER, resent, reply_for(resent), later).state
    assert moved.state == "AUTHORIZING_PAYMENT" and moved.entered_at == later


def test_participants_answering_every_command_drive_the_saga_to_the_end() -> None:
    decision = decide(CREATE_ORDER, None, requested(), NOW)
    saga, outbox = decision.state, list(decision.commands)
    notified = []
    while outbox:
        command = outbox.pop(0)
        if CREATE_ORDER_SAGA.step_for_command(type(command)) is None:  # a notification
            notified.append(type(command))
            continue
        decision = decide(CREATE_ORDER, saga, answer(command), NOW)
        saga = decision.state
        outbox.extend(decision.commands)
    assert saga is not None and saga.state == "ORDER_APPROVED" and saga.sequence == 5
    assert notified == [SellProducts]


# ---- expired() ----


def test_expired_only_after_the_deadline() -> None:
    saga = saga_in("AUTHORIZING_PAYMENT")
    assert saga.deadline is not None
    assert expired(saga, saga.deadline - timedelta(milliseconds=1)) is None
    assert expired(saga, saga.deadline) == StepTimedOut(
        SAGA, "authorize_payment", 1, saga.deadline, saga.deadline
    )
    later = saga.deadline + timedelta(seconds=3)
    timeout = expired(saga, later)
    assert timeout is not None and timeout.fired_at == later
    assert decide(CREATE_ORDER, saga, timeout, later).state is not saga


@pytest.mark.parametrize("terminal", ["ORDER_APPROVED", "ORDER_REJECTED"])
def test_terminal_sagas_never_expire(terminal: str) -> None:
    assert expired(saga_in(terminal), NOW + timedelta(days=365)) is None
