"""Payment Service business logic: pure functions over a customer's rows. No I/O, no clock.

The `accounts` table (key customer id) holds, per customer:
- one `Account`: balance and totals, a fixed size however many payments were made;
- one `Payment` per saga (key: customer id, "payment", saga id): the business record
  of what the saga was charged, and what makes the handlers idempotent: a duplicate or
  late AuthorizePayment or CancelPayment finds it and gets the same reply (its own
  attempt echoed, replied_at=now), the account unchanged. Refusals are recorded too
  (FAILED with the reason), so a duplicate after a top-up is still refused; a cancel
  that comes first is recorded (CANCELLED), so a late authorize is refused. Payment rows
  are kept until the saga expires (ForgetPayment: see the README's Retention), like
  the orchestrator's saga rows.
- one `CommandApplied` per TopUp (key: customer id, "top-up", top-up id).

Money is conserved per account: balance + captured == topped_up, where captured
(`captured_archived`) is the sum of the AUTHORIZED payments; a refund (REFUNDED) gives
the amount back to the balance. A refund comes from the CreateOrderSaga's CancelPayment
(a payment not answered in time) or from a CancelOrderSaga's RefundPayment (a cancelled
order): either way the payment, keyed by the order's CreateOrderSaga (the order id),
becomes REFUNDED once. Counted over the payments: balance + every amount ever captured
(AUTHORIZED or REFUNDED) - the REFUNDED ones == topped_up.

Exact replays, as in the Product Service: a handler writes the saga's Payment (or the
top-up's marker) first and the Account last with the record's offset. A record at or
below the account's offset was applied whole. Otherwise the Payment may have been written
back after this record's move and maybe a later one: it records the offsets of its two
moves (decided, then refunded, by CancelPayment or RefundPayment), so the replay finds
its own and applies that decision to the account as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

from schemas.limits import MAX_AMOUNT, amount_problem, id_problem, reason, row_key
from schemas.messages import (
    Account,
    AuthorizePayment,
    CancelPayment,
    CommandApplied,
    ForgetPayment,
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

# Payment.status
AUTHORIZED = "AUTHORIZED"
REFUNDED = "REFUNDED"
CANCELLED = "CANCELLED"
FAILED = "FAILED"
PAYMENT_STATUSES = (AUTHORIZED, REFUNDED, CANCELLED, FAILED)

DEFAULT_CURRENCY = "EUR"  # of an account that never received money

CANCELLED_REASON = "payment cancelled"

AuthorizeReply: TypeAlias = PaymentAuthorized | PaymentFailed
Reply: TypeAlias = PaymentAuthorized | PaymentFailed | PaymentCancelled | PaymentRefunded
Row: TypeAlias = Account | Payment | CommandApplied


class InvalidTopUp(ValueError):
    """A TopUp that cannot be applied; the agent dead-letters it (it has no reply)."""


@dataclass(frozen=True)
class Effect:
    """Rows to write, in this order (the account last; None: delete it), and the reply."""

    rows: tuple[tuple[bytes, Row | None], ...] = ()
    reply: Reply | None = None


def payment_key(customer_id: str, saga_id: str) -> bytes:
    return row_key(customer_id, "payment", saga_id)


def top_up_key(customer_id: str, top_up_id: str) -> bytes:
    return row_key(customer_id, "top-up", top_up_id)


def authorize_payment(
    account: Account | None,
    payment: Payment | None,
    command: AuthorizePayment,
    now: datetime,
    offset: int,
) -> Effect:
    """Debit `command.amount` and reply PaymentAuthorized, or record why not (FAILED)
    and reply PaymentFailed: non-positive or too large amount, unknown customer, currency
    mismatch, insufficient funds, or the saga's payment was cancelled before
    (CancelPayment came first). A saga's payment is decided once; a duplicate is answered
    from it."""
    if _replayed(account, offset):
        return Effect()
    recorded = payment is not None and payment.decided_offset == offset  # a replay
    if payment is not None and not recorded:
        return Effect((), _authorize_reply(payment, command, now))
    if payment is None:
        refusal = _refusal(account, command.customer_id, command.amount)
        status = FAILED if refusal is not None else AUTHORIZED
        payment = Payment(command.saga_id, command.amount, status, refusal, offset)
    rows: list[tuple[bytes, Row]] = [(payment_key(command.customer_id, command.saga_id), payment)]
    if account is not None:  # an unknown customer gets no account, only the refusal
        if payment.status in (AUTHORIZED, REFUNDED):  # authorized by this command
            account = _moved(account, -payment.amount.amount)
        rows.append((command.customer_id.encode(), replace(account, applied_offset=offset)))
    return Effect(tuple(rows), _authorize_reply(payment, command, now))


def cancel_payment(
    account: Account | None,
    payment: Payment | None,
    command: CancelPayment,
    now: datetime,
    offset: int,
) -> Effect:
    """Refund the saga's AUTHORIZED payment (REFUNDED, amount back to the balance); if
    there is none yet, record it CANCELLED so a later authorize is refused. A FAILED or
    already refunded/cancelled payment stays as it is. The reply says what was refunded
    (zero when nothing had been charged)."""
    if _replayed(account, offset):
        return Effect()
    rows: tuple[tuple[bytes, Row], ...] = ()
    refund = Decimal(0)
    changed = True
    if payment is None:
        currency = account.balance.currency if account is not None else DEFAULT_CURRENCY
        payment = Payment(command.saga_id, _zero(currency), CANCELLED, None, offset)
    elif payment.refunded_offset == offset:  # a replay: this command refunded it
        refund = payment.amount.amount
    elif payment.status == AUTHORIZED:
        payment = replace(payment, status=REFUNDED, refunded_offset=offset)
        refund = payment.amount.amount
    elif payment.decided_offset != offset:  # else a replay: this command cancelled it
        changed = False
    if changed:
        rows = ((payment_key(command.customer_id, command.saga_id), payment),)
        if account is not None:
            account = replace(_moved(account, refund), applied_offset=offset)
            rows += ((command.customer_id.encode(), account),)
    refunded = payment.amount if payment.status == REFUNDED else _zero(payment.amount.currency)
    reply = PaymentCancelled(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
        refunded=refunded,
    )
    return Effect(rows, reply)


def refund_payment(
    account: Account | None,
    payment: Payment | None,
    command: RefundPayment,
    now: datetime,
    offset: int,
) -> Effect:
    """A CancelOrderSaga gives back what the order's CreateOrderSaga captured: `payment`
    is that saga's (key: customer, "payment", order id). AUTHORIZED -> REFUNDED, the
    amount back to the balance; the reply says what was refunded. Already REFUNDED: a
    duplicate, answered the same. No payment, FAILED or CANCELLED: nothing was captured,
    so nothing is refunded (zero, in the account's currency) and nothing changes; unlike
    CancelPayment nothing is recorded, since a cancel saga runs only for an approved
    order, whose payment was authorized before."""
    if _replayed(account, offset):
        return Effect()
    rows: tuple[tuple[bytes, Row], ...] = ()
    refund: Decimal | None = None
    if payment is not None and payment.refunded_offset == offset:  # a replay: it refunded
        refund = payment.amount.amount  # the payment, written back; the account not yet
    elif payment is not None and payment.status == AUTHORIZED:
        payment = replace(payment, status=REFUNDED, refunded_offset=offset)
        refund = payment.amount.amount
    if payment is not None and refund is not None:
        rows = ((payment_key(command.customer_id, command.order_id), payment),)
        if account is not None:
            account = replace(_moved(account, refund), applied_offset=offset)
            rows += ((command.customer_id.encode(), account),)
    if payment is not None and payment.status == REFUNDED:
        refunded = payment.amount
    else:
        refunded = _zero(account.balance.currency if account is not None else DEFAULT_CURRENCY)
    reply = PaymentRefunded(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.SUCCESS,
        replied_at=now,
        refunded=refunded,
    )
    return Effect(rows, reply)


def forget_payment(
    account: Account | None, payment: Payment | None, command: ForgetPayment, offset: int
) -> Effect:
    """An expired CreateOrderSaga: delete its payment, whatever its status; the account
    keeps its balance and totals (recording the offset, so a replay changes nothing). No
    reply.

    Nothing can come after it: the saga has ended, so it sends no more commands, and its
    last ones came on this partition before this one. A cancel of its order that could
    still refund it cannot be in flight: the orchestrator sends this only after the Order
    Service forgot the order, which it does not while a cancel holds it, and after which
    a cancel is refused."""
    if _replayed(account, offset) or payment is None:
        return Effect()
    rows: tuple[tuple[bytes, Row | None], ...] = (
        (payment_key(command.customer_id, command.saga_id), None),
    )
    if account is not None:
        rows += ((command.customer_id.encode(), replace(account, applied_offset=offset)),)
    return Effect(rows)


def top_up(
    account: Account | None, applied: CommandApplied | None, command: TopUp, offset: int
) -> Effect:
    """Credit the account (creating it), once per top_up_id. An account that never
    received money takes the top-up's currency.

    Raises InvalidTopUp for an amount that is not positive or too large, a currency that
    is not an ISO 4217 code or is not the account's, or a bad id: an admin message has no
    reply, so the agent dead-letters it.
    """
    if _replayed(account, offset) or (applied is not None and applied.applied_offset != offset):
        return Effect()
    problem = top_up_problem(account, command)
    if problem is not None:
        raise InvalidTopUp(f"top-up {command.top_up_id} of {command.customer_id}: {problem}")
    if account is None or account.topped_up.amount == 0:
        account = _in_currency(
            account or _empty_account(command.customer_id, command.amount.currency),
            command.amount.currency,
        )
    account = replace(
        account,
        balance=_plus(account.balance, command.amount.amount),
        topped_up=_plus(account.topped_up, command.amount.amount),
        applied_offset=offset,
    )
    marker = CommandApplied(command.top_up_id, offset)
    return Effect(
        (
            (top_up_key(command.customer_id, command.top_up_id), marker),
            (command.customer_id.encode(), account),
        )
    )


def top_up_problem(account: Account | None, command: TopUp) -> str | None:
    """Why a TopUp cannot be applied (None if it can)."""
    for what, value in (("customer id", command.customer_id), ("top-up id", command.top_up_id)):
        problem = id_problem(what, value)
        if problem is not None:
            return problem
    problem = amount_problem("amount", command.amount)
    if problem is not None:
        return problem
    if command.amount.amount <= 0:
        return f"amount {command.amount.amount} is not positive"
    if account is None or account.topped_up.amount == 0:
        return None
    if command.amount.currency != account.balance.currency:
        return f"currency {command.amount.currency}, the account holds {account.balance.currency}"
    if account.topped_up.amount + command.amount.amount > MAX_AMOUNT:
        return f"the account would have received more than {MAX_AMOUNT} in all"
    return None


def account_invariant_violations(
    account: Account, payments: list[Payment] | None = None
) -> list[str]:
    """Broken money invariants of one account (empty when sound): never overdrawn, one
    currency, conservation (balance + captured == topped_up), and, given its payments,
    that captured is what its AUTHORIZED payments took and that money is conserved
    counted over them: balance + every amount ever captured (AUTHORIZED or REFUNDED) -
    the REFUNDED ones == topped_up."""
    currency = account.balance.currency
    problems: list[str] = []
    if account.balance.amount < 0:
        problems.append(f"balance is negative: {account.balance.amount}")
    for name, money in (("topped_up", account.topped_up), ("captured", account.captured_archived)):
        if money.currency != currency:
            problems.append(f"{name} is in {money.currency}, the balance in {currency}")
        if money.amount < 0:
            problems.append(f"{name} is negative: {money.amount}")
    total = account.balance.amount + account.captured_archived.amount
    if total != account.topped_up.amount:
        problems.append(
            f"money not conserved: balance {account.balance.amount} + captured"
            f" {account.captured_archived.amount} != topped up {account.topped_up.amount}"
        )
    if payments is not None:
        authorized = sum((p.amount.amount for p in payments if p.status == AUTHORIZED), Decimal(0))
        if authorized != account.captured_archived.amount:
            problems.append(
                f"captured {account.captured_archived.amount} != AUTHORIZED payments {authorized}"
            )
        refunded = sum((p.amount.amount for p in payments if p.status == REFUNDED), Decimal(0))
        captured = authorized + refunded  # every amount ever captured
        if account.balance.amount + captured - refunded != account.topped_up.amount:
            problems.append(
                f"money not conserved over the payments: balance {account.balance.amount}"
                f" + captured {captured} - refunded {refunded}"
                f" != topped up {account.topped_up.amount}"
            )
        problems += _payment_violations(payments, currency)
    return problems


# ---- helpers ----


def _replayed(account: Account | None, offset: int) -> bool:
    """Was the record at `offset` applied whole already (a replay after a crash)?"""
    return account is not None and offset <= account.applied_offset


def _refusal(account: Account | None, customer_id: str, amount: Money) -> str | None:
    """Why `amount` cannot be debited from the customer's `account` (None: it can)."""
    problem = amount_problem("amount", amount)
    if problem is not None:
        return reason(problem)
    if amount.amount <= 0:
        return f"non-positive amount: {amount.amount} {amount.currency}"
    if account is None or account.topped_up.amount == 0:  # none, or never received money
        return f"unknown customer: {customer_id}"
    balance = account.balance
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
    why = CANCELLED_REASON if payment.status == CANCELLED else payment.reason
    return PaymentFailed(
        saga_id=command.saga_id,
        command_id=command.command_id,
        attempt=command.attempt,
        outcome=Outcome.FAILURE,
        replied_at=now,
        reason=why or "payment failed",
    )


def _moved(account: Account, to_balance: Decimal) -> Account:
    """`to_balance` moved from captured to the balance (negative: a debit)."""
    return replace(
        account,
        balance=_plus(account.balance, to_balance),
        captured_archived=_plus(account.captured_archived, -to_balance),
    )


def _payment_violations(payments: list[Payment], currency: str) -> list[str]:
    problems: list[str] = []
    for p in payments:
        if p.status not in PAYMENT_STATUSES:
            problems.append(f"saga {p.saga_id}: unknown payment status {p.status}")
        if p.status in (AUTHORIZED, REFUNDED):
            if p.amount.amount <= 0:
                problems.append(f"saga {p.saga_id}: {p.status} amount {p.amount.amount} <= 0")
            if p.amount.currency != currency:
                problems.append(f"saga {p.saga_id}: paid in {p.amount.currency}, not {currency}")
    return problems


def _empty_account(customer_id: str, currency: str) -> Account:
    zero = _zero(currency)
    return Account(customer_id=customer_id, balance=zero, topped_up=zero, captured_archived=zero)


def _in_currency(account: Account, currency: str) -> Account:
    """An account that never received money (all totals zero) switched to `currency`."""
    return replace(
        account,
        balance=Money(account.balance.amount, currency),
        topped_up=Money(account.topped_up.amount, currency),
        captured_archived=Money(account.captured_archived.amount, currency),
    )


def _zero(currency: str) -> Money:
    return Money(Decimal("0.00"), currency)


def _plus(money: Money, amount: Decimal) -> Money:
    return Money(money.amount + amount, money.currency)
