"""The orchestrator's in-memory deadline index (no broker)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

from orchestrator.engine.deadlines import DeadlineWatch
from tests.unit.saga_factories import saga_in


def test_due_fires_once_per_step_and_attempt() -> None:
    watch = DeadlineWatch()
    saga = saga_in("VERIFYING_PRODUCTS")
    assert saga.deadline is not None
    watch.update(b"s1", saga)
    assert watch.due(saga.deadline - timedelta(milliseconds=1)) == []
    [(key, timeout)] = watch.due(saga.deadline)
    assert (key, timeout.step, timeout.attempt) == (b"s1", "verify_products", 1)
    assert watch.due(saga.deadline + timedelta(seconds=5)) == []  # not again
    watch.update(b"s1", replace(saga, attempt=2))
    assert [t.attempt for _k, t in watch.due(saga.deadline)] == [2]


def test_terminal_sagas_leave_the_index() -> None:
    watch = DeadlineWatch()
    watch.update(b"s1", saga_in("APPROVING_ORDER"))
    watch.update(b"s1", saga_in("ORDER_APPROVED"))
    assert watch.open == {}


def test_rescan_keeps_what_the_agent_wrote_during_the_scan() -> None:
    watch = DeadlineWatch()
    old = saga_in("VERIFYING_PRODUCTS")
    newer = replace(old, state="AUTHORIZING_PAYMENT", step="authorize_payment")

    def rows():  # the agent writes s1 while the scan is under way
        yield b"s1", old
        watch.update(b"s1", newer)
        yield b"s2", old
        yield b"s3", saga_in("ORDER_REJECTED")

    asyncio.run(watch.rescan(rows()))
    assert watch.open == {b"s1": newer, b"s2": old}
    assert not watch.needs_rescan
