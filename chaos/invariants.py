"""Checks of a finished chaos run: the final tables, saga.events and saga.dead-letters
against the plan. Pure: `chaos.run` reads the topics into `Observed`.

What must hold (DESIGN §2, §4, §5), each check named as it appears in the report:
  not-terminal       every saga ends in ORDER_APPROVED or ORDER_REJECTED ...
  terminal-twice     ... exactly once: one terminal event, one terminal state
  forked             re-processing may repeat an event (same saga and sequence), never
                     change it: two events with one sequence must say the same
  event-gap          sequences run 1..last: no transition went unreported
  saga-row           the sagas table agrees with the events, and holds the first request
                     (a duplicate order id with other content must not change the saga)
  phantom-saga       nothing but the planned orders started a saga (bad records did not)
  order-row          the Order Service's row says APPROVED / REJECTED like the saga
  intent             an order that cannot be approved (no stock, no money) is rejected;
                     an approvable one is approved unless a deadline rejected it
  approved-stock     an approved order's hold of each product is SOLD, for the quantity
                     ordered
  rejected-stock     a rejected order holds nothing (no hold HELD or SOLD)
  stock              per product: row invariants (its holds agree with its counters),
                     nothing reserved once every saga ended, restocked == seeded,
                     sold == what approved orders bought
  approved-money     an approved order's payment is AUTHORIZED for its total
  rejected-money     a rejected order holds no money (no AUTHORIZED payment)
  money              per customer: row invariants (balance + captured == topped up, its
                     payments agree), topped up == seeded, captured == totals of its
                     approved orders
  dead-letters       exactly the injected bad records, each with its error.reason
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from chaos.plan import MUST_REJECT, BadRecord, Intent, Plan, PlannedOrder
from orchestrator.engine import DEADLINE
from orchestrator.sagas.create_order import DEFINITION as CREATE_ORDER_SAGA
from orchestrator.sagas.create_order import ORDER_APPROVED, ORDER_REJECTED
from participants.order.logic import APPROVED, REJECTED
from participants.payment.logic import AUTHORIZED, account_invariant_violations
from participants.product.logic import HELD, SOLD, stock_invariant_violations
from schemas import messages as m
from schemas.limits import merged_items

DEADLINE_REASONS = frozenset(
    t.reason for t in CREATE_ORDER_SAGA.transitions if t.trigger is DEADLINE and t.reason
)


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]


@dataclass
class Observed:
    """The final state of a run, keyed by plain string ids."""

    sagas: dict[str, m.SagaState]
    orders: dict[str, m.OrderRow]
    stock: dict[str, m.StockRow]
    accounts: dict[str, m.Account]
    events: dict[str, list[m.SagaEvent]]  # as read: re-emitted events included
    dead_letters: list[DeadLetter]
    holds: dict[str, dict[str, m.StockHold]] = field(default_factory=dict)  # product, saga
    payments: dict[str, dict[str, m.Payment]] = field(default_factory=dict)  # customer, saga


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
    for order in plan.orders:
        _check_saga(order, observed, findings)
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


def _check_saga(order: PlannedOrder, observed: Observed, findings: Findings) -> None:
    saga_id = order.request.order_id
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
        return
    if len(terminals) > 1:
        states = ", ".join(f"{e.sequence}:{e.to_state}" for e in terminals)
        violations.append(Violation("terminal-twice", saga_id, states))
    outcome = terminals[0].to_state
    findings.outcomes[saga_id] = outcome
    _check_saga_row(order, observed.sagas.get(saga_id), outcome, violations)
    _check_order_row(saga_id, observed.orders.get(saga_id), outcome, violations)
    _check_intent(order, outcome, terminals[0].reason, findings)


def _check_saga_row(
    order: PlannedOrder, row: m.SagaState | None, outcome: str, violations: list[Violation]
) -> None:
    saga_id = order.request.order_id
    if row is None:
        violations.append(Violation("saga-row", saga_id, "no row in the sagas table"))
        return
    if row.state != outcome:
        violations.append(Violation("saga-row", saga_id, f"row {row.state}, events {outcome}"))
    if (row.customer_id, row.items) != (order.request.customer_id, order.request.items):
        violations.append(Violation("saga-row", saga_id, "holds other content than requested"))


def _check_order_row(
    saga_id: str, row: m.OrderRow | None, outcome: str, violations: list[Violation]
) -> None:
    want = APPROVED if outcome == ORDER_APPROVED else REJECTED
    have = row.status if row is not None else "no row"
    if have != want:
        violations.append(Violation("order-row", saga_id, f"order {have}, saga {outcome}"))


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


def _check_phantoms(plan: Plan, observed: Observed, findings: Findings) -> None:
    planned = {o.request.order_id for o in plan.orders}
    prefix = f"chaos-{plan.run}-"
    started = set(observed.sagas) | {s for s, events in observed.events.items() if events}
    for saga_id in sorted(started - planned):
        if saga_id.startswith(prefix):
            findings.violations.append(Violation("phantom-saga", saga_id, "not a planned order"))


# ---- stock ----


def _approved(plan: Plan, findings: Findings) -> list[PlannedOrder]:
    return [o for o in plan.orders if findings.outcomes.get(o.request.order_id) == ORDER_APPROVED]


def _rejected(plan: Plan, findings: Findings) -> list[PlannedOrder]:
    return [o for o in plan.orders if findings.outcomes.get(o.request.order_id) == ORDER_REJECTED]


def _check_stock(plan: Plan, observed: Observed, findings: Findings) -> None:
    violations = findings.violations
    sold: Counter[str] = Counter()
    for order in _approved(plan, findings):
        items = merged_items(order.request.items)
        sold.update({i.product_id: i.quantity for i in items})
        for item in items:
            hold = observed.holds.get(item.product_id, {}).get(order.request.order_id)
            if hold is None or (hold.status, hold.quantity) != (SOLD, item.quantity):
                have = "none" if hold is None else f"{hold.status} {hold.quantity}"
                detail = f"{item.product_id}: hold {have}, want SOLD {item.quantity}"
                violations.append(Violation("approved-stock", order.request.order_id, detail))
    for order in _rejected(plan, findings):
        for item in order.request.items:
            hold = observed.holds.get(item.product_id, {}).get(order.request.order_id)
            if hold is not None and hold.status in (HELD, SOLD):
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
        violations += [Violation("stock", product, p) for p in problems]


# ---- money ----


def _check_money(plan: Plan, observed: Observed, findings: Findings) -> None:
    violations = findings.violations
    captured: dict[str, Decimal] = defaultdict(Decimal)
    for order in _approved(plan, findings):
        captured[order.request.customer_id] += order.total
        payment = _payment(observed, order)
        if payment is None or payment.status != AUTHORIZED or payment.amount.amount != order.total:
            have = "none" if payment is None else f"{payment.status} {payment.amount.amount}"
            violations.append(
                Violation("approved-money", order.request.order_id, f"payment {have}")
            )
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
            problems.append(f"captured {total}, approved orders cost {captured[customer]}")
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
