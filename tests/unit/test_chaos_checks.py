"""The chaos run's plan and invariant checks (chaos.plan, chaos.invariants), no broker.

A consistent final state is built from a plan; the checks must pass on it and name each
kind of damage done to it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from chaos.invariants import DeadLetter, Observed, check, distinct_events, split_rows
from chaos.plan import (
    INPUT_TOPICS,
    MUST_REJECT,
    BadKind,
    BrokerTarget,
    CancelIntent,
    Intent,
    Plan,
    make_plan,
)
from chaos.workers import Scheduler
from orchestrator.app import INPUTS as ORCHESTRATOR_INPUTS
from schemas import codec
from schemas import messages as m
from schemas.limits import merged_items

T = datetime(2024, 1, 1, tzinfo=UTC)
WORKERS = ["orchestrator", "order", "product", "payment"]


def plan(orders: int = 60, seed: int = 3, cancel_share: float = 0.2, brokers: int = 1) -> Plan:
    return make_plan(
        "test1234",
        orders,
        seed=seed,
        workers=WORKERS,
        kills=3,
        chaos_seconds=100,
        broker_restart=True,
        rate=40.0,
        cancel_share=cancel_share,
        brokers=brokers,
    )


# ---- the plan ----


def order_sends(p: Plan) -> list[m.OrderRequested]:
    return [s.request for s in p.sends if isinstance(s.request, m.OrderRequested)]


def test_plan_sends_every_order_and_some_duplicates_after_their_original() -> None:
    p = plan(200)
    orders = order_sends(p)
    assert len(orders) == 200
    assert len(p.duplicates) == 10  # 5%
    assert len({o.request.order_id for o in p.orders}) == len(p.orders) == 190
    first_seen: dict[str, int] = {}
    for position, request in enumerate(orders):
        first_seen.setdefault(request.order_id, position)
        assert orders[first_seen[request.order_id]] == p.by_id()[request.order_id].request
    assert {o.intent for o in p.orders} == set(Intent)


def test_orders_are_placed_at_the_rate_and_every_request_in_time_order() -> None:
    p = plan(200)
    moments = [s.at for s in p.sends if isinstance(s.request, m.OrderRequested)]
    assert moments == [n / 40.0 for n in range(200)]
    assert [s.at for s in p.sends] == sorted(s.at for s in p.sends)
    assert len(p.sends) == 200 + len(p.cancels)
    assert {s.saga_id for s in p.sends} == set(p.saga_ids())


def test_plan_is_deterministic_per_seed() -> None:
    assert plan(seed=5).sends == plan(seed=5).sends
    assert plan(seed=5).sends != plan(seed=6).sends


def test_cancels_target_what_their_intent_says_at_the_planned_moment() -> None:
    p = plan(400)
    assert len(p.cancels) == round(0.2 * len(p.orders))
    assert {c.intent for c in p.cancels} == set(CancelIntent)
    assert len({c.request.cancel_id for c in p.cancels}) == len(p.cancels)
    orders = p.by_id()
    placed: dict[str, float] = {}
    waits_for: dict[str, str | None] = {}
    for send in p.sends:
        placed.setdefault(send.saga_id, send.at)
        waits_for[send.saga_id] = send.after
    firsts: dict[str, tuple[float, str]] = {}  # order -> its first cancel's moment and id
    for cancel in sorted(p.cancels, key=lambda c: placed[c.request.cancel_id]):
        cancel_id, target = cancel.request.cancel_id, cancel.request.order_id
        at, after = placed[cancel_id], waits_for[cancel_id]
        assert cancel_id.startswith("chaos-test1234-c")
        if cancel.intent is CancelIntent.UNKNOWN:
            assert target not in orders and target.startswith("chaos-test1234-")
            assert after is None
            continue
        since = at - placed[target]
        if cancel.intent is CancelIntent.APPROVED:
            assert orders[target].intent is Intent.APPROVE and 5 <= since <= 25
            assert target not in firsts  # one first cancel per order
            assert after == target  # placed once the order's saga ended
            firsts[target] = (at, cancel_id)
        elif cancel.intent is CancelIntent.AGAIN:
            first_at, first_id = firsts[target]
            assert 1 <= at - first_at <= 10 and after == first_id  # after the first ended
        elif cancel.intent is CancelIntent.IN_FLIGHT:
            assert 0 <= since <= 0.5 and after is None
        else:
            assert orders[target].intent in MUST_REJECT and 5 <= since <= 25
            assert after == target


def test_no_cancels_when_their_share_is_zero() -> None:
    p = plan(200, cancel_share=0.0)
    assert p.cancels == [] and len(p.sends) == 200


def test_a_cluster_loses_its_busiest_replies_leader_then_its_controller() -> None:
    single, cluster = plan(brokers=1), plan(brokers=3)
    assert single.node_kills == [] and single.broker_restart_at is not None
    assert cluster.broker_restart_at is None
    leader, controller = cluster.node_kills
    assert (leader.target, controller.target) == (
        BrokerTarget.BUSIEST_LEADER,
        BrokerTarget.CONTROLLER,
    )
    assert 20 <= leader.at <= 35 and 55 <= controller.at <= 70
    assert all(3 <= kill.down <= 8 for kill in cluster.node_kills)
    quiet = make_plan(
        "test1234", 60, seed=3, workers=WORKERS, kills=3, chaos_seconds=100,
        broker_restart=False, brokers=3,
    )  # fmt: skip
    assert quiet.node_kills == []


def test_kills_fall_in_the_window_spread_over_it() -> None:
    p = plan()
    for times in p.kill_times.values():
        assert len(times) == 3 and times == sorted(times)
        assert all(10 <= t <= 90 for t in times)
    assert p.broker_restart_at is not None and 30 <= p.broker_restart_at <= 60


def test_bad_records_cover_every_kind_and_topic_and_fail_as_announced() -> None:
    p = plan(2000)
    kinds = Counter(b.kind for b in p.bad_records)
    assert set(kinds) == set(BadKind)
    assert {b.topic for b in p.bad_records} == set(INPUT_TOPICS)
    assert len({b.key for b in p.bad_records}) == len(p.bad_records)
    for bad in p.bad_records:
        if bad.kind is BadKind.KEY_MISMATCH:
            message = codec.decode(bad.value)
            assert bad.key != str(getattr(message, "saga_id", "")).encode()
        elif bad.kind is BadKind.WRONG_TYPE:
            assert type(codec.decode(bad.value)) not in ORCHESTRATOR_INPUTS
        else:
            with pytest.raises(codec.MessageDecodeError) as caught:
                codec.decode(bad.value)
            assert caught.value.reason == bad.reason


# ---- a consistent final state ----


def outcome_of(intent: Intent) -> str:
    return "ORDER_APPROVED" if intent is Intent.APPROVE else "ORDER_REJECTED"


def saga_events(saga_id: str, outcome: str) -> list[m.SagaEvent]:
    states = ["CREATING_ORDER", "VERIFYING_PRODUCTS", "REJECTING_ORDER", outcome]
    if outcome == "ORDER_APPROVED":
        states = ["CREATING_ORDER", "VERIFYING_PRODUCTS", "AUTHORIZING_PAYMENT", outcome]
    return [
        m.SagaEvent(saga_id, n, T, "X", None, state, None, 1, None, [], state == outcome)
        for n, state in enumerate(states, 1)
    ]


CANCEL_PATH = ["BEGINNING_CANCEL", "REFUNDING_PAYMENT", "RETURNING_PRODUCTS"]
CANCEL_PATH += ["CONFIRMING_CANCEL", "ORDER_CANCELLED"]


def cancel_events(saga_id: str, outcome: str, reason: str | None = None) -> list[m.SagaEvent]:
    states = CANCEL_PATH if outcome == "ORDER_CANCELLED" else ["BEGINNING_CANCEL", outcome]
    return [
        m.SagaEvent(
            saga_id,
            n,
            T,
            "X",
            None,
            state,
            None,
            1,
            reason if state == outcome else None,
            [],
            state == outcome,
            saga="CancelOrderSaga",
        )
        for n, state in enumerate(states, 1)
    ]


REFUSALS = {
    CancelIntent.AGAIN: "already cancelled",
    CancelIntent.IN_FLIGHT: "not approved yet",
    CancelIntent.REJECTED: "order rejected",
    CancelIntent.UNKNOWN: "unknown order",
}


def cancel_outcomes(p: Plan) -> dict[str, tuple[str, str | None]]:
    """Cancel id -> (outcome, refusal) in a correct run where every APPROVED cancel came
    after its order was approved and every IN_FLIGHT one before."""
    return {
        c.request.cancel_id: ("ORDER_CANCELLED", None)
        if c.intent is CancelIntent.APPROVED
        else ("CANCEL_REJECTED", REFUSALS[c.intent])
        for c in p.cancels
    }


def consistent(p: Plan) -> Observed:
    """What a correct run leaves behind: APPROVE orders approved, all others rejected;
    each APPROVED cancel cancelled its order, every other cancel was refused."""
    observed = Observed({}, {}, {}, {}, {}, [])
    sold: Counter[str] = Counter()
    returned: Counter[str] = Counter()
    outcomes = cancel_outcomes(p)
    cancelled_by = {
        c.request.order_id: c.request.cancel_id
        for c in p.cancels
        if outcomes[c.request.cancel_id][0] == "ORDER_CANCELLED"
    }
    for cancel in p.cancels:
        c = cancel.request
        outcome, refusal = outcomes[c.cancel_id]
        reason = None if refusal is None else f"cancel refused: {refusal}"
        observed.events[c.cancel_id] = cancel_events(c.cancel_id, outcome, reason)
        observed.sagas[c.cancel_id] = m.CancelSagaState(
            c.cancel_id, c.order_id, "", [], None, outcome, None, 1, None, reason, 2, T, T
        )
        status = "CONFIRMED" if refusal is None else "REFUSED"
        row = m.OrderCancel(c.cancel_id, status, refusal, 0, 1 if refusal is None else -1)
        observed.cancels.setdefault(c.order_id, {})[c.cancel_id] = row
    for order in p.orders:
        r = order.request
        outcome = outcome_of(order.intent)
        approved = outcome == "ORDER_APPROVED"
        cancelled = r.order_id in cancelled_by
        observed.events[r.order_id] = saga_events(r.order_id, outcome)
        observed.sagas[r.order_id] = m.SagaState(
            r.order_id, r.order_id, r.customer_id, r.items, outcome, None, 0, None,
            None, None, 4, T, T,
        )  # fmt: skip
        status = ("CANCELLED" if cancelled else "APPROVED") if approved else "REJECTED"
        observed.orders[r.order_id] = m.OrderRow(
            r.order_id, r.customer_id, r.items, status, None, T, cancelled_by.get(r.order_id)
        )
        bought = {i.product_id: i.quantity for i in merged_items(r.items)}
        for product, quantity in bought.items():
            status = ("RETURNED" if cancelled else "SOLD") if approved else "RELEASED"
            hold = m.StockHold(r.order_id, product, quantity, status, 0, 1, 2 if cancelled else -1)
            observed.holds.setdefault(product, {})[r.order_id] = hold
        if approved:
            sold.update(bought)
            if cancelled:
                returned.update(bought)
            status = "REFUNDED" if cancelled else "AUTHORIZED"
            payment = m.Payment(r.order_id, m.Money(order.total, "EUR"), status)
            observed.payments.setdefault(r.customer_id, {})[r.order_id] = payment
    for restock in p.catalog.restocks:
        product, quantity = restock.product_id, restock.quantity
        available = quantity - sold[product] + returned[product]
        observed.stock[product] = m.StockRow(
            product, available, 0, sold[product], quantity, restock.unit_price,
            returned=returned[product],
        )  # fmt: skip
    for top_up in p.catalog.top_ups:
        mine = observed.payments.get(top_up.customer_id, {}).values()
        spent = sum((x.amount.amount for x in mine if x.status == "AUTHORIZED"), Decimal("0.00"))
        observed.accounts[top_up.customer_id] = m.Account(
            top_up.customer_id,
            m.Money(top_up.amount.amount - spent, "EUR"),
            top_up.amount,
            m.Money(spent, "EUR"),
        )
    observed.dead_letters = [
        DeadLetter(b.key, b.value, {"error.reason": b.reason, "source.topic": b.topic})
        for b in p.bad_records
    ]
    return observed


def checks_failed(p: Plan, observed: Observed) -> set[str]:
    return {v.check for v in check(p, observed).violations}


def first(p: Plan, intent: Intent) -> str:
    return next(o.request.order_id for o in p.orders if o.intent is intent)


def test_a_consistent_state_passes() -> None:
    p = plan()
    findings = check(p, consistent(p))
    assert findings.passed, findings.violations
    assert findings.count("ORDER_APPROVED") == sum(o.intent is Intent.APPROVE for o in p.orders)
    assert findings.dead_letters_matched == len(p.bad_records)


def test_a_repeated_identical_event_is_at_least_once_not_a_violation() -> None:
    p = plan()
    observed = consistent(p)
    saga = first(p, Intent.APPROVE)
    observed.events[saga].append(replace(observed.events[saga][1], at=datetime.now(UTC)))
    findings = check(p, observed)
    assert findings.passed and findings.repeated_events == 1


def test_two_terminal_states_for_one_saga_are_found() -> None:
    p = plan()
    observed = consistent(p)
    saga = first(p, Intent.APPROVE)
    last = observed.events[saga][-1]
    observed.events[saga].append(replace(last, sequence=5, to_state="ORDER_REJECTED"))
    assert "terminal-twice" in checks_failed(p, observed)


def test_a_changed_event_under_one_sequence_is_a_fork() -> None:
    p = plan()
    observed = consistent(p)
    saga = first(p, Intent.NO_FUNDS)
    observed.events[saga].append(replace(observed.events[saga][2], to_state="RELEASING_PRODUCTS"))
    assert distinct_events(observed.events[saga])[2] == [3]
    assert "forked" in checks_failed(p, observed)


def test_a_lost_event_is_a_gap_and_a_lost_end_is_not_terminal() -> None:
    p = plan()
    observed = consistent(p)
    gap, open_ = first(p, Intent.APPROVE), first(p, Intent.OUT_OF_STOCK)
    del observed.events[gap][1]
    del observed.events[open_][-1]
    assert {"event-gap", "not-terminal"} <= checks_failed(p, observed)


def test_an_unapprovable_order_approved_is_found_with_its_money_and_stock() -> None:
    p = plan()
    observed = consistent(p)
    saga = first(p, Intent.NO_FUNDS)
    observed.events[saga][-1] = replace(observed.events[saga][-1], to_state="ORDER_APPROVED")
    assert {"intent", "saga-row", "order-row", "approved-stock", "approved-money", "stock"} <= (
        checks_failed(p, observed)
    )


def test_an_approvable_order_rejected_by_a_deadline_is_counted_not_failed() -> None:
    p = plan()
    observed = consistent(p)
    saga = first(p, Intent.APPROVE)
    order = p.by_id()[saga]
    rejected = saga_events(saga, "ORDER_REJECTED")
    rejected[-1] = replace(rejected[-1], reason="products not verified in time")
    observed.events[saga] = rejected
    observed.sagas[saga] = replace(observed.sagas[saga], state="ORDER_REJECTED")
    observed.orders[saga] = replace(observed.orders[saga], status="REJECTED")
    customer = order.request.customer_id
    account = observed.accounts[customer]
    observed.accounts[customer] = replace(
        account,
        balance=m.Money(account.balance.amount + order.total, "EUR"),
        captured_archived=m.Money(account.captured_archived.amount - order.total, "EUR"),
    )
    del observed.payments[customer][saga]
    for item in merged_items(order.request.items):
        row = observed.stock[item.product_id]
        observed.stock[item.product_id] = replace(
            row, available=row.available + item.quantity, sold=row.sold - item.quantity
        )
        hold = observed.holds[item.product_id][saga]
        observed.holds[item.product_id][saga] = replace(hold, status="RELEASED")
    findings = check(p, observed)
    assert findings.passed, findings.violations
    assert findings.deadline_rejections == 1


def test_stock_still_reserved_or_money_held_by_a_rejected_order_is_found() -> None:
    p = plan()
    observed = consistent(p)
    saga = first(p, Intent.OUT_OF_STOCK)
    order = p.by_id()[saga]
    product = order.request.items[0].product_id
    row = observed.stock[product]
    observed.stock[product] = replace(row, available=row.available - 1, reserved=1)
    observed.holds[product][saga] = m.StockHold(saga, product, 1, "HELD", 0, -1)
    customer = order.request.customer_id
    account = observed.accounts[customer]
    held = m.Payment(saga, m.Money(order.total, "EUR"), "AUTHORIZED")
    observed.payments.setdefault(customer, {})[saga] = held
    observed.accounts[customer] = replace(
        account,
        balance=m.Money(account.balance.amount - order.total, "EUR"),
        captured_archived=m.Money(account.captured_archived.amount + order.total, "EUR"),
    )
    assert {"stock", "rejected-stock", "rejected-money", "money"} <= checks_failed(p, observed)


def test_a_sale_recorded_twice_or_a_hold_that_disagrees_is_found() -> None:
    p = plan()
    observed = consistent(p)
    saga = first(p, Intent.APPROVE)
    item = merged_items(p.by_id()[saga].request.items)[0]
    hold = observed.holds[item.product_id][saga]
    observed.holds[item.product_id][saga] = replace(hold, quantity=hold.quantity + 1)
    assert checks_failed(p, observed) == {"approved-stock", "stock"}


def test_owned_rows_are_told_apart_by_their_keys() -> None:
    own, owned = split_rows(
        {"p1": "row", "p1\x00hold\x00s1": "hold", "c1\x00payment\x00s2": "payment"}
    )
    assert own == {"p1": "row"}
    assert owned == {"hold": {"p1": {"s1": "hold"}}, "payment": {"c1": {"s2": "payment"}}}


def test_a_duplicate_request_that_changed_the_saga_is_found() -> None:
    p = plan()
    observed = consistent(p)
    saga = first(p, Intent.APPROVE)
    observed.sagas[saga] = replace(observed.sagas[saga], customer_id="someone else")
    assert checks_failed(p, observed) == {"saga-row"}


def test_a_saga_nobody_ordered_is_a_phantom() -> None:
    p = plan()
    observed = consistent(p)
    observed.events["chaos-test1234-bad3"] = saga_events("chaos-test1234-bad3", "ORDER_REJECTED")
    assert checks_failed(p, observed) == {"phantom-saga"}


def test_dead_letters_missing_unexpected_or_with_the_wrong_reason_are_found() -> None:
    p = plan()
    observed = consistent(p)
    first_letter = observed.dead_letters[0]
    observed.dead_letters = [
        replace(first_letter, headers={**first_letter.headers, "error.reason": "other"}),
        *observed.dead_letters[2:],
        DeadLetter(b"k", b"v", {"error.reason": "not-avro", "source.topic": "order.commands"}),
        observed.dead_letters[3],  # the same record again: a replay, not a violation
    ]
    findings = check(p, observed)
    assert findings.dead_letters_missing == 1
    assert findings.dead_letters_unexpected == 1
    assert findings.dead_letters_repeated == 1
    details = [v.detail for v in findings.violations if v.check == "dead-letters"]
    assert len(details) == 3 and any("want" in d for d in details)


# ---- cancels ----


def first_cancel(p: Plan, intent: CancelIntent) -> tuple[str, str]:
    """(cancel id, order id) of the plan's first cancel with this intent."""
    cancel = next(c for c in p.cancels if c.intent is intent)
    return cancel.request.cancel_id, cancel.request.order_id


