"""Payment Service business logic: pure functions over one `accounts` row (key customer id).

The agent reads the account (or None), calls a handler, assigns the returned account back
(when it is a new object) and sends the reply to saga.replies. No I/O, no clock.

An account holds at most one `Payment` per saga; it is both the business record and what
makes the handlers idempotent: a duplicate AuthorizePayment or CancelPayment finds the
saga's payment and gets the same reply again (its own attempt echoed, replied_at=now),
the account unchanged. Refusals are recorded too (status FAILED with the reason), so a
duplicate arriving after a top-up is still refused rather than charged.

Bounded: `payments` keeps the latest MAX_PAYMENTS. A pruned AUTHORIZED payment moves its
amount into `captured_archived`, so money stays accounted for:

    balance + sum(AUTHORIZED payments) + captured_archived == topped_up

(DESIGN §5 "balances + captured - refunds == top-ups": a refund turns AUTHORIZED into
REFUNDED and gives the amount back to the balance.) Commands for one customer arrive in
order on one partition, so a duplicate or a CancelPayment lags its AuthorizePayment by
far fewer than MAX_PAYMENTS payments of the same customer.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

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

# Payment.status
AUTHORIZED = "AUTHORIZED"
REFUNDED = "REFUNDED"
CANCELLED = "CANCELLED"
FAILED = "FAILED"
PAYMENT_STATUSES = (AUTHORIZED, REFUNDED, CANCELLED, FAILED)

MAX_PAYMENTS = 1000
MAX_TOP_UP_IDS = 1000
DEFAULT_CURRENCY = "EUR"  # of an account that never received money

CANCELLED_REASON = "payment cancelled"

AuthorizeReply: TypeAlias = PaymentAuthorized | PaymentFailed


class InvalidTopUp(ValueError):
    """A TopUp that cannot be applied; the agent dead-letters it (it has no reply)."""


def authorize_payment(
    account: Account | None, command: AuthorizePayment, now: datetime
) -> tuple[Account, AuthorizeReply]:
    """Debit `command.amount` and reply PaymentAuthorized, or record why not (FAILED)
    and reply PaymentFailed: non-positive amount, unknown customer, currency mismatch,
    insufficient funds, or the saga's payment was cancelled before (CancelPayment came
    first). An unknown customer gets an empty account holding that refusal, so a
    duplicate after a later top-up is refused the same way."""
    if account is None:
        account = _empty_account(command.customer_id, command.amount.currency)
    payment = _payment_of(account, command.saga_id)
    if payment is None:
        payment, account = _decide_authorization(account, command)
    return account, _authorize_reply(payment, command, now)


def cancel_payment(
    account: Account | None, command: CancelPayment, now: datetime
) -> tuple[Account, PaymentCancelled]:
    """Refund the saga's AUTHORIZED payment (REFUNDED, amount back to the balance); if
    there is none yet, record it CANCELLED so a later authorize is refused. A FAILED or
    already refunded/cancelled payment stays as it is. The reply says what was refunded
    (zero when nothing had been charged)."""
    if account is None:
        account = _empty_account(command.customer_id, DEFAULT_CURRENCY)
    payment = _payment_of(account, command.saga_id)
    if payment is None:
        payment = Payment(command.saga_id, _zero(account), CANCELLED)
        account = _add_payment(account, payment)
    elif payment.status == AUTHORIZED:
        payment = replace(payment, status=REFUNDED)
        account = replace(
            account,
            balance=_plus(account.balance, payment.amount.amount),
            payments=[payment if p.saga_id == payment.saga_id else p for p in account.payments],
        )
    # the payment's own currency: the account's may change (see top_up), the reply must not
    refunded = payment.amount if payment.status == REFUNDED else _zero_like(payment.amount)
    reply = PaymentCancelled(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
        refunded=refunded,
    )
    return account, reply


def top_up(account: Account | None, command: TopUp) -> Account:
    """Credit the account (creating it). Idempotent on top_up_id (the latest
    MAX_TOP_UP_IDS are remembered). An account that never received money takes the
    top-up's currency.

    Raises InvalidTopUp for a non-positive amount or a currency other than the account's:
    an admin message has no reply, so the agent dead-letters it.
    """
    if account is not None and command.top_up_id in account.top_up_ids:
        return account
    if command.amount.amount <= 0:
        raise InvalidTopUp(f"top-up {command.top_up_id}: amount {command.amount.amount} <= 0")
    if account is None or account.topped_up.amount == 0:
        account = _in_currency(
            account or _empty_account(command.customer_id, command.amount.currency),
            command.amount.currency,
        )
    if command.amount.currency != account.balance.currency:
        raise InvalidTopUp(
            f"top-up {command.top_up_id}: currency {command.amount.currency},"
            f" account {command.customer_id} holds {account.balance.currency}"
        )
    return replace(
        account,
        balance=_plus(account.balance, command.amount.amount),
        topped_up=_plus(account.topped_up, command.amount.amount),
        top_up_ids=[*account.top_up_ids, command.top_up_id][-MAX_TOP_UP_IDS:],
    )


def account_invariant_violations(account: Account) -> list[str]:
    """Broken money invariants of one account (empty when sound): never overdrawn, one
    currency, at most one payment per saga, and conservation:
    balance + sum(AUTHORIZED) + captured_archived == topped_up."""
    currency = account.balance.currency
    problems: list[str] = []
    if account.balance.amount < 0:
        problems.append(f"balance is negative: {account.balance.amount}")
    for name, money in (
        ("topped_up", account.topped_up),
        ("captured_archived", account.captured_archived),
    ):
        if money.currency != currency:
            problems.append(f"{name} is in {money.currency}, the balance in {currency}")
        if money.amount < 0:
            problems.append(f"{name} is negative: {money.amount}")
    problems += _payment_violations(account)
    held = sum((p.amount.amount for p in account.payments if p.status == AUTHORIZED), Decimal(0))
    total = account.balance.amount + held + account.captured_archived.amount
    if total != account.topped_up.amount:
        problems.append(
            f"money not conserved: balance {account.balance.amount} + authorized {held}"
            f" + archived {account.captured_archived.amount} != topped up"
            f" {account.topped_up.amount}"
        )
    return problems


# ---- helpers ----


def _decide_authorization(account: Account, command: AuthorizePayment) -> tuple[Payment, Account]:
    """The saga's first AuthorizePayment: debit, or record the refusal."""
    reason = _refusal(account, command.amount)
    if reason is not None:
        payment = Payment(command.saga_id, command.amount, FAILED, reason)
        return payment, _add_payment(account, payment)
    payment = Payment(command.saga_id, command.amount, AUTHORIZED)
    debited = replace(account, balance=_plus(account.balance, -command.amount.amount))
    return payment, _add_payment(debited, payment)


