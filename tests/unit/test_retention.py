"""Retention in the engine: the setting, the expiry index, ExpireSaga and the gate's
answer (pure), and what each saga type forgets (no broker)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.engine import DefinitionError, Forget, SagaType, expire, forgotten
from orchestrator.engine.retention import (
    DEFAULT_RETENTION,
    ExpiryIndex,
    RetentionError,
    configured_retention,
    parse_retention,
)
from orchestrator.sagas import cancel_order, create_order
from schemas.messages import (
    CancelSagaState,
    ExpireSaga,
    ForgetCancel,
    ForgetOrder,
    ForgetPayment,
    ForgetProducts,
    OrderForgotten,
    OrderItem,
    Outcome,
)
from tests.unit.saga_factories import ITEMS, SAGA, T0, saga_in

CREATE, CANCEL = create_order.SAGA, cancel_order.SAGA
DAY = timedelta(days=1)


# ---- the setting ----


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 7 * 86400), ("12h", 43200), ("30m", 1800), ("2s", 2), ("500ms", 0.5), (" 1.5h ", 5400)],
)
def test_a_retention_is_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_retention(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7", "d", "-1d", "0s", "7 days", "1w", "1e3s", "999999d"])
def test_a_bad_retention_is_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(RetentionError, match=r"SAGA_RETENTION=.*ms, s, m, h or d"):
        parse_retention(text)


def test_the_retention_comes_from_the_option_then_the_environment_then_7_days(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SAGA_RETENTION", raising=False)
    assert configured_retention() == DEFAULT_RETENTION == timedelta(days=7)
    monkeypatch.setenv("SAGA_RETENTION", "2s")
    assert configured_retention() == timedelta(seconds=2)
    assert configured_retention("3h") == timedelta(hours=3)
    assert configured_retention(timedelta(minutes=1)) == timedelta(minutes=1)
    monkeypatch.setenv("SAGA_RETENTION", "soon")
    with pytest.raises(RetentionError, match="SAGA_RETENTION='soon'"):
        configured_retention()
    with pytest.raises(RetentionError):
        configured_retention(timedelta(0))


def test_a_runner_with_a_bad_retention_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import app

    monkeypatch.setenv("SAGA_RETENTION", "a week")
    with pytest.raises(RetentionError, match="SAGA_RETENTION='a week'"):
        app.build(web_port=1, store="memory://")


# ---- the expiry index ----


def ended(key: str, at: datetime) -> Any:
    return replace(saga_in("ORDER_APPROVED"), saga_id=key, order_id=key, updated_at=at)


def test_a_terminal_saga_is_due_once_the_retention_passed() -> None:
    index = ExpiryIndex(timedelta(days=7))
    index.update(b"a", ended("a", T0))
    index.update(b"b", ended("b", T0 + DAY))
    index.update(b"open", saga_in("VERIFYING_PRODUCTS"))
    assert len(index) == 2  # sagas in flight are not in it
    assert index.due(T0 + 7 * DAY - timedelta(milliseconds=1)) == []
    [(key, message)] = index.due(T0 + 7 * DAY)
    assert key == b"a"
    assert message == ExpireSaga("a", ended_by=T0, requested_at=T0 + 7 * DAY)
    assert index.due(T0 + 7 * DAY + timedelta(minutes=30)) == []  # sent, not again at once
    assert [k for k, _ in index.due(T0 + 8 * DAY)] == [b"a", b"b"]  # a: sent again (1 h)


def test_a_deleted_or_rewritten_row_is_not_due() -> None:
    index = ExpiryIndex(timedelta(seconds=2))
    index.update(b"a", ended("a", T0))
    index.update(b"b", ended("b", T0))
    index.update(b"a", None)  # expired: deleted
    index.update(b"b", saga_in("CREATING_ORDER"))  # a new saga with the same id
    assert index.due(T0 + DAY) == []
    assert len(index) == 0


def test_a_short_retention_sends_again_after_the_retention() -> None:
    index = ExpiryIndex(timedelta(seconds=2))
    index.update(b"a", ended("a", T0))
    assert len(index.due(T0 + timedelta(seconds=2))) == 1
    assert index.due(T0 + timedelta(seconds=3)) == []
    assert len(index.due(T0 + timedelta(seconds=4))) == 1


def test_stale_heap_entries_are_dropped() -> None:
    index = ExpiryIndex(timedelta(seconds=2))
    for second in range(3000):  # one saga ending again and again: one live entry
        index.update(b"a", ended("a", T0 + timedelta(seconds=second)))
    index.due(T0)
    assert len(index._due) <= 2 * len(index) + 1000


def test_the_rescan_rebuilds_and_keeps_what_the_agent_wrote_meanwhile() -> None:
    index = ExpiryIndex(timedelta(seconds=2))
    index.update(b"gone", ended("gone", T0))  # from before the rebalance: no longer ours
    index.begin_rescan()
    index.found(b"a", ended("a", T0))
    index.found(b"open", saga_in("AUTHORIZING_PAYMENT"))
    index.update(b"b", ended("b", T0 + timedelta(seconds=1)))  # written during the scan
    index.found(b"b", saga_in("APPROVING_ORDER"))  # read before that write: older
    index.update(b"c", None)  # deleted during the scan
    index.found(b"c", ended("c", T0))
    index.end_rescan()
    assert set(index.ended) == {b"a", b"b"}
    assert [k for k, _ in index.due(T0 + DAY)] == [b"a", b"b"]


def test_the_rescan_of_a_big_table_gives_the_loop_back() -> None:
    from orchestrator.engine.deadlines import DeadlineWatch

    index, watch = ExpiryIndex(DAY), DeadlineWatch()

    def rows() -> Any:
        for n in range(2000):
            index.found(f"s{n}".encode(), ended(f"s{n}", T0))
            yield f"s{n}".encode(), ended(f"s{n}", T0)

    index.begin_rescan()
    asyncio.run(watch.rescan(rows()))
    index.end_rescan()
    assert len(index) == 2000 and watch.open == {}


# ---- ExpireSaga and the gate's answer (pure) ----


def expire_at(row: Any, cut_off: datetime, saga: SagaType = CREATE) -> Any:
    return expire(saga, row, ExpireSaga(row.saga_id if row else SAGA, cut_off, T0), T0)


def test_an_ended_create_saga_asks_the_order_service_first_and_stays() -> None:
    row = saga_in("ORDER_APPROVED")
    decision = expire_at(row, cut_off=row.updated_at)
    assert decision.state is row and not decision.deleted and decision.events == ()
    [ask] = decision.commands
    assert ask == ForgetOrder(SAGA, f"{SAGA}:forget_order", 1, T0, SAGA, row.updated_at)
    assert CREATE.route(ask) == ("order.commands", SAGA.encode())


def order_forgotten(row: Any, outcome: Outcome = Outcome.SUCCESS, **changes: Any) -> Any:
    fields = dict(
        saga_id=row.saga_id,
        command_id=f"{row.saga_id}:forget_order",
        attempt=1,
        outcome=outcome,
        replied_at=T0,
        order_id=row.order_id,
        ended_by=row.updated_at,
    )
    return OrderForgotten(**(fields | changes))


def test_the_order_forgotten_deletes_the_row_and_forgets_holds_and_payment() -> None:
    row = saga_in("ORDER_APPROVED")
    decision = forgotten(CREATE, row, order_forgotten(row), T0)
    assert decision.deleted and decision.state is None and decision.events == ()
    products, payment = decision.commands
    assert products == ForgetProducts(SAGA, f"{SAGA}:forget_products", 1, T0, SAGA, ITEMS)
    assert payment == ForgetPayment(SAGA, f"{SAGA}:forget_payment", 1, T0, SAGA, row.customer_id)
    assert CREATE.route(products) == ("product.commands", b"p-1")  # travels from the first
    assert CREATE.route(payment) == ("payment.commands", row.customer_id.encode())


def test_a_saga_that_never_asked_for_a_payment_forgets_none() -> None:
    row = saga_in("ORDER_REJECTED")  # products unavailable: no total
    assert [type(c) for c in forgotten(CREATE, row, order_forgotten(row), T0).commands] == [
        ForgetProducts
    ]


def test_a_request_that_broke_the_limits_is_deleted_at_once_forgetting_nothing() -> None:
    row = replace(saga_in("ORDER_REJECTED"), items=[], customer_id="")
    decision = expire_at(row, cut_off=row.updated_at)
    assert decision.deleted and decision.commands == ()


@pytest.mark.parametrize(
    "why",
    ["kept", "duplicate", "later saga", "running", "no row"],
)
def test_anything_else_changes_nothing(why: str) -> None:
    row = saga_in("ORDER_APPROVED")
    answer = order_forgotten(row)
    if why == "kept":
        answer = order_forgotten(row, Outcome.FAILURE, reason="being cancelled by c-1")
    elif why == "later saga":  # an answer about an earlier saga with the same id
        answer = order_forgotten(row, ended_by=row.updated_at - timedelta(milliseconds=1))
    elif why == "running":
        row = saga_in("APPROVING_ORDER")
    decision = forgotten(CREATE, None if why in ("duplicate", "no row") else row, answer, T0)
    assert not decision.deleted and decision.commands == ()
    assert decision.state is (None if why in ("duplicate", "no row") else row)


@pytest.mark.parametrize("state", ["CREATING_ORDER", "AUTHORIZING_PAYMENT", "RELEASING_PRODUCTS"])
def test_a_saga_in_flight_never_expires(state: str) -> None:
    row = saga_in(state)
    decision = expire_at(row, cut_off=row.updated_at + 365 * DAY)
    assert decision == type(decision)(row)


def test_a_saga_that_ended_after_the_cut_off_or_none_does_not_expire() -> None:
    row = saga_in("ORDER_APPROVED")
    assert expire_at(row, row.updated_at - timedelta(milliseconds=1)).state is row
    assert expire_at(None, row.updated_at).state is None
    assert expire(None, row, ExpireSaga(SAGA, row.updated_at, T0), T0).state is row
    # a row of another saga type is not this type's to expire
    assert expire_at(row, row.updated_at, saga=CANCEL).state is row


def cancel_row(order_id: str = SAGA, state: str = "ORDER_CANCELLED") -> CancelSagaState:
    return CancelSagaState(
        "c-1", order_id, "cus-7", [OrderItem("p-1", 2)], None, state, None, 0, None, None, 5,
        T0 - DAY, T0 - DAY,
    )  # fmt: skip


def test_an_ended_cancel_saga_is_deleted_at_once_forgetting_its_cancel_row() -> None:
    row = cancel_row()
    decision = expire_at(row, T0, saga=CANCEL)
    assert decision.deleted
    assert decision.commands == (ForgetCancel("c-1", "c-1:forget_cancel", 1, T0, SAGA),)
    assert CANCEL.route(decision.commands[0]) == ("order.commands", SAGA.encode())
    bad = cancel_row(order_id="")  # rejected at once: no participant heard of it
    assert expire_at(bad, T0, saga=CANCEL).commands == ()


# ---- declaring it ----


def test_a_forget_names_routed_participants_and_a_gate_has_its_answer() -> None:
    ok = Forget(gate=("order", ForgetOrder, lambda r, e, n: None), answer=OrderForgotten)
    replace(CREATE, forget=ok)
    with pytest.raises(DefinitionError, match="no route for participant bank"):
        replace(CREATE, forget=Forget(commands=(("bank", ForgetPayment, lambda r, e, n: None),)))
    with pytest.raises(DefinitionError, match="a gate needs its answer"):
        replace(CREATE, forget=Forget(gate=("order", ForgetOrder, lambda r, e, n: None)))
    with pytest.raises(DefinitionError, match="a gate needs its answer"):
        replace(CREATE, forget=Forget(answer=OrderForgotten))


def test_a_forget_build_of_the_wrong_type_is_a_bug_not_a_message() -> None:
    wrong = Forget(
        commands=(("order", ForgetCancel, lambda r, e, n: ForgetOrder("", "", 1, n, "", e)),)
    )
    saga = replace(CANCEL, forget=wrong)
    with pytest.raises(TypeError, match="a forget of ForgetCancel made a ForgetOrder"):
        expire_at(cancel_row(), T0, saga=saga)


def test_now_is_utc_aware() -> None:  # the cut-offs compare with rows' timestamps
    assert T0.tzinfo is UTC


def test_saga_worker_with_a_bad_retention_says_so_and_exits_78(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from click.testing import CliRunner

    from cli.worker_cmd import worker

    monkeypatch.setenv("SAGA_RETENTION", "forever")
    monkeypatch.setenv("SAGA_HOME", str(tmp_path))
    result = CliRunner().invoke(worker, ["orchestrator", "--web-port", "1"])
    assert result.exit_code == 78  # `saga up` does not restart it: only a fix helps
    assert "orchestrator: refusing to start: SAGA_RETENTION='forever'" in result.output
    assert not (tmp_path / "workers").exists() or not any((tmp_path / "workers").iterdir())


def test_saga_order_follows_a_new_saga_when_the_id_s_first_saga_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cli.orders_cmd import expired
    from schemas.messages import SagaEvent

    def ended(at: datetime) -> list[SagaEvent]:
        return [
            SagaEvent(
                SAGA, 1, at, "OrderRequested", None, "CREATING_ORDER", "c", 1, None, [], False
            ),
            SagaEvent(SAGA, 5, at, "OrderApproved", "A", "ORDER_APPROVED", None, 0, None, [], True),
        ]

    now = datetime.now(UTC)
    monkeypatch.delenv("SAGA_RETENTION", raising=False)
    assert expired(ended(now - timedelta(days=8)))
    assert not expired(ended(now - timedelta(days=6)))
    assert not expired(ended(now - timedelta(days=8))[:1])  # never ended: never expires
    monkeypatch.setenv("SAGA_RETENTION", "2s")
    assert expired(ended(now - timedelta(seconds=3)))