def test_cancels_are_counted_by_outcome_and_reason() -> None:
    p = plan(200)
    findings = check(p, consistent(p))
    assert findings.passed, findings.violations
    approved = sum(c.intent is CancelIntent.APPROVED for c in p.cancels)
    assert findings.count("ORDER_CANCELLED") == len(findings.cancelled_by) == approved
    assert findings.count("CANCEL_REJECTED") == len(p.cancels) - approved
    assert set(findings.cancel_reasons) == set(REFUSALS.values())


def test_a_cancelled_order_still_holding_its_money_or_stock_is_found() -> None:
    p = plan()
    observed = consistent(p)
    _cancel, order_id = first_cancel(p, CancelIntent.APPROVED)
    order = p.by_id()[order_id]
    customer = order.request.customer_id
    payment = observed.payments[customer][order_id]
    observed.payments[customer][order_id] = replace(payment, status="AUTHORIZED")
    assert checks_failed(p, observed) == {"approved-money", "money"}
    observed = consistent(p)
    item = merged_items(order.request.items)[0]
    hold = observed.holds[item.product_id][order_id]
    observed.holds[item.product_id][order_id] = replace(hold, status="SOLD", return_offset=-1)
    assert checks_failed(p, observed) == {"approved-stock", "stock"}


def test_a_refused_cancel_that_touched_its_order_is_found() -> None:
    p = plan()
    observed = consistent(p)
    cancel_id, order_id = first_cancel(p, CancelIntent.AGAIN)
    observed.orders[order_id] = replace(observed.orders[order_id], cancel_saga=cancel_id)
    assert checks_failed(p, observed) == {"order-row"}


