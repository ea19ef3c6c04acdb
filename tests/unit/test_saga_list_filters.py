"""The filters of `/sagas` (orchestrator.engine.views): which rows they keep, how a query
is read (a bad one is a 400 naming the parameter) and what the other workers are asked."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from messaging import web as w
from messaging.durations import DurationError, parse_duration
from orchestrator.engine.views import SagaFilter, entered, saga_filter, states_of
from orchestrator.sagas import SAGAS
from tests.unit.saga_factories import T0, saga_in

STATES = states_of(SAGAS)
NAMES = [saga.name for saga in SAGAS]
NOW = T0 + timedelta(hours=1)


def waiting_since(minutes: float, state: str = "VERIFYING_PRODUCTS") -> object:
    """A saga waiting in `state` since `minutes` before NOW, re-sent a moment ago."""
    return dataclasses.replace(
        saga_in(state), entered_at=NOW - timedelta(minutes=minutes), updated_at=NOW
    )


def test_no_filter_keeps_everything() -> None:
    assert SagaFilter().keeps("CreateOrderSaga", saga_in("ORDER_APPROVED"))
    assert SagaFilter().keeps("CreateOrderSaga", saga_in("CREATING_ORDER"))


def test_state_and_saga_type_must_both_match() -> None:
    row = saga_in("VERIFYING_PRODUCTS")
    assert SagaFilter(state="VERIFYING_PRODUCTS", saga="CreateOrderSaga").keeps(
        "CreateOrderSaga", row
    )
    assert not SagaFilter(state="CREATING_ORDER").keeps("CreateOrderSaga", row)
    assert not SagaFilter(saga="CancelOrderSaga").keeps("CreateOrderSaga", row)


def test_waiting_tells_sagas_in_flight_from_ended_ones() -> None:
    assert SagaFilter(waiting=True).keeps("CreateOrderSaga", saga_in("APPROVING_ORDER"))
    assert not SagaFilter(waiting=True).keeps("CreateOrderSaga", saga_in("ORDER_REJECTED"))
    assert SagaFilter(waiting=False).keeps("CreateOrderSaga", saga_in("ORDER_REJECTED"))


def test_stuck_means_in_its_state_since_before_the_cut_off_whatever_it_re_sent() -> None:
    cut_off = NOW - timedelta(minutes=10)
    stuck = SagaFilter(entered_before=cut_off)
    assert stuck.keeps("CreateOrderSaga", waiting_since(11))  # re-sent just now: still stuck
    assert not stuck.keeps("CreateOrderSaga", waiting_since(9))
    ended = dataclasses.replace(saga_in("ORDER_APPROVED"), entered_at=NOW - timedelta(days=1))
    assert not stuck.keeps("CreateOrderSaga", ended)  # an ended saga is not stuck


def test_a_row_without_entered_at_counts_from_its_last_update() -> None:
    old = dataclasses.replace(saga_in("CREATING_ORDER"), entered_at=None)
    assert entered(old) == old.updated_at
    assert SagaFilter(entered_before=old.updated_at + timedelta(seconds=1)).keeps("x", old)
    assert not SagaFilter(entered_before=old.updated_at).keeps("x", old)


def test_a_query_becomes_a_filter_with_stuck_for_resolved_to_a_cut_off() -> None:
    query = {"state": "AUTHORIZING_PAYMENT", "saga": "CreateOrderSaga", "stuck_for": "10m"}
    chosen = saga_filter(query, STATES, NAMES, NOW)
    assert chosen == SagaFilter(
        state="AUTHORIZING_PAYMENT",
        saga="CreateOrderSaga",
        entered_before=NOW - timedelta(minutes=10),
        stuck_for="10m",
    )
    # The other workers get the cut-off, not the duration: their clocks are not asked.
    assert chosen.forwarded() == {
        "stuck_for": "",
        "state": "AUTHORIZING_PAYMENT",
        "saga": "CreateOrderSaga",
        "entered_before": w.timestamp(NOW - timedelta(minutes=10)),
    }
    again = saga_filter(chosen.forwarded(), STATES, NAMES, NOW + timedelta(minutes=5))
    assert again.entered_before == chosen.entered_before


def test_empty_parameters_are_no_filter() -> None:
    empty = {"state": "", "saga": "", "waiting": "", "stuck_for": "", "entered_before": ""}
    assert saga_filter(empty, STATES, NAMES, NOW) == SagaFilter()


def test_waiting_and_entered_before_are_read() -> None:
    chosen = saga_filter(
        {"waiting": "false", "entered_before": "2026-01-01T11:00:00Z"}, STATES, NAMES, NOW
    )
    assert chosen.waiting is False
    assert chosen.entered_before == datetime(2026, 1, 1, 11, tzinfo=UTC)
    assert chosen.as_json()["entered_before"] == "2026-01-01T11:00:00.000+00:00"


@pytest.mark.parametrize(
    ("query", "parameter", "words"),
    [
        ({"state": "BOGUS"}, "state", "unknown state 'BOGUS'"),
        ({"state": "verifying_products"}, "state", "use one of: CREATING_ORDER"),
        ({"saga": "OrderSaga"}, "saga", "unknown saga 'OrderSaga'"),
        ({"waiting": "yes"}, "waiting", "true or false"),
        ({"stuck_for": "10"}, "stuck_for", "is not a duration"),
        ({"stuck_for": "-5m"}, "stuck_for", "is not a duration"),
        ({"stuck_for": "0s"}, "stuck_for", "positive"),
        ({"entered_before": "yesterday"}, "entered_before", "not an ISO 8601 time"),
        ({"entered_before": "2026-01-01T11:00:00"}, "entered_before", "with its offset"),
        ({"stuck_for": "1m", "entered_before": "2026-01-01T11:00:00Z"}, "stuck_for", "not both"),
    ],
)
def test_a_bad_filter_is_a_400_naming_it(query: dict[str, str], parameter: str, words: str) -> None:
    with pytest.raises(w.Problem) as raised:
        saga_filter(query, STATES, NAMES, NOW)
    assert raised.value.code == 400
    assert raised.value.extra_context["parameter"] == parameter
    assert words in raised.value.detail


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("10m", 600), (" 2h ", 7200), ("1.5d", 129600)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "m", "10 min", "1e3s", "-1s", "0m", "40000d", None])
def test_not_durations(text: object) -> None:
    with pytest.raises(DurationError, match=r"--stuck-for .* is not a duration: give a positive"):
        parse_duration(text, "--stuck-for")
