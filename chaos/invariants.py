"""Checks of a finished chaos run: the final tables, saga.events and saga.dead-letters
against the plan. Pure: `chaos.run` reads the topics into `Observed`.

What must hold (DESIGN §2, §4, §5; README, CancelOrderSaga), each check named as it
appears in the report:
  not-terminal       every saga ends: an order in ORDER_APPROVED or ORDER_REJECTED, a
                     cancel in ORDER_CANCELLED or CANCEL_REJECTED ...
  terminal-twice     ... exactly once: one terminal event, one terminal state
  forked             re-processing may repeat an event (same saga and sequence), never
                     change it: two events with one sequence must say the same
  event-gap          sequences run 1..last: no transition went unreported
  saga-row           the sagas table agrees with the events, and holds the first request
                     (a duplicate order id with other content must not change the saga)
  phantom-saga       nothing but the planned orders and cancels started a saga
  order-row          the Order Service's row says APPROVED / REJECTED like the saga, or
                     CANCELLED by the cancel that cancelled it; its cancel rows agree
                     with it (participants.order.logic.order_invariant_violations)
  intent             an order that cannot be approved (no stock, no money) is rejected;
                     an approvable one is approved unless a deadline rejected it
  cancel             a cancel of an order nobody placed, or of a rejected order, is
                     rejected; a cancelled order was approved, and cancelled once; a
                     refusal's reason is true at the end (a rejected order, another
                     cancel that holds or cancelled it, an unknown order)
  approved-stock     an approved order's hold of each product is SOLD, for the quantity
                     ordered; a cancelled order's RETURNED
  rejected-stock     a rejected order holds nothing (no hold HELD or SOLD)
  stock              per product: row invariants (available + reserved + sold ==
                     restocked + returned; its holds agree with its counters), nothing
                     reserved once every saga ended, restocked == seeded, sold == what
                     approved orders bought, returned == what cancelled orders bought
  approved-money     an approved order's payment is AUTHORIZED for its total; a cancelled
                     order's REFUNDED
  rejected-money     a rejected order holds no money (no AUTHORIZED payment)
  money              per customer: row invariants (balance + captured - refunded ==
                     topped up, its payments agree), topped up == seeded, captured ==
                     totals of its approved orders not cancelled
  dead-letters       exactly the injected bad records, each with its error.reason
An order whose cancels were all refused is checked as any approved order: untouched.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from chaos.plan import (
    MUST_REJECT,
    BadRecord,
    CancelIntent,
    Intent,
    Plan,
    PlannedCancel,
    PlannedOrder,
)
from orchestrator.engine import DEADLINE
from orchestrator.sagas.cancel_order import CANCEL_REJECTED, ORDER_CANCELLED
from orchestrator.sagas.cancel_order import DEFINITION as CANCEL_ORDER_SAGA
from orchestrator.sagas.create_order import DEFINITION as CREATE_ORDER_SAGA
from orchestrator.sagas.create_order import ORDER_APPROVED, ORDER_REJECTED
from participants.order.logic import (
    ALREADY_CANCELLED,
    APPROVED,
    CANCELLED,
    REJECTED,
    UNKNOWN_ORDER,
    order_invariant_violations,
)
from participants.order.logic import ORDER_REJECTED as REFUSED_ORDER_REJECTED
from participants.payment.logic import AUTHORIZED, REFUNDED, account_invariant_violations
from participants.product.logic import HELD, RETURNED, SOLD, stock_invariant_violations
from schemas import messages as m
from schemas.limits import merged_items

DEADLINE_REASONS = frozenset(
    t.reason for t in CREATE_ORDER_SAGA.transitions if t.trigger is DEADLINE and t.reason
)
CANCEL_DEADLINE_REASONS = frozenset(
    t.reason for t in CANCEL_ORDER_SAGA.transitions if t.trigger is DEADLINE and t.reason
)
REFUSED = "cancel refused: "  # how a cancel rejected by the Order Service gives its reason
BEING_CANCELLED = "being cancelled by "


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


@dataclass
class Observed:
    """The final state of a run, keyed by plain string ids."""

    sagas: dict[str, m.SagaState | m.CancelSagaState]
    orders: dict[str, m.OrderRow]
    stock: dict[str, m.StockRow]
    accounts: dict[str, m.Account]
    events: dict[str, list[m.SagaEvent]]  # as read: re-emitted events included
    dead_letters: list[DeadLetter]
    holds: dict[str, dict[str, m.StockHold]] = field(default_factory=dict)  # product, saga
    payments: dict[str, dict[str, m.Payment]] = field(default_factory=dict)  # customer, saga
    cancels: dict[str, dict[str, m.OrderCancel]] = field(default_factory=dict)  # order, saga


Owned = dict[str, dict[str, dict[str, object]]]  # kind -> owner -> id -> row


def split_rows(rows: dict[str, object]) -> tuple[dict[str, object], Owned]:
    """A table's rows read by key: (the rows of their own, {kind: {owner: {id: row}}}).

    Owned rows (a product's holds, a customer's payments) have keys `owner NUL kind NUL
    id` (schemas.limits.row_key)."""
    own: dict[str, object] = {}
    owned: Owned = defaultdict(lambda: defaultdict(dict))
    for key, row in rows.items():
        owner, sep, rest = key.partition("\x00")
        if sep:
            kind, _, item = rest.partition("\x00")
            owned[kind][owner][item] = row
        else:
            own[key] = row
    return own, {kind: dict(by_owner) for kind, by_owner in owned.items()}


@dataclass(frozen=True)
class Violation:
    check: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.subject}: {self.detail}"


@dataclass
class Findings:
    outcomes: dict[str, str] = field(default_factory=dict)  # saga id -> terminal state
    violations: list[Violation] = field(default_factory=list)
    repeated_events: int = 0  # identical events re-emitted after a crash (at-least-once)
    deadline_rejections: int = 0  # approvable orders a deadline rejected
    cancelled_by: dict[str, str] = field(default_factory=dict)  # order id -> its cancel
    cancel_reasons: Counter[str] = field(default_factory=Counter)  # why cancels were rejected
    dead_letters_matched: int = 0  # injected records found (each counted once)
    dead_letters_repeated: int = 0  # the same bad record dead-lettered again on replay
    dead_letters_unexpected: int = 0
    dead_letters_missing: int = 0

    @property
    def passed(self) -> bool:
        return not self.violations

    def count(self, state: str) -> int:
        return sum(1 for outcome in self.outcomes.values() if outcome == state)


def check(plan: Plan, observed: Observed) -> Findings:
    findings = Findings()
    for cancel in plan.cancels:  # first: an order's expected row depends on its cancels
        _check_cancel_saga(cancel, observed, findings)
    for order in plan.orders:
        _check_saga(order, observed, findings)
    _check_cancels(plan, observed, findings)
    _check_phantoms(plan, observed, findings)
    _check_stock(plan, observed, findings)
    _check_money(plan, observed, findings)
    _check_dead_letters(plan.bad_records, observed.dead_letters, findings)
    return findings


# ---- sagas ----


def _event_identity(event: m.SagaEvent) -> tuple[object, ...]:
    """What a re-emitted event must repeat (its time and deadline may differ)."""
    return (event.from_state, event.to_state, event.trigger, event.step, event.terminal)


def distinct_events(
    events: Iterable[m.SagaEvent],
) -> tuple[list[m.SagaEvent], int, list[int]]:
    """(one event per sequence in order, how many repeats, sequences that were forked)."""
    by_sequence: dict[int, list[m.SagaEvent]] = defaultdict(list)
    for event in events:
        by_sequence[event.sequence].append(event)
    forked = [
        seq
        for seq, group in sorted(by_sequence.items())
        if len({_event_identity(e) for e in group}) > 1
    ]
    repeats = sum(len(group) - 1 for group in by_sequence.values())
    return [by_sequence[s][0] for s in sorted(by_sequence)], repeats, forked


def _terminal_event(saga_id: str, observed: Observed, findings: Findings) -> m.SagaEvent | None:
    """The saga's terminal event, once its events are checked (None: it has none)."""
    violations = findings.violations
    events, repeats, forked = distinct_events(observed.events.get(saga_id, []))
    findings.repeated_events += repeats
    for seq in forked:
        violations.append(Violation("forked", saga_id, f"sequence {seq} has different events"))
    sequences = [e.sequence for e in events]
    if sequences and sequences != list(range(1, sequences[-1] + 1)):
        violations.append(Violation("event-gap", saga_id, f"sequences {sequences}"))
    terminals = [e for e in events if e.terminal]
    if not terminals:
        last = events[-1].to_state if events else "no event"
        violations.append(Violation("not-terminal", saga_id, f"last state {last}"))
        return None
    if len(terminals) > 1:
        states = ", ".join(f"{e.sequence}:{e.to_state}" for e in terminals)
        violations.append(Violation("terminal-twice", saga_id, states))
    findings.outcomes[saga_id] = terminals[0].to_state
    return terminals[0]


