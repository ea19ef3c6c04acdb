"""The Payment Service under crashes and duplicates, in the worker model of
tests/unit/worker_model.py: money adds up, no saga is charged twice, a cancelled saga
keeps no money, and a cancelled order's payment is refunded once, however the commands
were repeated and the worker crashed."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from participants.payment import logic
from participants.payment.logic import AUTHORIZED, REFUNDED
from schemas.messages import (
    Account,
    AuthorizePayment,
    CancelPayment,
    Money,
    Payment,
    PaymentAuthorized,
    PaymentCancelled,
    PaymentFailed,
    PaymentRefunded,
    RefundPayment,
    TopUp,
)
from tests.unit.worker_model import ModelWorker

T0 = datetime(2025, 1, 1, tzinfo=UTC)
COMMANDS, REPLIES = "payment.commands", "saga.replies"
CUSTOMERS = ("ann", "bob")


def eur(amount: int) -> Money:
    return Money(Decimal(amount).quantize(Decimal("0.01")), "EUR")


def handle(topic: str, key: bytes, message: object, offset: int, rows: dict[bytes, Any]) -> Any:
    """What the Payment Service's agent does with a record (participants/payment/app.py)."""
    account = rows.get(key)
    if isinstance(message, TopUp):
        applied = rows.get(logic.top_up_key(message.customer_id, message.top_up_id))
        effect = logic.top_up(account, applied, message, offset)
    else:
        assert isinstance(message, (AuthorizePayment, CancelPayment, RefundPayment))
        payment = rows.get(logic.payment_key(message.customer_id, message.order_id))
        if isinstance(message, AuthorizePayment):
            effect = logic.authorize_payment(account, payment, message, T0, offset)
        elif isinstance(message, CancelPayment):
            effect = logic.cancel_payment(account, payment, message, T0, offset)
        else:
            effect = logic.refund_payment(account, payment, message, T0, offset)
    sends = [] if effect.reply is None else [(REPLIES, key, effect.reply)]
    return list(effect.rows), sends


@settings(max_examples=150, deadline=None)
@given(
    amounts=st.lists(st.integers(1, 40), min_size=1, max_size=10),
    seed=st.integers(0, 2**32 - 1),
    crash_every=st.sampled_from([0.0, 0.05, 0.2]),
)
def test_money_adds_up_after_crashes_and_duplicates(
    amounts: list[int], seed: int, crash_every: float
) -> None:
    rng = random.Random(seed)
    worker = ModelWorker([COMMANDS], handle, rng)
    topped_up = {c: 0 for c in CUSTOMERS}
    commands: list[Any] = []
    for customer in CUSTOMERS:
        for i in range(rng.randint(1, 2)):
            top_up = TopUp(f"t{i}", customer, eur(rng.randint(10, 60)))
            topped_up[customer] += int(top_up.amount.amount)
            commands += [top_up] * rng.randint(1, 2)  # sometimes published twice
    cancelled: set[str] = set()
    sagas: dict[str, str] = {}
    for i, amount in enumerate(amounts):
        saga, customer = f"s{i}", rng.choice(CUSTOMERS)
        sagas[saga] = customer
        authorize = AuthorizePayment(
            saga, f"{saga}:authorize_payment", 1, T0, saga, customer, eur(amount)
        )
        commands += [replace(authorize, attempt=a) for a in range(1, rng.randint(1, 3) + 1)]
        if rng.random() < 0.4:  # a deadline cancelled it, before or after it came
            cancelled.add(saga)
            cancel = CancelPayment(saga, f"{saga}:cancel_payment", 1, T0, saga, customer)
            at = rng.randint(0, len(commands))
            commands.insert(at, cancel)
    rng.shuffle(commands) if rng.random() < 0.2 else None  # customers' orders interleave
    refunded: set[str] = set()
    for saga, customer in sagas.items():
        if saga in cancelled or rng.random() < 0.5:
            continue
        # the order was approved, then cancelled: its refund comes after the authorize,
        # re-sent sometimes
        refunded.add(saga)
        first = next(
            i
            for i, c in enumerate(commands)
            if isinstance(c, AuthorizePayment) and c.saga_id == saga
        )
        for attempt in range(1, rng.randint(1, 3) + 1):
            refund = RefundPayment(
                f"k{saga}", f"k{saga}:refund_payment", attempt, T0, saga, customer
            )
            commands.insert(rng.randint(first + 1, len(commands)), refund)
    for command in commands:
        worker.append(COMMANDS, command.customer_id.encode(), command)
        worker.run(steps=rng.randint(0, 3), crash_every=crash_every)
    worker.drain()

    rows = worker.memory
    replies: dict[str, set[str]] = {}
    refunds: dict[str, set[Money]] = {}  # what each cancel saga was told was refunded
    for _key, reply in worker.log(REPLIES):
        if isinstance(reply, PaymentRefunded):
            refunds.setdefault(reply.saga_id.removeprefix("k"), set()).add(reply.refunded)
            continue
        assert isinstance(reply, (PaymentAuthorized, PaymentFailed, PaymentCancelled))
        replies.setdefault(reply.saga_id, set()).add(type(reply).__name__)
    for saga, kinds in replies.items():
        assert not {"PaymentAuthorized", "PaymentFailed"} <= kinds, (saga, kinds)  # one answer
    for customer in CUSTOMERS:
        account = rows[customer.encode()]
        assert isinstance(account, Account)
        payments = [
            r for k, r in rows.items() if isinstance(r, Payment) and sagas[r.saga_id] == customer
        ]
        assert logic.account_invariant_violations(account, payments) == []
        assert account.topped_up == eur(topped_up[customer])
        for payment in payments:
            if payment.saga_id in cancelled | refunded:
                assert payment.status != AUTHORIZED, payment  # a cancelled saga keeps no money
            if payment.saga_id in refunded:  # one answer: what was refunded, once
                zero = eur(0)
                given_back = payment.amount if payment.status == REFUNDED else zero
                assert refunds[payment.saga_id] == {given_back}, (payment, refunds)
    assert set(refunds) == refunded
