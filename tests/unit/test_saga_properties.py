"""Property tests of decide(CREATE_ORDER, ): random, duplicated, reordered and stale messages.

Participants are modelled as answering *any* command the saga ever sent, at any time,
any number of times, with success or failure: that covers in-order replies, duplicates,
reordering and replies to old attempts or abandoned steps. Timeouts come from the
timer (`expired`) or are forged with random step/attempt.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from orchestrator.engine import command_id, decide, expired
from orchestrator.sagas.create_order import DEFINITION as CREATE_ORDER_SAGA
from orchestrator.sagas.create_order import SAGA as CREATE_ORDER
from schemas.messages import (
    ApproveOrder,
    CancelPayment,
    RejectOrder,
    ReleaseProducts,
    SagaEvent,
    SagaState,
    StepTimedOut,
)
from tests.unit.saga_factories import (
    REPLY_TYPES,
    SAGA,
    T0,
    answer,
    reply,
    reply_for,
    requested,
)

STEP_NAMES = [step.name for step in CREATE_ORDER_SAGA.steps]
# longest reply-only path from any state to a terminal one is 5; allow every state once
BOUND = len(CREATE_ORDER_SAGA.states)


class SagaUnderFire(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = T0
        self.saga: SagaState | None = None
        self.events: list[SagaEvent] = []
        self.sent: list[Any] = []
        self.fed: list[Any] = []

    # ---- feeding decide(CREATE_ORDER, ) and checking every single decision ----

    def feed(self, message: Any) -> None:
        before = self.saga
        decision = decide(CREATE_ORDER, before, message, self.now)
        self.fed.append(message)
        if before is not None and CREATE_ORDER_SAGA.is_terminal(before.state):
            assert decision.state is before, "a terminal saga changed"
        assert len(decision.events) <= 1
        if not decision.events:
            assert decision.state is before and decision.commands == ()
        else:
            (event,) = decision.events
            assert decision.state is not None
            assert event.sequence == decision.state.sequence
            assert event.to_state == decision.state.state
            assert event.from_state == (None if before is None else before.state)
            assert event.commands == [type(c).__name__ for c in decision.commands]
            assert event.terminal == CREATE_ORDER_SAGA.is_terminal(decision.state.state)
            assert decision.state.updated_at == self.now
            if type(message) in REPLY_TYPES:
                assert before is not None and self.answers_a_sent_command(message, before)
        for command in decision.commands:
            step = CREATE_ORDER_SAGA.step_for_command(type(command))
            notices = {n.command: n for n in CREATE_ORDER_SAGA.notifications}
            name = step.name if step is not None else notices[type(command)].name
            assert command.command_id == command_id(SAGA, name)
            assert command.attempt >= 1 and command.sent_at == self.now
            CREATE_ORDER.route(command)
        self.saga = decision.state
        self.events.extend(decision.events)
        self.sent.extend(decision.commands)

    def answers_a_sent_command(self, message: Any, saga: SagaState) -> bool:
        """An accepted reply answers a command that was sent, for the step awaited."""
        sent = {(c.command_id, c.attempt) for c in self.sent}
        awaited = command_id(SAGA, saga.step or "")
        return message.command_id == awaited and (message.command_id, message.attempt) in sent

    @property
    def terminal(self) -> bool:
        return self.saga is not None and CREATE_ORDER_SAGA.is_terminal(self.saga.state)

    # ---- rules ----

    @initialize()
    def order_requested(self) -> None:
        self.feed(requested())

    @rule(seconds=st.integers(min_value=0, max_value=90))
    def clock_moves(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @precondition(lambda self: any(self.answerable(c) for c in self.sent))
    @rule(data=st.data(), success=st.booleans())
    def participant_answers_some_command(self, data: st.DataObject, success: bool) -> None:
        command = data.draw(st.sampled_from([c for c in self.sent if self.answerable(c)]))
        self.feed(answer(command, success, at=self.now))

    @staticmethod
    def answerable(command: Any) -> bool:
        """A step's command gets a reply; a notification's does not."""
        return CREATE_ORDER_SAGA.step_for_command(type(command)) is not None

    @precondition(lambda self: not self.terminal)
    @rule(success=st.booleans())
    def participant_answers_current_step(self, success: bool) -> None:
        assert self.saga is not None
        self.feed(reply_for(self.saga, success))

    @rule(
        reply_type=st.sampled_from(REPLY_TYPES),
        step=st.none() | st.sampled_from(STEP_NAMES),
        attempt=st.integers(min_value=-1, max_value=12),
    )
    def forged_reply(self, reply_type: type, step: str | None, attempt: int) -> None:
        self.feed(reply(reply_type, step, attempt, at=self.now))

    @rule()
    def timer_fires(self) -> None:
        if self.saga is not None and (timeout := expired(self.saga, self.now)) is not None:
            self.feed(timeout)

    @rule(step=st.sampled_from(STEP_NAMES), attempt=st.integers(min_value=0, max_value=12))
    def forged_timeout(self, step: str, attempt: int) -> None:
        self.feed(StepTimedOut(SAGA, step, attempt, self.now, self.now))

    @precondition(lambda self: bool(self.fed))
    @rule(data=st.data())
    def duplicate_of_an_earlier_message(self, data: st.DataObject) -> None:
        self.feed(data.draw(st.sampled_from(self.fed)))

    @rule(choices=st.lists(st.booleans(), min_size=BOUND, max_size=BOUND))
    def correct_replies_reach_the_end(self, choices: list[bool]) -> None:
        for success in choices:
            if self.terminal:
                break
            assert self.saga is not None
            self.feed(reply_for(self.saga, success))
        assert self.terminal, f"not terminal after {BOUND} correct replies: {self.saga}"

    # ---- invariants ----

    @invariant()
    def waiting_saga_has_a_step_and_a_future_deadline(self) -> None:
        saga = self.saga
        assert saga is not None
        if CREATE_ORDER_SAGA.is_terminal(saga.state):
            assert saga.step is None and saga.deadline is None
        else:
            assert saga.step is not None and saga.deadline is not None
            assert saga.deadline > saga.updated_at
            assert saga.attempt >= 1

    @invariant()
    def sequence_counts_the_events(self) -> None:
        assert self.saga is not None
        assert self.saga.sequence == len(self.events)
        assert [e.sequence for e in self.events] == list(range(1, len(self.events) + 1))

    @invariant()
    def outcomes_are_consistent(self) -> None:
        assert self.saga is not None
        sent = {type(c) for c in self.sent}
        if self.saga.state == "ORDER_APPROVED":
            assert not sent & {CancelPayment, ReleaseProducts, RejectOrder}
        if self.saga.state == "ORDER_REJECTED":
            assert ApproveOrder not in sent
            assert self.saga.reason
        terminals = [e for e in self.events if e.terminal]
        assert len(terminals) <= 1 and (not terminals or terminals[0] is self.events[-1])


SagaUnderFire.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_saga_under_fire = SagaUnderFire.TestCase