def _check_saga(order: PlannedOrder, observed: Observed, findings: Findings) -> None:
    saga_id = order.request.order_id
    terminal = _terminal_event(saga_id, observed, findings)
    if terminal is None:
        return
    outcome = terminal.to_state
    _check_saga_row(order, observed.sagas.get(saga_id), outcome, findings.violations)
    _check_order_row(saga_id, observed, outcome, findings)
    _check_intent(order, outcome, terminal.reason, findings)


def _check_saga_row(
    order: PlannedOrder,
    row: m.SagaState | m.CancelSagaState | None,
    outcome: str,
    violations: list[Violation],
) -> None:
    saga_id = order.request.order_id
    if row is None:
        violations.append(Violation("saga-row", saga_id, "no row in the sagas table"))
        return
    if row.state != outcome:
        violations.append(Violation("saga-row", saga_id, f"row {row.state}, events {outcome}"))
    if (row.customer_id, row.items) != (order.request.customer_id, order.request.items):
        violations.append(Violation("saga-row", saga_id, "holds other content than requested"))


def _check_order_row(saga_id: str, observed: Observed, outcome: str, findings: Findings) -> None:
    """The order's row follows its saga, and its cancel: CANCELLED by the one cancel
    that ended ORDER_CANCELLED, else untouched (APPROVED, no cancel saga)."""
    violations = findings.violations
    row = observed.orders.get(saga_id)
    cancelled_by = findings.cancelled_by.get(saga_id)
    want = (
        (APPROVED if cancelled_by is None else CANCELLED) if outcome == ORDER_APPROVED else REJECTED
    )
    have = row.status if row is not None else "no row"
    if have != want:
        by = f", cancelled by {cancelled_by}" if cancelled_by else ""
        violations.append(Violation("order-row", saga_id, f"order {have}, saga {outcome}{by}"))
    if row is None:
        return
    if row.cancel_saga != cancelled_by:
        violations.append(
            Violation("order-row", saga_id, f"cancel saga {row.cancel_saga}, want {cancelled_by}")
        )
    problems = order_invariant_violations(row, observed.cancels.get(saga_id, {}).values())
    violations += [Violation("order-row", saga_id, p) for p in problems]


