"""Operator actions decided by the engine (`act`): an abort before the pivot compensates
now; at or after the pivot, while compensating, after the end or for no saga it is
refused, changing nothing; a retry re-sends the awaited command now with its backoff
reset. Every action is answered; an accepted one is a transition recorded with the
operator and the reason."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from orchestrator.engine import DefinitionError, act, validate
from orchestrator.sagas.cancel_order import SAGA as CANCEL
from orchestrator.sagas.create_order import DEFINITION
from orchestrator.sagas.create_order import SAGA as CREATE
from schemas.messages import (
    AbortSaga,
    RejectOrder,
    ReleaseProducts,
    RetrySaga,
    SagaActionAnswered,
)
from tests.unit.saga_factories import SAGA, T0, saga_in

NOW = T0 + timedelta(minutes=15)


def abort(saga_id: str = SAGA) -> AbortSaga:
    return AbortSaga(saga_id, "act-1", "ops-alice", "stuck since the outage", NOW)


def retry(saga_id: str = SAGA) -> RetrySaga:
    return RetrySaga(saga_id, "act-2", "ops-bob", "the order service is back", NOW)


@pytest.mark.parametrize(
    ("state", "target", "command"),
    [
        ("CREATING_ORDER", "REJECTING_ORDER", RejectOrder),  # created maybe: reject it
        ("VERIFYING_PRODUCTS", "RELEASING_PRODUCTS", ReleaseProducts),  # reserved maybe
    ],
)
def test_an_abort_before_the_pivot_compensates_now(state: str, target: str, command: type) -> None:
    row = saga_in(state)
    decision = act(CREATE, row, abort(), NOW)
    assert decision.state.state == target
    assert decision.state.entered_at == NOW
    assert decision.state.reason == "AbortSaga by ops-alice: stuck since the outage"
    (sent,) = decision.commands
    assert type(sent) is command and getattr(sent, "attempt", None) == 1
    (event,) = decision.events
    assert (event.from_state, event.to_state, event.trigger) == (state, target, "AbortSaga")
    assert (event.operator, event.reason) == ("ops-alice", decision.state.reason)
    assert decision.answer == SagaActionAnswered(
        SAGA,
        "act-1",
        "AbortSaga",
        True,
        f"aborted: {state} -> {target}, compensating",
        target,
        "ops-alice",
        NOW,
    )


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ("AUTHORIZING_PAYMENT", "is at or after the pivot (authorize_payment)"),
        ("APPROVING_ORDER", "is at or after the pivot (authorize_payment)"),
        ("RELEASING_PRODUCTS", "undoes the saga already"),
        ("REJECTING_ORDER", "undoes the saga already"),
        ("ORDER_APPROVED", "the saga has ended (ORDER_APPROVED)"),
    ],
)
def test_an_abort_that_cannot_be_done_is_refused_and_changes_nothing(state: str, why: str) -> None:
    row = saga_in(state)
    decision = act(CREATE, row, abort(), NOW)
    assert decision.state is row and decision.commands == () and decision.events == ()
    assert decision.answer is not None and not decision.answer.accepted
    assert why in decision.answer.answer and decision.answer.state == state


def test_an_action_for_no_saga_is_refused() -> None:
    decision = act(None, None, abort("nobody"), NOW)
    assert decision.state is None and decision.commands == ()
    assert decision.answer is not None
    assert (decision.answer.accepted, decision.answer.answer) == (False, "no saga nobody")


def test_a_cancel_can_never_be_aborted_its_first_step_is_its_pivot() -> None:
    from tests.unit.test_cancel_saga import started

    row = started().state
    decision = act(CANCEL, row, abort(row.saga_id), NOW)
    assert decision.answer is not None and not decision.answer.accepted
    assert "pivot (begin_cancel)" in decision.answer.answer


def test_a_retry_re_sends_the_awaited_command_now_with_the_backoff_reset() -> None:
    row = dataclasses.replace(saga_in("REJECTING_ORDER"), attempt=5)  # waits 60 s by now
    decision = act(CREATE, row, retry(), NOW)
    (sent,) = decision.commands
    assert isinstance(sent, RejectOrder)
    assert (sent.command_id, sent.attempt) == (f"{SAGA}:reject_order", 6)  # the same command
    assert decision.state.attempt == 6
    assert decision.state.deadline == NOW + timedelta(seconds=5)  # the first wait again
    assert decision.state.state == "REJECTING_ORDER" and decision.state.reason == row.reason
    assert decision.state.entered_at == row.entered_at  # it waits in the same state
    (event,) = decision.events
    assert (event.trigger, event.operator) == ("RetrySaga", "ops-bob")
    assert event.reason == "RetrySaga by ops-bob: the order service is back"
    assert decision.answer is not None and decision.answer.accepted
    assert decision.answer.answer == "re-sent RejectOrder of reject_order (attempt 6)"


def test_a_retry_of_an_ended_saga_is_refused() -> None:
    row = saga_in("ORDER_REJECTED")
    decision = act(CREATE, row, retry(), NOW)
    assert decision.state is row and decision.commands == ()
    assert decision.answer is not None and not decision.answer.accepted


def test_a_definition_whose_step_before_the_pivot_cannot_be_undone_is_refused() -> None:
    no_release_state = dataclasses.replace(
        DEFINITION,
        states=tuple(s for s in DEFINITION.states if s.name != "RELEASING_PRODUCTS"),
        transitions=tuple(
            t for t in DEFINITION.transitions if "RELEASING_PRODUCTS" not in (t.source, t.target)
        ),
    )
    with pytest.raises(DefinitionError, match="no state runs its undo"):
        validate(no_release_state)