def test_an_order_cancelled_twice_or_never_placed_is_found() -> None:
    p = plan()
    observed = consistent(p)
    again, _order_id = first_cancel(p, CancelIntent.AGAIN)
    observed.events[again] = cancel_events(again, "ORDER_CANCELLED")
    observed.sagas[again] = replace(observed.sagas[again], state="ORDER_CANCELLED")
    assert "cancel" in checks_failed(p, observed)
    observed = consistent(p)
    unknown, _nobody = first_cancel(p, CancelIntent.UNKNOWN)
    observed.events[unknown] = cancel_events(unknown, "ORDER_CANCELLED")
    observed.sagas[unknown] = replace(observed.sagas[unknown], state="ORDER_CANCELLED")
    assert checks_failed(p, observed) == {"cancel"}


def test_a_refusal_whose_reason_is_false_at_the_end_is_found() -> None:
    p = plan()
    cancelled = {c.request.order_id for c in p.cancels if c.intent is CancelIntent.APPROVED}
    in_flight = next(
        c.request
        for c in p.cancels
        if c.intent is CancelIntent.IN_FLIGHT and c.request.order_id not in cancelled
    )
    unknown = next(c.request for c in p.cancels if c.intent is CancelIntent.UNKNOWN)
    for request, reason in (
        (in_flight, "already cancelled"),  # nobody cancelled it
        (unknown, "not approved yet"),  # no order of that id was placed
        (in_flight, "being cancelled by someone"),  # not a cancel of the order
        (in_flight, f"being cancelled by {in_flight.cancel_id}"),  # itself
    ):
        observed = consistent(p)
        events = cancel_events(request.cancel_id, "CANCEL_REJECTED", f"cancel refused: {reason}")
        observed.events[request.cancel_id] = events
        assert checks_failed(p, observed) == {"cancel"}, reason