def _check_intent(
    order: PlannedOrder, outcome: str, reason: str | None, findings: Findings
) -> None:
    saga_id = order.request.order_id
    if order.intent in MUST_REJECT and outcome != ORDER_REJECTED:
        findings.violations.append(Violation("intent", saga_id, f"{order.intent} approved"))
    if order.intent is Intent.APPROVE and outcome == ORDER_REJECTED:
        if reason in DEADLINE_REASONS:
            findings.deadline_rejections += 1
        else:
            findings.violations.append(
                Violation("intent", saga_id, f"approvable order rejected: {reason}")
            )


# ---- cancels ----


def _check_cancel_saga(cancel: PlannedCancel, observed: Observed, findings: Findings) -> None:
    """Its events and row; which order it cancelled (`findings.cancelled_by`)."""
    saga_id, order_id = cancel.request.cancel_id, cancel.request.order_id
    terminal = _terminal_event(saga_id, observed, findings)
    if terminal is None:
        return
    outcome = terminal.to_state
    row = observed.sagas.get(saga_id)
    if row is None:
        findings.violations.append(Violation("saga-row", saga_id, "no row in the sagas table"))
    elif row.state != outcome or row.order_id != order_id:
        detail = f"row {row.state} of {row.order_id}, events {outcome} of {order_id}"
        findings.violations.append(Violation("saga-row", saga_id, detail))
    if outcome == CANCEL_REJECTED:
        findings.cancel_reasons[_reason_kind(terminal.reason)] += 1
        return
    earlier = findings.cancelled_by.setdefault(order_id, saga_id)
    if earlier != saga_id:
        detail = f"order {order_id} cancelled by {earlier} too"
        findings.violations.append(Violation("cancel", saga_id, detail))


def _reason_kind(reason: str | None) -> str:
    """A rejected cancel's reason without the saga it names (for counting)."""
    text = (reason or "-").removeprefix(REFUSED)
    return BEING_CANCELLED.strip() if text.startswith(BEING_CANCELLED) else text


