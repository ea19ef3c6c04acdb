"""Payment Service logic: authorize, cancel (refund), top-up; idempotency and money."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from participants.payment import logic
from participants.payment.logic import (
    AUTHORIZED,
    CANCELLED,
    FAILED,
    REFUNDED,
    InvalidTopUp,
    account_invariant_violations,
    authorize_payment,
    cancel_payment,
    top_up,
)
from schemas.messages import (
    Account,
    AuthorizePayment,
    CancelPayment,
    Money,
    Outcome,
    Payment,
    PaymentAuthorized,
    PaymentCancelled,
    PaymentFailed,
    TopUp,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(seconds=4)
SAGA = "saga-1"
CUSTOMER = "c1"


def eur(amount: str) -> Money:
    return Money(Decimal(amount), "EUR")


THIRTY = Money(Decimal("30.00"), "EUR")


def authorize(
    amount: Money = THIRTY, attempt: int = 1, saga: str = SAGA, customer: str = CUSTOMER
) -> AuthorizePayment:
    return AuthorizePayment(saga, f"{saga}:authorize_payment", attempt, T0, saga, customer, amount)


def cancel(attempt: int = 1, saga: str = SAGA, customer: str = CUSTOMER) -> CancelPayment:
    return CancelPayment(saga, f"{saga}:cancel_payment", attempt, T0, saga, customer)


def funded(amount: str = "100.00") -> Account:
    return top_up(None, TopUp("t0", CUSTOMER, eur(amount)))


def failed_reason(reply: object) -> str:
    assert isinstance(reply, PaymentFailed) and reply.outcome is Outcome.FAILURE
    return reply.reason


# ---- top_up ----


def test_top_up_creates_and_credits_an_account_once() -> None:
    account = funded("100.00")
    assert (account.balance, account.topped_up, account.top_up_ids) == (
        eur("100.00"),
        eur("100.00"),
        ["t0"],
    )
    more = top_up(account, TopUp("t1", CUSTOMER, eur("5.50")))
    assert (more.balance, more.topped_up) == (eur("105.50"), eur("105.50"))
    assert top_up(more, TopUp("t1", CUSTOMER, eur("5.50"))) is more


def test_top_up_rejects_non_positive_amounts_and_other_currencies() -> None:
    with pytest.raises(InvalidTopUp):
        top_up(None, TopUp("t", CUSTOMER, eur("0.00")))
    with pytest.raises(InvalidTopUp):
        top_up(funded(), TopUp("t1", CUSTOMER, Money(Decimal("1.00"), "USD")))


def test_an_account_that_never_had_money_takes_the_first_top_up_currency() -> None:
    placeholder, _ = cancel_payment(None, cancel(), T1)  # created in the default currency
    account = top_up(placeholder, TopUp("t", CUSTOMER, Money(Decimal("9.00"), "USD")))
    assert account.balance == Money(Decimal("9.00"), "USD")
    assert account_invariant_violations(account) == []


def test_top_up_ids_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logic, "MAX_TOP_UP_IDS", 2)
    account = funded()
    for n in range(3):
        account = top_up(account, TopUp(f"x{n}", CUSTOMER, eur("1.00")))
    assert account.top_up_ids == ["x1", "x2"] and account.topped_up == eur("103.00")


# ---- authorize_payment ----


def test_authorize_debits_and_replies_authorized() -> None:
    account, reply = authorize_payment(funded("100.00"), authorize(eur("30.00")), T1)
    assert account.balance == eur("70.00")
    assert account.payments == [Payment(SAGA, eur("30.00"), AUTHORIZED)]
    assert reply == PaymentAuthorized(
        SAGA, f"{SAGA}:authorize_payment", 1, Outcome.SUCCESS, T1, eur("30.00")
    )


def test_authorize_of_the_whole_balance_is_allowed() -> None:
    account, reply = authorize_payment(funded("30.00"), authorize(eur("30.00")), T1)
    assert account.balance == eur("0.00") and isinstance(reply, PaymentAuthorized)


def test_duplicate_authorize_replies_the_same_without_charging_again() -> None:
    account, first = authorize_payment(funded(), authorize(), T1)
    again, second = authorize_payment(account, authorize(attempt=2), T1 + timedelta(seconds=1))
    assert again is account
    assert second == replace(first, attempt=2, replied_at=T1 + timedelta(seconds=1))


@pytest.mark.parametrize(
    ("account", "amount", "reason"),
    [
        (funded("10.00"), eur("30.00"), "insufficient funds"),
        (funded(), Money(Decimal("5.00"), "USD"), "currency mismatch"),
        (funded(), eur("0.00"), "non-positive amount"),
        (funded(), eur("-1.00"), "non-positive amount"),
        (None, eur("5.00"), "unknown customer"),
    ],
)
def test_authorize_refusals_charge_nothing_and_are_recorded(
    account: Account | None, amount: Money, reason: str
) -> None:
    new, reply = authorize_payment(account, authorize(amount), T1)
    assert failed_reason(reply).startswith(reason)
    assert new.payments == [Payment(SAGA, amount, FAILED, failed_reason(reply))]
    assert new.balance == (account.balance if account else Money(Decimal("0.00"), "EUR"))
    assert account_invariant_violations(new) == []


def test_refusal_stands_for_a_duplicate_even_after_a_top_up() -> None:
    account, first = authorize_payment(funded("10.00"), authorize(eur("30.00")), T1)
    richer = top_up(account, TopUp("t1", CUSTOMER, eur("100.00")))
    again, second = authorize_payment(richer, authorize(eur("30.00"), attempt=2), T1)
    assert again is richer and again.balance == eur("110.00")
    assert failed_reason(second) == failed_reason(first)


def test_unknown_customer_stays_unknown_until_topped_up() -> None:
    account, _ = authorize_payment(None, authorize(saga="a"), T1)
    _, reply = authorize_payment(account, authorize(saga="b"), T1)
    assert failed_reason(reply).startswith("unknown customer")


def test_authorize_after_cancel_is_refused() -> None:
    cancelled, _ = cancel_payment(funded(), cancel(), T1)
    account, reply = authorize_payment(cancelled, authorize(), T1)
    assert account is cancelled and account.balance == eur("100.00")
    assert failed_reason(reply) == "payment cancelled"


# ---- cancel_payment ----


def test_cancel_refunds_an_authorized_payment() -> None:
    charged, _ = authorize_payment(funded(), authorize(eur("30.00")), T1)
    account, reply = cancel_payment(charged, cancel(), T1)
    assert account.balance == eur("100.00")
    assert account.payments == [Payment(SAGA, eur("30.00"), REFUNDED)]
    assert reply == PaymentCancelled(
        SAGA, f"{SAGA}:cancel_payment", 1, Outcome.SUCCESS, T1, eur("30.00")
    )


def test_duplicate_cancel_does_not_refund_twice() -> None:
    charged, _ = authorize_payment(funded(), authorize(), T1)
    account, first = cancel_payment(charged, cancel(), T1)
    again, second = cancel_payment(account, cancel(attempt=2), T1)
    assert again is account
    assert second == replace(first, attempt=2)


def test_duplicate_authorize_after_refund_repeats_authorized_but_charges_nothing() -> None:
    charged, first = authorize_payment(funded(), authorize(), T1)
    refunded, _ = cancel_payment(charged, cancel(), T1)
    again, reply = authorize_payment(refunded, authorize(attempt=2), T1)
    assert again is refunded and again.balance == eur("100.00")
    assert reply == replace(first, attempt=2)


def test_cancel_before_authorize_records_cancelled_with_nothing_refunded() -> None:
    account, reply = cancel_payment(funded(), cancel(), T1)
    assert account.payments == [Payment(SAGA, eur("0.00"), CANCELLED)]
    assert reply.refunded == eur("0.00") and reply.outcome is Outcome.SUCCESS
    again, second = cancel_payment(account, cancel(), T1)
    assert again is account and second == reply


def test_cancel_of_a_failed_payment_refunds_nothing_and_keeps_the_refusal() -> None:
    failed, _ = authorize_payment(funded("1.00"), authorize(eur("30.00")), T1)
    account, reply = cancel_payment(failed, cancel(), T1)
    assert account is failed and reply.refunded == eur("0.00")


def test_cancel_for_unknown_customer_still_blocks_a_later_authorize() -> None:
    account, reply = cancel_payment(None, cancel(), T1)
    assert reply.refunded == eur("0.00")
    _, answer = authorize_payment(account, authorize(), T1)
    assert failed_reason(answer) == "payment cancelled"


# ---- bounded ledger ----


def test_payments_are_bounded_and_pruned_charges_stay_accounted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logic, "MAX_PAYMENTS", 2)
    account = funded("100.00")
    for saga in ("a", "b", "c"):
        account, _ = authorize_payment(account, authorize(eur("10.00"), saga=saga), T1)
    assert [p.saga_id for p in account.payments] == ["b", "c"]
    assert account.captured_archived == eur("10.00") and account.balance == eur("70.00")
    assert account_invariant_violations(account) == []


# ---- invariant helper ----


def test_account_invariant_violations() -> None:
    good, _ = authorize_payment(funded("100.00"), authorize(eur("30.00")), T1)
    assert account_invariant_violations(good) == []
    assert (
        "balance is negative"
        in account_invariant_violations(
            replace(good, balance=eur("-1.00"), topped_up=eur("29.00"))
        )[0]
    )
    assert "not conserved" in account_invariant_violations(replace(good, balance=eur("71.00")))[0]
    doubled = replace(good, payments=good.payments * 2, balance=eur("40.00"))
    assert account_invariant_violations(doubled) == [f"saga {SAGA} has several payments"]
    foreign = replace(good, topped_up=Money(Decimal("100.00"), "USD"))
    assert any("USD" in p for p in account_invariant_violations(foreign))


# ---- property: any order, any duplicate, money is conserved and never kept ----


@dataclass
class PaymentWorld:
    accounts: dict[str, Account] = field(default_factory=dict)
    applied_top_ups: dict[str, Decimal] = field(default_factory=dict)
    cancelled: set[str] = field(default_factory=set)
    replies: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    def deliver(self, message: AuthorizePayment | CancelPayment | TopUp) -> None:
        account = self.accounts.get(message.customer_id)
        if isinstance(message, TopUp):
            self.accounts[message.customer_id] = top_up(account, message)
            self.applied_top_ups[message.top_up_id] = message.amount.amount
            return
        reply: object
        if isinstance(message, AuthorizePayment):
            account, reply = authorize_payment(account, message, T1)
        else:
            account, reply = cancel_payment(account, message, T1)
            self.cancelled.add(message.saga_id)
        self.accounts[message.customer_id] = account
        kind = type(message).__name__
        self.replies[(message.saga_id, kind)].add(repr(replace(reply, attempt=0)))

    def check(self) -> None:
        for account in self.accounts.values():
            assert account_invariant_violations(account) == []
        money = sum(
            (
                a.balance.amount
                + a.captured_archived.amount
                + sum((p.amount.amount for p in a.payments if p.status == AUTHORIZED), Decimal(0))
                for a in self.accounts.values()
            ),
            Decimal(0),
        )
        assert money == sum(self.applied_top_ups.values(), Decimal(0))


CUSTOMERS = ["c1", "c2"]
AMOUNTS = st.integers(-1, 60).map(lambda n: Decimal(n).quantize(Decimal("0.01")))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    sagas=st.lists(
        st.tuples(st.sampled_from(CUSTOMERS), AMOUNTS, st.sampled_from(["EUR", "EUR", "USD"])),
        min_size=1,
        max_size=5,
    ),
    top_ups=st.lists(st.tuples(st.sampled_from(CUSTOMERS), st.integers(1, 50)), max_size=4),
    data=st.data(),
)
def test_random_interleavings_conserve_money(
    sagas: list[tuple[str, Decimal, str]],
    top_ups: list[tuple[str, int]],
    data: st.DataObject,
) -> None:
    in_flight: list[AuthorizePayment | CancelPayment | TopUp] = [
        TopUp(f"t{n}", customer, eur(str(amount))) for n, (customer, amount) in enumerate(top_ups)
    ]
    for n, (customer, amount, currency) in enumerate(sagas):
        saga = f"s{n}"
        in_flight.append(authorize(Money(amount, currency), saga=saga, customer=customer))
        if data.draw(st.booleans()):
            in_flight.append(cancel(saga=saga, customer=customer))
    world = PaymentWorld()
    for _ in range(data.draw(st.integers(0, 40))):  # random order, random duplicates
        if not in_flight:
            break
        index = data.draw(st.integers(0, len(in_flight) - 1))
        message = in_flight[index]
        if not data.draw(st.booleans()):  # half the time it is delivered again later
            in_flight.pop(index)
        world.deliver(message)
        world.check()
    for message in in_flight:  # then the rest arrives, in order
        world.deliver(message)
        world.check()

    for account in world.accounts.values():
        for payment in account.payments:
            if payment.saga_id in world.cancelled:  # money is never kept once cancelled
                assert payment.status != AUTHORIZED
    for answers in world.replies.values():  # every duplicate got the first answer
        assert len(answers) == 1
