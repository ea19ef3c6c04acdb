"""`saga abort`, `saga retry`, `saga list` before and after any I/O (cli/selection.py):
who acts, what is checked, which sagas a selection asks for, what answers mean; and the
commands' bad input refused before anything is contacted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from cli import selection as sel
from cli.main import cli
from cli.selection import Selection
from messaging import client
from schemas import messages as m

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
UNREACHABLE = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}


@pytest.mark.parametrize(
    ("env", "operator"),
    [
        ({"USER": "alice"}, "cli:alice"),
        ({"LOGNAME": "bob"}, "cli:bob"),
        ({"USER": "  "}, "cli"),
        ({}, "cli"),
        ({"USER": "x" * 200}, "cli"),  # would break the id limit
    ],
)
def test_the_operator_is_the_user_at_the_cli(env: dict[str, str], operator: str) -> None:
    assert sel.default_operator(env) == operator


@pytest.mark.parametrize(
    ("reason", "problem"),
    [
        ("stuck since the outage", None),
        ("", "must say why"),
        ("   ", "must say why"),
        ("x" * 1001, "1001 characters, at most 1000"),
        ("two\nlines", "control character"),
    ],
)
def test_reasons(reason: str, problem: str | None) -> None:
    found = sel.reason_problem(reason)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_a_selection_asks_the_view_for_sagas_in_flight() -> None:
    chosen = Selection(state="VERIFYING_PRODUCTS", stuck_for="10m")
    assert chosen.query(1000) == {
        "state": "VERIFYING_PRODUCTS",
        "stuck_for": "10m",
        "waiting": "true",
        "limit": "1000",
        "format": "json",
    }
    assert Selection(saga="CancelOrderSaga").query(5, waiting=None) == {
        "saga": "CancelOrderSaga",
        "limit": "5",
        "format": "json",
    }
    assert Selection().empty and not chosen.empty
    assert chosen.describe() == (
        "sagas in VERIFYING_PRODUCTS, waiting in their state for 10m or more"
    )


@pytest.mark.parametrize(
    ("saga_id", "chosen", "dry_run", "all_selected", "problem"),
    [
        ("s-1", Selection(), False, False, None),
        (None, Selection(state="S"), True, False, None),
        (None, Selection(state="S"), False, True, None),
        ("s-1", Selection(state="S"), False, False, "not both"),
        ("s-1", Selection(), False, True, "needs none"),
        ("s-1", Selection(), True, False, "saga status"),
        ("a\tb", Selection(), False, False, "SAGA_ID: the saga id contains a control"),
        (None, Selection(), False, False, "name the sagas"),
        (None, Selection(), False, True, "name the sagas"),  # never everything
        (None, Selection(state="S"), False, False, "then act with --all-selected"),
        (None, Selection(state="S"), True, True, "give one of them"),
    ],
)
def test_which_sagas_must_be_named_well_enough(
    saga_id: str | None, chosen: Selection, dry_run: bool, all_selected: bool, problem: str | None
) -> None:
    found = sel.target_problem(saga_id, chosen, dry_run, all_selected)
    assert (found is None) if problem is None else (problem in (found or "")), found


def summary(saga_id: str, state: str, entered_at: datetime | None, step: str | None = "s") -> dict:
    return {
        "saga_id": saga_id,
        "saga": "CreateOrderSaga",
        "state": state,
        "step": step,
        "attempt": 2,
        "reason": None,
        "updated_at": NOW.isoformat(),
        "entered_at": None if entered_at is None else entered_at.isoformat(),
    }


def test_a_listing_acted_on_must_be_whole() -> None:
    sagas = [summary("a", "S", NOW)]
    assert sel.listing_problem({"sagas": sagas, "matched": 1, "complete": True}) is None
    more = sel.listing_problem({"sagas": sagas, "matched": 7, "complete": True})
    assert more is not None and "7 sagas match but --limit lists 1" in more
    capped = sel.listing_problem({"sagas": sagas, "matched": 1, "complete": False})
    assert capped is not None and "cap" in capped


def test_the_list_shows_the_longest_waiting_first() -> None:
    rows = sel.list_rows(
        [
            summary("recent", "VERIFYING_PRODUCTS", NOW - timedelta(seconds=12)),
            summary("old", "CREATING_ORDER", NOW - timedelta(hours=3, minutes=2)),
            summary("ended", "ORDER_APPROVED", None, step=None),  # updated_at stands in
        ],
        NOW,
    )
    assert [row[0] for row in rows] == ["old", "recent", "ended"]
    assert rows[0][3:6] == ("s", "2", "3h02m")
    assert rows[2][3:6] == ("-", "-", "0s")
    lines = sel.columns([sel.LIST_HEADERS, *rows])
    assert lines[0].startswith("saga    type") and lines[1].startswith("old     CreateOrderSaga")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59, "59s"),
        (61, "1m01s"),
        (3600 * 5 + 60, "5h01m"),
        (86400 * 2 + 3600 * 4, "2d04h"),
    ],
)
def test_durations_read_at_a_glance(seconds: int, text: str) -> None:
    assert sel.duration_text(timedelta(seconds=seconds)) == text


def answered(accepted: bool, saga_id: str = "s-1") -> m.SagaActionAnswered:
    why = "aborted: VERIFYING_PRODUCTS -> RELEASING_PRODUCTS, compensating"
    return m.SagaActionAnswered(
        saga_id, "a-1", "AbortSaga", accepted, why if accepted else "no saga s-1", None, "o", NOW
    )


def test_answers_make_the_exit_code() -> None:
    assert sel.result_line(answered(True)).startswith("s-1: done: aborted: VERIFYING")
    assert sel.result_line(answered(False)) == "s-1: refused: no saga s-1"
    assert sel.exit_code([answered(True)], 0) == 0
    assert sel.exit_code([answered(True), answered(False)], 0) == sel.EXIT_REFUSED == 3
    assert sel.exit_code([answered(False)], 1) == sel.EXIT_NO_ANSWER == 4


def test_an_action_gets_a_new_id_each_time() -> None:
    first = client.operator_action(m.RetrySaga, "s-1", "cli:alice", "re-send now")
    second = client.operator_action(m.RetrySaga, "s-1", "cli:alice", "re-send now")
    assert isinstance(first, m.RetrySaga) and first.action_id != second.action_id
    assert (first.saga_id, first.operator, first.reason) == ("s-1", "cli:alice", "re-send now")


def test_a_faust_workers_url_is_read_from_its_group_membership() -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

    user_data = b'{"assignment": {}, "url": "http://10.0.0.5:6066", "topic_groups": {}}'
    metadata = ConsumerProtocolMemberMetadata(4, ["saga.replies"], user_data).encode()
    assert client.member_url(metadata) == "http://10.0.0.5:6066"
    other = ConsumerProtocolMemberMetadata(0, ["t"], b"not json").encode()
    assert client.member_url(other) is None
    assert client.member_url(b"\x00") is None


# ---- the commands, refusing bad input before contacting anything ----


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["abort", "s-1"], "Missing option '--reason'"),
        (["abort", "s-1", "--reason", " "], "--reason: must say why"),
        (["abort", "s-1", "--reason", "x" * 1001], "1001 characters"),
        (["abort", "s-1", "--reason", "r", "--operator", ""], "the operator is empty"),
        (["abort", "s-1", "--reason", "r", "--state", "VERIFYING_PRODUCTS"], "not both"),
        (["abort", "--reason", "r"], "name the sagas"),
        (["abort", "--reason", "r", "--all-selected"], "name the sagas"),
        (["abort", "--reason", "r", "--state", "VERIFYING_PRODUCTS"], "--dry-run, then act"),
        (["abort", "--reason", "r", "--state", "verifying"], "not a state of any saga"),
        (["abort", "--reason", "r", "--saga", "Nope", "--dry-run"], "not a saga type"),
        (["abort", "--reason", "r", "--stuck-for", "10", "--dry-run"], "'10' is not a duration"),
        (["abort", "x" * 129, "--reason", "r"], "129 characters, at most 128"),
        (["abort", "s-1", "--reason", "r", "--timeout", "0"], "--timeout"),
        (["retry", "s-1", "--dry-run"], "saga status SAGA_ID"),
        (["retry", "--stuck-for", "soon", "--all-selected"], "'soon' is not a duration"),
        (["retry", "--state", "BOGUS", "--all-selected"], "'BOGUS' is not a state"),
        (["list", "--stuck-for", "-1m"], "is not a duration"),
        (["list", "--state", "order_approved"], "not a state of any saga"),
        (["list", "--limit", "0"], "--limit"),
        (["dead-letters", "replay"], "--reason, --topic, --offset, or --all"),
        (["dead-letters", "replay", "--topic", "nope"], "'nope' is not a topic of topics.yaml"),
        (["dead-letters", "list", "--offset", "-1"], "--offset"),
        (["dead-letters", "replay", "--all", "--operator", "a\x01"], "control character"),
    ],
)
def test_bad_input_is_a_usage_error_before_anything_is_contacted(
    args: list[str], words: str
) -> None:
    result = CliRunner().invoke(cli, args, env=UNREACHABLE)
    assert result.exit_code == 2, result.output
    assert words in result.output, result.output
    assert "cannot reach Kafka" not in result.output