def _check_cancels(plan: Plan, observed: Observed, findings: Findings) -> None:
    """What each cancel did is possible, and what it says is true, at the end."""
    creates = {o.request.order_id for o in plan.orders}
    targets = {c.request.cancel_id: c.request.order_id for c in plan.cancels}
    for cancel in plan.cancels:
        saga_id, order_id = cancel.request.cancel_id, cancel.request.order_id
        outcome = findings.outcomes.get(saga_id)
        if outcome is None:
            continue  # not terminal: found already
        order_outcome = findings.outcomes.get(order_id)
        problem = None
        if outcome == ORDER_CANCELLED:
            if order_id not in creates:
                problem = "cancelled an order nobody placed"
            elif order_outcome != ORDER_APPROVED:
                problem = f"cancelled an order whose saga ended {order_outcome}"
        else:
            reason = _terminal_reason(observed, saga_id)
            problem = _false_refusal(cancel, reason, targets, findings)
            if cancel.intent is CancelIntent.UNKNOWN and problem is None:
                orders = observed.orders.get(order_id)
                problem = None if orders is None else f"an order {orders.status} appeared"
        if problem is not None:
            findings.violations.append(Violation("cancel", saga_id, f"{order_id}: {problem}"))


def _terminal_reason(observed: Observed, saga_id: str) -> str:
    terminals = [e for e in observed.events.get(saga_id, []) if e.terminal]
    return (terminals[0].reason or "") if terminals else ""


def _false_refusal(
    cancel: PlannedCancel, reason: str, targets: dict[str, str], findings: Findings
) -> str | None:
    """Why a rejected cancel's reason is false at the end (None: it may be true).

    "not approved yet" and "unknown order" depend on when the Order Service was asked,
    so they are true of any order of the run (and "unknown order" must be the reason of
    a cancel of an id nobody placed); a deadline is always possible."""
    order_id = cancel.request.order_id
    if reason in CANCEL_DEADLINE_REASONS:
        return None
    why = reason.removeprefix(REFUSED)
    if cancel.intent is CancelIntent.UNKNOWN:
        return None if why == UNKNOWN_ORDER else f"refused with {why!r}, want {UNKNOWN_ORDER!r}"
    if why == REFUSED_ORDER_REJECTED and findings.outcomes.get(order_id) != ORDER_REJECTED:
        return f"refused as rejected, its saga ended {findings.outcomes.get(order_id)}"
    cancelled_by = findings.cancelled_by.get(order_id)
    if why == ALREADY_CANCELLED and cancelled_by in (None, cancel.request.cancel_id):
        return "refused as already cancelled, but no other cancel cancelled it"
    if why.startswith(BEING_CANCELLED):
        holder = why.removeprefix(BEING_CANCELLED)
        if holder == cancel.request.cancel_id or targets.get(holder) != order_id:
            return f"refused as being cancelled by {holder}, not another cancel of the order"
    return None


def _check_phantoms(plan: Plan, observed: Observed, findings: Findings) -> None:
    planned = set(plan.saga_ids())
    prefix = f"chaos-{plan.run}-"
    started = set(observed.sagas) | {s for s, events in observed.events.items() if events}
    for saga_id in sorted(started - planned):
        if saga_id.startswith(prefix):
            findings.violations.append(Violation("phantom-saga", saga_id, "not a planned saga"))


# ---- stock ----


def _approved(plan: Plan, findings: Findings) -> list[PlannedOrder]:
    return [o for o in plan.orders if findings.outcomes.get(o.request.order_id) == ORDER_APPROVED]


def _rejected(plan: Plan, findings: Findings) -> list[PlannedOrder]:
    return [o for o in plan.orders if findings.outcomes.get(o.request.order_id) == ORDER_REJECTED]


