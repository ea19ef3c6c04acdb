"""The saga definition: validation of broken definitions, routing, the generated diagram."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator.engine.definition import (
    DEADLINE,
    DefinitionError,
    SagaDefinition,
    State,
    StepKind,
    Timeout,
    Transition,
    backoff,
    forward_steps,
    single_deadline,
    validate,
)
from orchestrator.engine.diagram import mermaid
from orchestrator.engine.runner import EVENTS_TOPIC, REPLY_TOPIC
from orchestrator.sagas import SAGAS
from orchestrator.sagas import create_order as sd
from orchestrator.sagas.create_order import DEFINITION as CREATE_ORDER_SAGA
from orchestrator.sagas.create_order import SAGA as CREATE_ORDER
from schemas.messages import (
    ApproveOrder,
    AuthorizePayment,
    CancelPayment,
    CreateOrder,
    Money,
    OrderItem,
    OrderRejected,
    PaymentCancelled,
    PaymentFailed,
    ProductsReleased,
    ProductsUnavailable,
    RejectOrder,
    ReleaseProducts,
    ReserveProducts,
    SellProducts,
    TopUp,
)

route = CREATE_ORDER.route

# ---- helpers building broken definitions ----


def problems(definition: SagaDefinition) -> list[str]:
    """The problems validate() reports (empty when valid)."""
    try:
        validate(definition)
    except DefinitionError as error:
        return [line[2:] for line in str(error).splitlines() if line.startswith("- ")]
    return []


def with_step(name: str, **changes: object) -> SagaDefinition:
    steps = tuple(
        dataclasses.replace(step, **changes) if step.name == name else step  # type: ignore[arg-type]
        for step in CREATE_ORDER_SAGA.steps
    )
    return dataclasses.replace(CREATE_ORDER_SAGA, steps=steps)


def with_transitions(
    add: tuple[Transition, ...] = (), drop: tuple[tuple[str, type], ...] = ()
) -> SagaDefinition:
    kept = tuple(t for t in CREATE_ORDER_SAGA.transitions if (t.source, t.trigger) not in drop)
    return dataclasses.replace(CREATE_ORDER_SAGA, transitions=kept + add)


def assert_only_problem(definition: SagaDefinition, pattern: str) -> None:
    found = problems(definition)
    assert len(found) == 1, found
    assert re.search(pattern, found[0]), found


# ---- the real definition ----


def test_real_definition_is_valid() -> None:
    assert problems(CREATE_ORDER_SAGA) == []


def test_forward_path_is_compensatable_then_pivot_then_retriable() -> None:
    forward = forward_steps(CREATE_ORDER_SAGA)
    assert [step.name for step in forward] == [
        sd.CREATE_ORDER,
        sd.VERIFY_PRODUCTS,
        sd.AUTHORIZE_PAYMENT,
        sd.APPROVE_ORDER,
    ]
    assert [step.kind for step in forward] == [
        StepKind.RETRIABLE,
        StepKind.COMPENSATABLE,
        StepKind.PIVOT,
        StepKind.RETRIABLE,
    ]


def test_error_lists_every_problem_with_a_clear_message() -> None:
    broken = dataclasses.replace(
        with_transitions(add=(Transition(sd.ORDER_APPROVED, OrderRejected, "NOWHERE"),)),
        initial="NOWHERE_EITHER",
    )
    with pytest.raises(DefinitionError) as error:
        validate(broken)
    message = str(error.value)
    assert message.startswith("invalid saga definition CreateOrderSaga v1:")
    assert "initial state NOWHERE_EITHER is unknown" in message
    assert "targets unknown state NOWHERE" in message
    assert "leaves terminal state ORDER_APPROVED" in message


# ---- each check fires ----


def test_unreachable_state_is_reported() -> None:
    limbo = dataclasses.replace(
        CREATE_ORDER_SAGA,
        states=(*CREATE_ORDER_SAGA.states, State("LIMBO", sd.REJECT_ORDER)),
        transitions=(
            *CREATE_ORDER_SAGA.transitions,
            Transition("LIMBO", OrderRejected, sd.ORDER_REJECTED),
        ),
    )
    assert_only_problem(limbo, r"state LIMBO is unreachable from CREATING_ORDER")


def test_state_cut_off_by_removed_transition_is_unreachable() -> None:
    broken = with_transitions(
        drop=((sd.AUTHORIZING_PAYMENT, DEADLINE),),
        add=(Transition(sd.AUTHORIZING_PAYMENT, DEADLINE, sd.RELEASING_PRODUCTS),),
    )
    assert problems(broken) == [
        "state CANCELLING_PAYMENT is unreachable from CREATING_ORDER",
        # the payment deadline no longer cancels the payment
        "AUTHORIZING_PAYMENT --StepTimedOut--> RELEASING_PRODUCTS can reach ORDER_REJECTED"
        " without cancel_payment, which undoes authorize_payment",
    ]


def test_waiting_step_without_timeout_has_no_deadline_policy() -> None:
    assert_only_problem(
        with_step(sd.APPROVE_ORDER, timeout=None),
        r"waiting state APPROVING_ORDER: step approve_order has no deadline policy",
    )


def test_non_terminal_state_without_step_has_no_deadline_policy() -> None:
    states = tuple(
        State(state.name, None) if state.name == sd.APPROVING_ORDER else state
        for state in CREATE_ORDER_SAGA.states
    )
    found = problems(dataclasses.replace(CREATE_ORDER_SAGA, states=states))
    assert "waiting state APPROVING_ORDER has no step, so no deadline policy" in found


def test_non_positive_or_inverted_timeout_is_reported() -> None:
    zero = Timeout(timedelta(0), timedelta(seconds=1))
    inverted = Timeout(timedelta(seconds=10), timedelta(seconds=5))
    assert_only_problem(with_step(sd.CREATE_ORDER, timeout=zero), r"0 < base <= cap")
    assert_only_problem(with_step(sd.CREATE_ORDER, timeout=inverted), r"0 < base <= cap")


def test_pivot_or_compensatable_state_without_deadline_transition_is_reported() -> None:
    broken = with_transitions(drop=((sd.VERIFYING_PRODUCTS, DEADLINE),))
    # its compensation state RELEASING_PRODUCTS stays reachable via PaymentFailed
    assert_only_problem(
        broken,
        r"state VERIFYING_PRODUCTS: compensatable step verify_products has no deadline",
    )


def test_retriable_state_with_deadline_transition_is_reported() -> None:
    # the way back it adds runs every compensation, so only the retry rule is broken
    broken = with_transitions(
        add=(Transition(sd.APPROVING_ORDER, DEADLINE, sd.CANCELLING_PAYMENT),)
    )
    assert_only_problem(broken, r"retriable step approve_order must retry, not leave")


def test_compensatable_step_after_the_pivot_is_reported() -> None:
    broken = with_step(sd.APPROVE_ORDER, kind=StepKind.COMPENSATABLE)
    found = problems(broken)
    assert "compensatable step approve_order comes after the pivot authorize_payment" in found


def test_retriable_forward_step_before_the_pivot_is_reported() -> None:
    # create_order is retriable *and* undone by reject_order; without that it may not
    # precede the pivot
    assert_only_problem(
        with_step(sd.CREATE_ORDER, compensation=None),
        r"retriable step create_order comes before the pivot authorize_payment",
    )


def test_step_after_the_pivot_with_a_compensation_is_reported() -> None:
    assert_only_problem(
        with_step(sd.APPROVE_ORDER, compensation=sd.REJECT_ORDER),
        r"step approve_order after the pivot authorize_payment declares a compensation",
    )


def test_missing_or_second_pivot_is_reported() -> None:
    no_pivot = with_step(sd.AUTHORIZE_PAYMENT, kind=StepKind.COMPENSATABLE)
    assert "the forward path needs exactly one pivot step, found none" in problems(no_pivot)
    two = with_step(sd.VERIFY_PRODUCTS, kind=StepKind.PIVOT)
    assert any("exactly one pivot" in p and "verify_products" in p for p in problems(two))


def test_compensation_step_must_be_retriable() -> None:
    found = problems(with_step(sd.RELEASE_PRODUCTS, kind=StepKind.PIVOT))
    assert "compensation step release_products must be retriable, not pivot" in found
    assert (
        "step verify_products: compensation release_products must be retriable, not pivot" in found
    )


def test_compensatable_step_without_compensation_is_reported() -> None:
    assert_only_problem(
        with_step(sd.VERIFY_PRODUCTS, compensation=None),
        r"^compensatable step verify_products names no compensation$",
    )


@pytest.mark.parametrize("attempts", [0, -1])
def test_attempts_below_one_are_reported(attempts: int) -> None:
    assert_only_problem(
        with_step(sd.VERIFY_PRODUCTS, attempts=attempts),
        rf"^step verify_products: attempts must be at least 1, got {attempts}$",
    )


def test_compensation_of_another_participant_is_reported() -> None:
    assert_only_problem(
        with_step(sd.VERIFY_PRODUCTS, compensation=sd.CANCEL_PAYMENT),
        r"^step verify_products: compensation cancel_payment belongs to participant payment,"
        r" not product$",
    )


def test_compensation_on_the_forward_path_is_reported() -> None:
    assert_only_problem(
        with_step(sd.CREATE_ORDER, compensation=sd.APPROVE_ORDER),
        r"^step create_order: compensation approve_order is a step of the forward path$",
    )


@pytest.mark.parametrize(
    ("source", "trigger", "message"),
    [
        # the step's own deadline: it may have reserved stock
        (sd.VERIFYING_PRODUCTS, DEADLINE,
         "VERIFYING_PRODUCTS --StepTimedOut--> REJECTING_ORDER can reach ORDER_REJECTED"
         " without release_products, which undoes verify_products"),
        # a later step's failure
        (sd.AUTHORIZING_PAYMENT, PaymentFailed,
         "AUTHORIZING_PAYMENT --PaymentFailed--> REJECTING_ORDER can reach ORDER_REJECTED"
         " without release_products, which undoes verify_products"),
    ],
)  # fmt: skip
def test_way_back_that_skips_a_compensation_is_reported(
    source: str, trigger: type, message: str
) -> None:
    broken = with_transitions(
        drop=((source, trigger),),
        add=(Transition(source, trigger, sd.REJECTING_ORDER),),
    )
    assert problems(broken) == [message]


def test_own_failure_needs_no_compensation() -> None:
    # ProductsUnavailable goes straight to REJECTING_ORDER: the Product Service has
    # already returned what it took, so release_products is not needed on that path
    turn = CREATE_ORDER_SAGA.transition(sd.VERIFYING_PRODUCTS, ProductsUnavailable)
    assert turn is not None and turn.target == sd.REJECTING_ORDER
    assert problems(CREATE_ORDER_SAGA) == []


def test_transition_to_unknown_state_is_reported() -> None:
    broken = with_transitions(
        drop=((sd.CANCELLING_PAYMENT, PaymentCancelled),),
        add=(Transition(sd.CANCELLING_PAYMENT, PaymentCancelled, "REFUNDING"),),
    )
    found = problems(broken)
    assert any("targets unknown state REFUNDING" in p for p in found), found


def test_transition_from_unknown_state_is_reported() -> None:
    broken = with_transitions(add=(Transition("GHOST", OrderRejected, sd.ORDER_REJECTED),))
    assert_only_problem(broken, r"starts from unknown state GHOST")


def test_terminal_state_with_outgoing_transition_is_reported() -> None:
    broken = with_transitions(add=(Transition(sd.ORDER_REJECTED, DEADLINE, sd.CREATING_ORDER),))
    assert_only_problem(broken, r"leaves terminal state ORDER_REJECTED")


def test_trigger_that_the_step_never_replies_is_reported() -> None:
    broken = with_transitions(
        add=(Transition(sd.CREATING_ORDER, ProductsReleased, sd.REJECTING_ORDER),)
    )
    assert_only_problem(broken, r"ProductsReleased is not a reply of step create_order")


def test_unhandled_reply_is_reported() -> None:
    broken = with_transitions(
        drop=((sd.AUTHORIZING_PAYMENT, PaymentFailed),),
    )
    assert_only_problem(broken, r"AUTHORIZING_PAYMENT has no transition for reply PaymentFailed")


def test_duplicate_names_and_transitions_are_reported() -> None:
    twice = CREATE_ORDER_SAGA.transitions[0]
    found = problems(
        dataclasses.replace(
            CREATE_ORDER_SAGA,
            steps=(*CREATE_ORDER_SAGA.steps, CREATE_ORDER_SAGA.steps[0]),
            states=(*CREATE_ORDER_SAGA.states, CREATE_ORDER_SAGA.states[0]),
            transitions=(*CREATE_ORDER_SAGA.transitions, twice),
        )
    )
    assert "step create_order is declared twice" in found
    assert "state CREATING_ORDER is declared twice" in found
    assert "transition from CREATING_ORDER on OrderCreated is declared twice" in found


def test_unknown_step_references_are_reported() -> None:
    states = (*CREATE_ORDER_SAGA.states, State("ODD", "no_such_step"))
    broken = dataclasses.replace(
        with_step(sd.VERIFY_PRODUCTS, compensation="undo_all"),
        states=states,
        terminal=CREATE_ORDER_SAGA.terminal | {"ODD", "NEVER"},
    )
    found = problems(broken)
    assert "state ODD waits for unknown step no_such_step" in found
    assert "terminal state ODD waits for step no_such_step" in found
    assert "terminal state NEVER is unknown" in found
    assert "step verify_products has unknown compensation step undo_all" in found


def test_terminal_initial_state_is_reported() -> None:
    broken = dataclasses.replace(CREATE_ORDER_SAGA, initial=sd.ORDER_APPROVED)
    assert "initial state ORDER_APPROVED is terminal" in problems(broken)


# ---- timeouts ----


def test_backoff_doubles_from_base_up_to_cap() -> None:
    policy = backoff(base_seconds=5, cap_seconds=60)
    assert [policy.after(n).total_seconds() for n in range(1, 8)] == [5, 10, 20, 40, 60, 60, 60]
    assert policy.after(10_000) == timedelta(seconds=60)


def test_single_deadline_is_fixed() -> None:
    policy = single_deadline(30)
    assert policy.after(1) == policy.after(5) == timedelta(seconds=30)


# ---- routing ----

T = datetime(2026, 1, 1, tzinfo=UTC)
EUR10 = Money(Decimal("10.00"), "EUR")
ITEMS = [OrderItem("p-1", 2)]
HEAD: dict[str, Any] = {"saga_id": "saga-1", "command_id": "saga-1:x", "attempt": 1, "sent_at": T}


@pytest.mark.parametrize(
    ("command", "topic", "key"),
    [
        (CreateOrder(**HEAD, order_id="ord-1", customer_id="cus-1", items=ITEMS),
         "order.commands", b"ord-1"),
        (ApproveOrder(**HEAD, order_id="ord-1"), "order.commands", b"ord-1"),
        (RejectOrder(**HEAD, order_id="ord-1", reason="r"), "order.commands", b"ord-1"),
        (ReserveProducts(**HEAD, order_id="ord-1", items=ITEMS), "product.commands", b"p-1"),
        (ReleaseProducts(**HEAD, order_id="ord-1", items=[OrderItem("p-2", 1), *ITEMS]),
         "product.commands", b"p-2"),
        (SellProducts(**HEAD, order_id="ord-1", items=ITEMS), "product.commands", b"p-1"),
        (AuthorizePayment(**HEAD, order_id="ord-1", customer_id="cüs-1", amount=EUR10),
         "payment.commands", "cüs-1".encode()),
        (CancelPayment(**HEAD, order_id="ord-1", customer_id="cus-1"),
         "payment.commands", b"cus-1"),
    ],
)  # fmt: skip
def test_route_gives_participant_topic_and_key(command: Any, topic: str, key: bytes) -> None:
    assert route(command) == (topic, key)


def test_route_rejects_what_is_not_a_saga_command() -> None:
    with pytest.raises(TypeError, match="TopUp is not a command"):
        route(TopUp("t-1", "cus-1", EUR10))


def test_topic_names() -> None:
    assert (sd.REQUEST_TOPIC, REPLY_TOPIC, EVENTS_TOPIC) == (
        "orders.requested",
        "saga.replies",
        "saga.events",
    )


# ---- diagram ----


def test_diagram_mentions_every_state_and_transition() -> None:
    text = mermaid(CREATE_ORDER)
    lines = {line.strip() for line in text.splitlines()}
    assert text.startswith("stateDiagram-v2\n")
    assert "[*] --> CREATING_ORDER : OrderRequested / CreateOrder" in lines
    for state in CREATE_ORDER_SAGA.states:
        assert state.name in text
    assert "[*] --> ORDER_REJECTED : OrderRequested breaking the limits" in lines
    for t in CREATE_ORDER_SAGA.transitions:
        trigger = "deadline" if t.trigger is DEADLINE else t.trigger.__name__
        step = CREATE_ORDER_SAGA.waiting_step(t.target)
        sent = [] if step is None else [step.command.__name__]
        sent += [n.command.__name__ for n in CREATE_ORDER_SAGA.notifications_on(t.target)]
        label = f"{trigger} / {', '.join(sent)}" if sent else trigger
        assert f"{t.source} --> {t.target} : {label}" in lines
    assert "APPROVING_ORDER --> ORDER_APPROVED : OrderApproved / SellProducts" in lines
    for state in CREATE_ORDER_SAGA.states:
        step = CREATE_ORDER_SAGA.waiting_step(state.name)
        if step is not None and step.kind is StepKind.RETRIABLE:
            retry = f"{state.name} --> {state.name} : deadline / retry {step.command.__name__}"
            assert retry in lines
    assert "ORDER_APPROVED --> [*]" in lines
    assert "ORDER_REJECTED --> [*]" in lines
    assert "note right of AUTHORIZING_PAYMENT : pivot" in lines


README = Path(__file__).resolve().parents[2] / "README.md"
MERMAID_BLOCK = re.compile(r"^```mermaid\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def test_readme_diagrams_are_the_generated_ones() -> None:
    blocks = MERMAID_BLOCK.findall(README.read_text(encoding="utf-8"))
    expected = [mermaid(saga) for saga in SAGAS]
    assert len(blocks) == len(expected), (
        f"README.md should hold one mermaid block per saga ({len(expected)}), found {len(blocks)}"
    )
    for saga, block, diagram in zip(SAGAS, blocks, expected, strict=True):
        assert block == diagram, (
            f"README.md's {saga.name} diagram differs from its definition: replace its"
            " ```mermaid block with the output of `python -m orchestrator.diagram`"
        )


def test_diagram_edge_count_matches_definition() -> None:
    edges = [line for line in mermaid(CREATE_ORDER).splitlines() if "-->" in line]
    retries = [
        s
        for s in CREATE_ORDER_SAGA.states
        if (step := CREATE_ORDER_SAGA.waiting_step(s.name))
        and (step.kind is StepKind.RETRIABLE or step.attempts > 1)
    ]
    invalid = 1 if CREATE_ORDER_SAGA.invalid_request is not None else 0
    expected = 1 + invalid + len(CREATE_ORDER_SAGA.transitions) + len(retries) + 2
    assert len(edges) == expected
