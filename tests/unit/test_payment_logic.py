"""Payment Service logic: one account row and one payment row per saga, unit by unit.

`Accounts` keeps the table in a dict and feeds commands with increasing offsets, as the
agent does; replays are in test_payment_replays.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from participants.payment import logic
from participants.payment.logic import (
    AUTHORIZED,
    CANCELLED,
    CANCELLED_REASON,
    FAILED,
    REFUNDED,
    Effect,
    InvalidTopUp,
    account_invariant_violations,
    payment_key,
    top_up_key,
)
from schemas import codec
from schemas.messages import (
    Account,
    AuthorizePayment,
    CancelPayment,
    CommandApplied,
    Money,
    Outcome,
    Payment,
    PaymentAuthorized,
    PaymentCancelled,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
    TopUp,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
ALICE = "alice"


def eur(amount: str) -> Money:
    return Money(Decimal(amount), "EUR")


def authorize(amount: Money, saga: str = "s1", attempt: int = 1) -> AuthorizePayment:
    return AuthorizePayment(saga, f"{saga}:authorize_payment", attempt, T0, saga, ALICE, amount)


def cancel(saga: str = "s1", attempt: int = 1) -> CancelPayment:
    return CancelPayment(saga, f"{saga}:cancel_payment", attempt, T0, saga, ALICE)


class Accounts:
    def __init__(self) -> None:
        self.rows: dict[bytes, Any] = {}
        self.offset = 0

    def _next(self, offset: int | None) -> int:
        if offset is None:
            offset, self.offset = self.offset, self.offset + 1
        return offset

    def apply(self, effect: Effect) -> Effect:
        for key, row in effect.rows:
            self.rows[key] = row
        return effect

    def account(self) -> Account:
        row = self.rows[ALICE.encode()]
        assert isinstance(row, Account)
        return row

    def payment(self, saga: str = "s1") -> Payment | None:
        return self.rows.get(payment_key(ALICE, saga))

    def top_up(self, amount: Money, top_up_id: str = "t1", offset: int | None = None) -> Effect:
        applied = self.rows.get(logic.top_up_key(ALICE, top_up_id))
        command = TopUp(top_up_id, ALICE, amount)
        return self.apply(
            logic.top_up(self.rows.get(ALICE.encode()), applied, command, self._next(offset))
        )

    def authorize(self, command: AuthorizePayment, offset: int | None = None) -> Effect:
        account = self.rows.get(ALICE.encode())
        payment = self.payment(command.saga_id)
        o = self._next(offset)
        return self.apply(logic.authorize_payment(account, payment, command, T0, o))

    def cancel(self, command: CancelPayment, offset: int | None = None) -> Effect:
        account = self.rows.get(ALICE.encode())
        payment = self.payment(command.saga_id)
        o = self._next(offset)
        return self.apply(logic.cancel_payment(account, payment, command, T0, o))

    def refund(self, command: RefundPayment, offset: int | None = None) -> Effect:
        account = self.rows.get(ALICE.encode())
        payment = self.payment(command.order_id)  # the order's CreateOrderSaga's payment
        o = self._next(offset)
        return self.apply(logic.refund_payment(account, payment, command, T0, o))


def refund(order: str = "s1", saga: str = "k1", attempt: int = 1) -> RefundPayment:
    return RefundPayment(saga, f"{saga}:refund_payment", attempt, T0, order, ALICE)


def funded(balance: str = "100.00") -> Accounts:
    accounts = Accounts()
    accounts.top_up(eur(balance))
    return accounts


def test_authorize_debits_and_records_the_payment_before_the_account() -> None:
    accounts = funded()
    effect = accounts.authorize(authorize(eur("30.00")))
    assert effect.reply == PaymentAuthorized(
        "s1", "s1:authorize_payment", 1, Outcome.SUCCESS, T0, eur("30.00")
    )
    assert [key for key, _row in effect.rows] == [payment_key(ALICE, "s1"), ALICE.encode()]
    account = accounts.account()
    assert (account.balance, account.captured_archived) == (eur("70.00"), eur("30.00"))
    assert accounts.payment() == Payment("s1", eur("30.00"), AUTHORIZED, None, decided_offset=1)
    assert account_invariant_violations(account, [accounts.payment()]) == []  # type: ignore[list-item]


@pytest.mark.parametrize("balance", ["30.00", "1.00"])
def test_paying_exactly_the_balance_succeeds_and_a_cent_more_does_not(balance: str) -> None:
    accounts = funded(balance)
    assert isinstance(accounts.authorize(authorize(eur(balance))).reply, PaymentAuthorized)
    assert accounts.account().balance == eur("0.00")
    poorer = funded(balance)
    more = eur(str(Decimal(balance) + Decimal("0.01")))
    assert isinstance(poorer.authorize(authorize(more)).reply, PaymentFailed)


def test_insufficient_funds_is_refused_and_the_refusal_kept() -> None:
    accounts = funded("10.00")
    effect = accounts.authorize(authorize(eur("30.00")))
    assert isinstance(effect.reply, PaymentFailed)
    assert effect.reply.reason == "insufficient funds: balance 10.00 EUR, amount 30.00 EUR"
    accounts.top_up(eur("100.00"), "t2")
    again = accounts.authorize(authorize(eur("30.00"), attempt=2))  # after a top-up
    assert isinstance(again.reply, PaymentFailed) and again.reply.attempt == 2
    assert again.rows == () and accounts.account().balance == eur("110.00")


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        (eur("0.00"), "non-positive amount: 0.00 EUR"),
        (Money(Decimal("1.00"), "USD"), "currency mismatch: account in EUR, payment in USD"),
        (
            Money(Decimal("1.00"), "usd"),
            "amount: currency 'usd' is not an ISO 4217 code (three upper-case letters)",
        ),
        (eur("1000000000000.01"), "amount 1000000000000.01 EUR is more than 1000000000000.00"),
    ],
)
def test_amounts_that_cannot_be_charged_are_refused(amount: Money, reason: str) -> None:
    # The reason is what the saga's rejection tells the customer.
    effect = funded().authorize(authorize(amount, attempt=2))
    assert effect.reply == PaymentFailed(
        "s1", "s1:authorize_payment", 2, Outcome.FAILURE, T0, reason
    )


def test_an_unknown_customer_is_refused_without_creating_an_account() -> None:
    accounts = Accounts()
    effect = accounts.authorize(authorize(eur("1.00")))
    assert isinstance(effect.reply, PaymentFailed)
    assert effect.reply.reason == "unknown customer: alice"
    assert [key for key, _row in effect.rows] == [payment_key(ALICE, "s1")]


def test_duplicate_authorize_charges_once_and_gets_the_same_answer() -> None:
    accounts = funded()
    first = accounts.authorize(authorize(eur("30.00")))
    again = accounts.authorize(authorize(eur("30.00"), attempt=2))
    assert again.rows == ()
    assert again.reply == PaymentAuthorized(
        "s1", "s1:authorize_payment", 2, Outcome.SUCCESS, T0, eur("30.00")
    )
    assert first.reply is not None and accounts.account().balance == eur("70.00")


def test_duplicates_charge_once_however_many_payments_came_between() -> None:
    """Nothing is pruned: a payment is found however old it is."""
    accounts = funded("100000.00")
    accounts.authorize(authorize(eur("1.00"), saga="first"))
    for i in range(3000):
        accounts.authorize(authorize(eur("1.00"), saga=f"s{i}"))
    again = accounts.authorize(authorize(eur("1.00"), saga="first", attempt=2))
    assert isinstance(again.reply, PaymentAuthorized) and again.rows == ()
    refund = accounts.cancel(cancel("first"))
    assert isinstance(refund.reply, PaymentCancelled) and refund.reply.refunded == eur("1.00")
    assert accounts.account().balance == eur(str(100000 - 3000))
    assert len(codec.encode(accounts.account())) < 100  # the account does not grow


def test_cancel_refunds_an_authorized_payment_once() -> None:
    accounts = funded()
    accounts.authorize(authorize(eur("30.00")))
    effect = accounts.cancel(cancel())
    assert effect.reply == PaymentCancelled(
        "s1", "s1:cancel_payment", 1, Outcome.SUCCESS, T0, eur("30.00")
    )
    account = accounts.account()
    assert (account.balance, account.captured_archived) == (eur("100.00"), eur("0.00"))
    assert accounts.payment() == Payment("s1", eur("30.00"), REFUNDED, None, 1, refunded_offset=2)
    again = accounts.cancel(cancel(attempt=2))
    assert (
        again.rows == ()
        and isinstance(again.reply, PaymentCancelled)
        and again.reply.refunded == eur("30.00")
    )
    assert accounts.account().balance == eur("100.00")
    late = accounts.authorize(authorize(eur("30.00"), attempt=2))  # the refunded one again
    assert isinstance(late.reply, PaymentAuthorized) and late.rows == ()


def test_cancel_before_authorize_refuses_the_late_authorize() -> None:
    accounts = funded()
    effect = accounts.cancel(cancel())
    assert isinstance(effect.reply, PaymentCancelled) and effect.reply.refunded == eur("0.00")
    assert accounts.payment() == Payment("s1", eur("0.00"), CANCELLED, None, decided_offset=1)
    late = accounts.authorize(authorize(eur("30.00")))
    assert isinstance(late.reply, PaymentFailed) and late.reply.reason == CANCELLED_REASON
    assert accounts.account().balance == eur("100.00")


def test_cancel_of_a_refused_payment_refunds_nothing() -> None:
    accounts = funded("1.00")
    accounts.authorize(authorize(eur("30.00")))
    effect = accounts.cancel(cancel())
    assert effect.rows == () and isinstance(effect.reply, PaymentCancelled)
    assert effect.reply.refunded == eur("0.00")
    payment = accounts.payment()
    assert payment is not None and payment.status == FAILED


def test_refund_gives_back_what_the_orders_saga_captured_once() -> None:
    accounts = funded()
    accounts.authorize(authorize(eur("30.00")))
    effect = accounts.refund(refund(attempt=2))
    assert effect.reply == PaymentRefunded(
        "k1", "k1:refund_payment", 2, Outcome.SUCCESS, T0, eur("30.00")
    )
    assert [key for key, _row in effect.rows] == [payment_key(ALICE, "s1"), ALICE.encode()]
    account = accounts.account()
    assert (account.balance, account.captured_archived) == (eur("100.00"), eur("0.00"))
    assert accounts.payment() == Payment("s1", eur("30.00"), REFUNDED, None, 1, refunded_offset=2)
    assert accounts.payment("k1") is None  # nothing is kept under the cancel saga
    payments = [accounts.payment()]
    assert account_invariant_violations(account, payments) == []  # type: ignore[arg-type]
    again = accounts.refund(refund(attempt=3))  # a duplicate
    assert again.rows == () and isinstance(again.reply, PaymentRefunded)
    assert (again.reply.refunded, again.reply.attempt) == (eur("30.00"), 3)
    late = accounts.authorize(authorize(eur("30.00"), attempt=3))  # the create saga's, late
    assert isinstance(late.reply, PaymentAuthorized) and late.rows == ()
    cancelled = accounts.cancel(cancel())  # and its cancel: refunded already
    assert cancelled.rows == () and accounts.account().balance == eur("100.00")


def test_a_refund_after_the_payment_was_cancelled_is_answered_with_its_amount() -> None:
    accounts = funded()
    accounts.authorize(authorize(eur("30.00")))
    accounts.cancel(cancel())
    effect = accounts.refund(refund())
    assert effect.rows == () and isinstance(effect.reply, PaymentRefunded)
    assert effect.reply.refunded == eur("30.00") and accounts.account().balance == eur("100.00")


@pytest.mark.parametrize("paid", ["none", "refused", "cancelled first"])
def test_a_refund_of_nothing_captured_refunds_zero_and_changes_nothing(paid: str) -> None:
    accounts = Accounts()
    accounts.top_up(Money(Decimal("10.00"), "USD"))
    if paid == "refused":
        accounts.authorize(authorize(Money(Decimal("30.00"), "USD")))  # insufficient funds
    elif paid == "cancelled first":
        accounts.cancel(cancel())
    before = dict(accounts.rows)
    effect = accounts.refund(refund())
    assert effect.rows == () and accounts.rows == before
    assert isinstance(effect.reply, PaymentRefunded)
    assert (effect.reply.outcome, effect.reply.refunded) == (
        Outcome.SUCCESS,
        Money(Decimal("0.00"), "USD"),
    )


def test_a_refund_for_an_unknown_customer_refunds_zero() -> None:
    effect = Accounts().refund(refund())
    assert effect.rows == () and isinstance(effect.reply, PaymentRefunded)
    assert effect.reply.refunded == eur("0.00")


def test_a_replayed_refund_applies_the_move_its_payment_recorded() -> None:
    """A crash wrote the payment back REFUNDED, not the account: the replay refunds once."""
    accounts = funded()
    accounts.authorize(authorize(eur("30.00")), offset=1)
    before = accounts.account()
    accounts.refund(refund(), offset=2)
    accounts.rows[ALICE.encode()] = before  # the account's change was lost, the payment's not
    again = accounts.refund(refund(), offset=2)
    assert isinstance(again.reply, PaymentRefunded) and again.reply.refunded == eur("30.00")
    account = accounts.account()
    assert (account.balance, account.captured_archived) == (eur("100.00"), eur("0.00"))
    assert account.applied_offset == 2
    assert accounts.refund(refund(), offset=2) == Effect()  # all applied now


def test_top_up_is_applied_once_per_id_and_sets_the_currency() -> None:
    accounts = Accounts()
    effect = accounts.top_up(Money(Decimal("5.00"), "USD"))
    again = accounts.top_up(Money(Decimal("5.00"), "USD"))  # the same top-up again
    account = accounts.account()
    usd = Money(Decimal("5.00"), "USD")
    assert (account.balance, account.topped_up) == (usd, usd)
    # The mark that it was applied first, the account last, with the record's offset.
    assert effect.rows == (
        (top_up_key(ALICE, "t1"), CommandApplied("t1", 0)),
        (ALICE.encode(), Account(ALICE, usd, usd, Money(Decimal("0.00"), "USD"), 0)),
    )
    assert again == Effect()


NOT_ISO = "amount: currency {!r} is not an ISO 4217 code (three upper-case letters)"


@pytest.mark.parametrize(
    ("amount", "problem"),
    [
        (eur("0.00"), "amount 0.00 is not positive"),
        (eur("-1.00"), "amount -1.00 EUR is negative"),
        (Money(Decimal("1.00"), ""), NOT_ISO.format("")),
        (Money(Decimal("1.00"), "eur"), NOT_ISO.format("eur")),
        (Money(Decimal("1.00"), "NOT-A-CURRENCY"), NOT_ISO.format("NOT-A-CURRENCY")),
        (eur("1000000000000.01"), "amount 1000000000000.01 EUR is more than 1000000000000.00"),
    ],
)
def test_a_top_up_that_cannot_be_applied_is_refused(amount: Money, problem: str) -> None:
    # The message is the dead letter's reason: what the operator reads.
    with pytest.raises(InvalidTopUp) as refused:
        Accounts().top_up(amount)
    assert str(refused.value) == f"top-up t1 of alice: {problem}"


@pytest.mark.parametrize(
    ("customer", "top_up_id", "problem"),
    [("", "t1", "customer id is empty"), (ALICE, "", "top-up id is empty")],
)
def test_a_top_up_with_a_bad_id_is_refused(customer: str, top_up_id: str, problem: str) -> None:
    with pytest.raises(InvalidTopUp) as refused:
        logic.top_up(None, None, TopUp(top_up_id, customer, eur("1.00")), 0)
    assert str(refused.value) == f"top-up {top_up_id} of {customer}: {problem}"


@pytest.mark.parametrize("balance", ["10.00", "1.00"])
def test_top_ups_in_another_currency_or_beyond_the_limit_are_refused(balance: str) -> None:
    accounts = funded(balance)
    with pytest.raises(InvalidTopUp, match=r"currency USD, the account holds EUR$"):
        accounts.top_up(Money(Decimal("1.00"), "USD"), "t2")
    accounts.top_up(eur(str(Decimal("1000000000000.00") - Decimal(balance))), "t3")
    with pytest.raises(InvalidTopUp, match=r"received more than 1000000000000\.00 in all$"):
        accounts.top_up(eur("0.01"), "t4")


def test_invariants_name_what_is_wrong() -> None:
    account = Account(ALICE, eur("70.00"), eur("100.00"), eur("20.00"))
    assert account_invariant_violations(account) == [
        "money not conserved: balance 70.00 + captured 20.00 != topped up 100.00"
    ]
    sound = Account(ALICE, eur("70.00"), eur("100.00"), eur("30.00"))
    payments = [Payment("s1", eur("20.00"), AUTHORIZED), Payment("s2", eur("5.00"), REFUNDED)]
    assert account_invariant_violations(sound, payments) == [
        "captured 30.00 != AUTHORIZED payments 20.00",
        "money not conserved over the payments: balance 70.00 + captured 25.00 - refunded"
        " 5.00 != topped up 100.00",
    ]
    assert account_invariant_violations(sound, []) == [
        "captured 30.00 != AUTHORIZED payments 0",
        "money not conserved over the payments: balance 70.00 + captured 0 - refunded 0"
        " != topped up 100.00",
    ]


def test_refunded_payments_count_as_captured_then_given_back() -> None:
    # topped up 100, 30 and 5 captured, the 5 refunded: balance 70, captured (net) 30
    account = Account(ALICE, eur("70.00"), eur("100.00"), eur("30.00"))
    payments = [
        Payment("s1", eur("30.00"), AUTHORIZED),
        Payment("s2", eur("5.00"), REFUNDED),
        Payment("s3", eur("9.00"), FAILED, "insufficient funds"),
        Payment("s4", eur("0.00"), CANCELLED),
    ]
    assert account_invariant_violations(account, payments) == []
    kept = Account(ALICE, eur("65.00"), eur("100.00"), eur("35.00"))  # the refund not given
    assert account_invariant_violations(kept, payments) == [
        "captured 35.00 != AUTHORIZED payments 30.00",
        "money not conserved over the payments: balance 65.00 + captured 35.00 - refunded"
        " 5.00 != topped up 100.00",
    ]


@pytest.mark.parametrize("balance", ["0.00", "0.50"])
def test_an_account_spent_down_to_nothing_is_sound(balance: str) -> None:
    # only a balance below zero is overdrawn: 0 and a part of one unit are not
    captured = str(Decimal("100.00") - Decimal(balance))
    account = Account(ALICE, eur(balance), eur("100.00"), eur(captured))
    assert account_invariant_violations(account, [Payment("s1", eur(captured), AUTHORIZED)]) == []


def test_invariants_name_every_broken_total() -> None:
    usd = Money(Decimal("-5.00"), "USD")
    overdrawn = Account(ALICE, eur("-5.00"), usd, Money(Decimal("-1.00"), "USD"))
    assert account_invariant_violations(overdrawn) == [
        "balance is negative: -5.00",
        "topped_up is in USD, the balance in EUR",
        "topped_up is negative: -5.00",
        "captured is in USD, the balance in EUR",
        "captured is negative: -1.00",
        "money not conserved: balance -5.00 + captured -1.00 != topped up -5.00",
    ]


def test_invariants_name_every_unsound_payment() -> None:
    account = Account(ALICE, eur("100.00"), eur("100.00"), eur("0.00"))
    payments = [
        Payment("s1", eur("0.00"), "LOST"),
        Payment("s2", eur("0.00"), REFUNDED),
        Payment("s3", Money(Decimal("1.00"), "USD"), REFUNDED),
        Payment("s4", eur("0.00"), CANCELLED),  # what a cancel before the authorize records
        Payment("s5", eur("0.00"), FAILED, "insufficient funds"),
    ]
    assert account_invariant_violations(account, payments) == [
        "saga s1: unknown payment status LOST",
        "saga s2: REFUNDED amount 0.00 <= 0",
        "saga s3: paid in USD, not EUR",
    ]


def test_a_replay_applies_the_moves_its_payment_recorded() -> None:
    """A crash wrote the payment back after its authorization and its refund, but not the
    account (which saw neither): replaying both commands applies both moves once."""
    accounts = funded()
    before = accounts.account()
    accounts.authorize(authorize(eur("30.00")), offset=1)
    accounts.cancel(cancel(), offset=2)
    payment = accounts.payment()
    assert payment == Payment("s1", eur("30.00"), REFUNDED, None, 1, refunded_offset=2)
    accounts.rows[ALICE.encode()] = before  # the account's change was lost, the payment's not
    authorized = accounts.authorize(authorize(eur("30.00")), offset=1)
    assert isinstance(authorized.reply, PaymentAuthorized)
    assert accounts.account().balance == eur("70.00")
    refunded = accounts.cancel(cancel(), offset=2)
    assert isinstance(refunded.reply, PaymentCancelled) and refunded.reply.refunded == eur("30.00")
    account = accounts.account()
    assert (account.balance, account.captured_archived) == (eur("100.00"), eur("0.00"))
    assert accounts.authorize(authorize(eur("30.00")), offset=1) == Effect()  # all applied now


def test_a_cancel_replayed_after_it_was_applied_whole_refunds_nothing_more() -> None:
    accounts = funded()
    accounts.authorize(authorize(eur("30.00")), offset=1)
    accounts.cancel(cancel(), offset=2)
    refunded = accounts.account()
    assert refunded.balance == eur("100.00")
    assert accounts.cancel(cancel(), offset=2) == Effect()  # replayed after a crash
    assert accounts.account() == refunded