def _check_stock(plan: Plan, observed: Observed, findings: Findings) -> None:
    violations = findings.violations
    sold: Counter[str] = Counter()
    returned: Counter[str] = Counter()
    for order in _approved(plan, findings):
        saga_id = order.request.order_id
        items = merged_items(order.request.items)
        bought = {i.product_id: i.quantity for i in items}
        sold.update(bought)
        want = SOLD
        if saga_id in findings.cancelled_by:
            returned.update(bought)
            want = RETURNED
        for item in items:
            hold = observed.holds.get(item.product_id, {}).get(saga_id)
            if hold is None or (hold.status, hold.quantity) != (want, item.quantity):
                have = "none" if hold is None else f"{hold.status} {hold.quantity}"
                detail = f"{item.product_id}: hold {have}, want {want} {item.quantity}"
                violations.append(Violation("approved-stock", saga_id, detail))
    for order in _rejected(plan, findings):
        for item in order.request.items:
            hold = observed.holds.get(item.product_id, {}).get(order.request.order_id)
            if hold is not None and hold.status in (HELD, SOLD, RETURNED):
                detail = f"{item.product_id}: hold {hold.status} {hold.quantity}"
                violations.append(Violation("rejected-stock", order.request.order_id, detail))
    for restock in plan.catalog.restocks:
        product = restock.product_id
        row = observed.stock.get(product)
        if row is None:
            violations.append(Violation("stock", product, "no stock row"))
            continue
        holds = observed.holds.get(product, {})
        problems = stock_invariant_violations(row, holds.values())
        held = sorted(saga for saga, hold in holds.items() if hold.status == HELD)
        if row.reserved or held:
            problems.append(f"still reserved {row.reserved} for {held}")
        if row.restocked != restock.quantity:
            problems.append(f"restocked {row.restocked}, seeded {restock.quantity}")
        if row.sold != sold[product]:
            problems.append(f"sold {row.sold}, approved orders bought {sold[product]}")
        if row.returned != returned[product]:
            problems.append(f"returned {row.returned}, cancelled orders bought {returned[product]}")
        violations += [Violation("stock", product, p) for p in problems]


# ---- money ----


def _check_money(plan: Plan, observed: Observed, findings: Findings) -> None:
    violations = findings.violations
    captured: dict[str, Decimal] = defaultdict(Decimal)
    for order in _approved(plan, findings):
        saga_id = order.request.order_id
        want = AUTHORIZED
        if saga_id in findings.cancelled_by:
            want = REFUNDED
        else:
            captured[order.request.customer_id] += order.total
        payment = _payment(observed, order)
        if payment is None or (payment.status, payment.amount.amount) != (want, order.total):
            have = "none" if payment is None else f"{payment.status} {payment.amount.amount}"
            detail = f"payment {have}, want {want} {order.total}"
            violations.append(Violation("approved-money", saga_id, detail))
    for order in _rejected(plan, findings):
        payment = _payment(observed, order)
        if payment is not None and payment.status == AUTHORIZED:
            detail = f"payment AUTHORIZED {payment.amount.amount}"
            violations.append(Violation("rejected-money", order.request.order_id, detail))
    for top_up in plan.catalog.top_ups:
        customer = top_up.customer_id
        account = observed.accounts.get(customer)
        if account is None:
            violations.append(Violation("money", customer, "no account"))
            continue
        payments = list(observed.payments.get(customer, {}).values())
        problems = account_invariant_violations(account, payments)
        if account.topped_up.amount != top_up.amount.amount:
            problems.append(f"topped up {account.topped_up.amount}, seeded {top_up.amount.amount}")
        total = account.captured_archived.amount
        if total != captured[customer]:
            problems.append(
                f"captured {total}, approved orders not cancelled cost {captured[customer]}"
            )
        violations += [Violation("money", customer, p) for p in problems]


def _payment(observed: Observed, order: PlannedOrder) -> m.Payment | None:
    return observed.payments.get(order.request.customer_id, {}).get(order.request.order_id)


# ---- dead letters ----


def _check_dead_letters(
    injected: list[BadRecord], found: list[DeadLetter], findings: Findings
) -> None:
    Identity = tuple[bytes | None, bytes | None]
    expected: dict[Identity, BadRecord] = {(bad.key, bad.value): bad for bad in injected}
    seen: Counter[Identity] = Counter()
    for letter in found:
        identity = (letter.key, letter.value)
        bad = expected.get(identity)
        reason = letter.headers.get("error.reason", "")
        if bad is None:
            findings.dead_letters_unexpected += 1
            where = letter.headers.get("source.topic", "?")
            detail = f"not injected: from {where}, reason {reason or '-'}, key {letter.key!r}"
            findings.violations.append(Violation("dead-letters", "unexpected", detail))
            continue
        seen[identity] += 1
        if reason != bad.reason or letter.headers.get("source.topic") != bad.topic:
            detail = (
                f"{bad.kind} on {bad.topic}: reason {reason or '-'} (want {bad.reason}),"
                f" source {letter.headers.get('source.topic')}"
            )
            findings.violations.append(Violation("dead-letters", bad.key.decode(), detail))
    findings.dead_letters_matched = len(seen)
    findings.dead_letters_repeated = sum(seen.values()) - len(seen)
    for identity, bad in expected.items():
        if identity not in seen:
            findings.dead_letters_missing += 1
            detail = f"{bad.kind} on {bad.topic} is not in saga.dead-letters"
            findings.violations.append(Violation("dead-letters", bad.key.decode(), detail))