def _refusal(account: Account, amount: Money) -> str | None:
    """Why `amount` cannot be debited from `account` (None: it can)."""
    balance = account.balance
    if amount.amount <= 0:
        return f"non-positive amount: {amount.amount} {amount.currency}"
    if account.topped_up.amount == 0:  # no account, or one that never received money
        return f"unknown customer: {account.customer_id}"
    if amount.currency != balance.currency:
        return f"currency mismatch: account in {balance.currency}, payment in {amount.currency}"
    if balance.amount < amount.amount:
        return (
            f"insufficient funds: balance {balance.amount} {balance.currency},"
            f" amount {amount.amount} {amount.currency}"
        )
    return None


def _authorize_reply(payment: Payment, command: AuthorizePayment, now: datetime) -> AuthorizeReply:
    """The answer to AuthorizePayment, rebuilt from the saga's payment."""
    if payment.status in (AUTHORIZED, REFUNDED):  # REFUNDED: it was authorized first
        return PaymentAuthorized(
            saga_id=command.saga_id,
            command_id=command.command_id,
            attempt=command.attempt,
            outcome=Outcome.SUCCESS,
            replied_at=now,
            amount=payment.amount,
        )
    reason = CANCELLED_REASON if payment.status == CANCELLED else payment.reason
    return PaymentFailed(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.FAILURE,
        replied_at=now,
        reason=reason or "payment failed",
    )


def _payment_of(account: Account, saga_id: str) -> Payment | None:
    return next((p for p in account.payments if p.saga_id == saga_id), None)


def _add_payment(account: Account, payment: Payment) -> Account:
    """Append; beyond MAX_PAYMENTS drop the oldest, archiving captured money."""
    payments = [*account.payments, payment]
    pruned, kept = payments[:-MAX_PAYMENTS], payments[-MAX_PAYMENTS:]
    archived = sum((p.amount.amount for p in pruned if p.status == AUTHORIZED), Decimal(0))
    return replace(
        account,
        payments=kept,
        captured_archived=_plus(account.captured_archived, archived),
    )


def _payment_violations(account: Account) -> list[str]:
    currency = account.balance.currency
    problems: list[str] = []
    seen: set[str] = set()
    for p in account.payments:
        if p.saga_id in seen:
            problems.append(f"saga {p.saga_id} has several payments")
        seen.add(p.saga_id)
        if p.status not in PAYMENT_STATUSES:
            problems.append(f"saga {p.saga_id}: unknown payment status {p.status}")
        if p.status in (AUTHORIZED, REFUNDED):
            if p.amount.amount <= 0:
                problems.append(f"saga {p.saga_id}: {p.status} amount {p.amount.amount} <= 0")
            if p.amount.currency != currency:
                problems.append(f"saga {p.saga_id}: paid in {p.amount.currency}, not {currency}")
    return problems


def _empty_account(customer_id: str, currency: str) -> Account:
    zero = Money(Decimal("0.00"), currency)
    return Account(customer_id=customer_id, balance=zero, topped_up=zero, captured_archived=zero)


def _in_currency(account: Account, currency: str) -> Account:
    """An account that never received money (all totals zero) switched to `currency`."""
    return replace(
        account,
        balance=Money(account.balance.amount, currency),
        topped_up=Money(account.topped_up.amount, currency),
        captured_archived=Money(account.captured_archived.amount, currency),
    )


def _zero(account: Account) -> Money:
    return Money(Decimal("0.00"), account.balance.currency)


def _zero_like(money: Money) -> Money:
    return Money(Decimal("0.00"), money.currency)


def _plus(money: Money, amount: Decimal) -> Money:
    return Money(money.amount + amount, money.currency)