def test_a_cancel_rejected_by_its_deadline_or_not_approved_yet_passes() -> None:
    p = plan()
    observed = consistent(p)
    cancel_id, _order = first_cancel(p, CancelIntent.AGAIN)
    reason = "order not held for cancel in time"
    observed.events[cancel_id] = cancel_events(cancel_id, "CANCEL_REJECTED", reason)
    findings = check(p, observed)
    assert findings.passed, findings.violations
    assert findings.cancel_reasons[reason] == 1


def test_a_cancel_that_never_ends_is_not_terminal() -> None:
    p = plan()
    observed = consistent(p)
    cancel_id, _order = first_cancel(p, CancelIntent.REJECTED)
    del observed.events[cancel_id][-1]
    assert checks_failed(p, observed) == {"not-terminal"}


# ---- the schedule ----


def test_scheduled_actions_run_when_due_in_time_order() -> None:
    scheduler = Scheduler()
    ran: list[str] = []
    scheduler.at(0.0, lambda: ran.append("first"))
    scheduler.at(0.0, lambda: ran.append("second"))  # same moment: in scheduling order
    scheduler.at(-1.0, lambda: ran.append("earliest"))
    scheduler.at(3600.0, lambda: ran.append("much later"))
    scheduler.run_due()
    assert ran == ["earliest", "first", "second"]
    assert len(scheduler) == 1
