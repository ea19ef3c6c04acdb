"""The Order Service under crashes, in the worker model of tests/unit/worker_model.py:
replays are exact. Any log of order commands (both sagas', duplicated, re-sent, in any
order) handled by a worker that crashes anywhere, mid-commit included, ends with the same
rows as handling it once without a crash, and sends no answer that run would not send."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from participants.order import logic
from schemas.messages import (
    ApproveOrder,
    BeginCancelOrder,
    ConfirmCancelOrder,
    CreateOrder,
    OrderCancel,
    OrderItem,
    OrderRow,
    RejectOrder,
    UndoBeginCancelOrder,
)
from tests.unit.worker_model import ModelWorker

T0 = datetime(2025, 1, 1, tzinfo=UTC)
COMMANDS, REPLIES = "order.commands", "saga.replies"
ORDERS = ("o1", "o2")
CANCELS = ("k1", "k2", "k3")


def handle(topic: str, key: bytes, message: Any, offset: int, rows: dict[bytes, Any]) -> Any:
    """What the Order Service's agent does with a record (participants/order/app.py)."""
    assert key == message.order_id.encode()
    row = rows.get(key)
    if isinstance(message, CreateOrder):
        effect = logic.create_order(row, message, T0, offset)
    elif isinstance(message, ApproveOrder):
        effect = logic.approve_order(row, message, T0, offset)
    elif isinstance(message, RejectOrder):
        effect = logic.reject_order(row, message, T0, offset)
    else:
        cancel = rows.get(logic.cancel_key(message.order_id, message.saga_id))
        decide: Any = {
            BeginCancelOrder: logic.begin_cancel_order,
            UndoBeginCancelOrder: logic.undo_begin_cancel_order,
            ConfirmCancelOrder: logic.confirm_cancel_order,
        }[type(message)]
        effect = decide(row, cancel, message, T0, offset)
    sends = [] if effect.reply is None else [(REPLIES, effect.reply.saga_id.encode(), effect.reply)]
    return list(effect.rows), sends


def command(kind: str, order: str, saga: str, attempt: int) -> Any:
    head = (order if kind in ("create", "approve", "reject") else saga, "", attempt, T0)
    if kind == "create":
        return CreateOrder(*head, order, "c1", [OrderItem("p1", 1)])
    if kind == "approve":
        return ApproveOrder(*head, order)
    if kind == "reject":
        return RejectOrder(*head, order, "no")
    cls = {"begin": BeginCancelOrder, "undo": UndoBeginCancelOrder, "confirm": ConfirmCancelOrder}
    return cls[kind](*head, order)


st_command = st.builds(
    command,
    # approvals weigh more: cancels should find approved orders
    st.sampled_from(
        ["create", "approve", "approve", "reject", "begin", "begin", "undo", "confirm"]
    ),
    st.sampled_from(ORDERS),
    st.sampled_from(CANCELS),
    st.integers(1, 3),
)


def flow(order: str, saga: str, ending: str, resends: int) -> list[Any]:
    """What a cancel saga sends: begin (re-sent), then undo or confirm (or nothing)."""
    sent = [command("begin", order, saga, a) for a in range(1, resends + 2)]
    return sent if ending == "none" else [*sent, command(ending, order, saga, 1)]


st_flow = st.builds(
    flow,
    st.sampled_from(ORDERS),
    st.sampled_from(CANCELS),
    st.sampled_from(["undo", "confirm", "none"]),
    st.integers(0, 2),
)


@settings(max_examples=300, deadline=None)
@given(
    head=st.lists(st_command, max_size=6),
    flows=st.lists(st_flow, max_size=4),
    noise=st.lists(st_command, max_size=12),
    seed=st.integers(0, 2**32 - 1),
    crash_every=st.sampled_from([0.05, 0.1, 0.2]),
)
def test_replays_after_crashes_are_exact(
    head: list[Any], flows: list[list[Any]], noise: list[Any], seed: int, crash_every: float
) -> None:
    rng = random.Random(seed)
    approved = [
        c for o in ORDERS for c in (command("create", o, "", 1), command("approve", o, "", 1))
    ]
    tail = list(noise)
    for sent in flows:  # each saga's commands in their order, among the others
        at = sorted(rng.randrange(len(tail) + 1) for _ in sent)
        for i, (position, message) in enumerate(zip(at, sent, strict=True)):
            tail.insert(position + i, message)
    log = head + approved + tail
    once = ModelWorker([COMMANDS], handle, random.Random(seed))
    crashing = ModelWorker([COMMANDS], handle, rng)
    for message in log:
        for worker in (once, crashing):
            worker.append(COMMANDS, message.order_id.encode(), message)
    once.drain()
    while crashing.pending():
        crashing.run(steps=3, crash_every=crash_every)
    crashing.drain()

    assert crashing.memory == once.memory
    answers = {repr(reply) for _key, reply in once.log(REPLIES)}
    assert {repr(reply) for _key, reply in crashing.log(REPLIES)} == answers
    for order in ORDERS:
        row = once.memory.get(order.encode())
        cancels = [
            r
            for k, r in once.memory.items()
            if isinstance(r, OrderCancel) and k.startswith(order.encode() + b"\x00")
        ]
        if isinstance(row, OrderRow):
            assert logic.order_invariant_violations(row, cancels) == []
