"""The saga engine: runs any saga declared as data. It imports no saga.

Public surface (everything a saga module or a worker needs):

- declaring a saga: `SagaDefinition` of `Step`, `State`, `Transition` and `Notification`,
  `StepKind`, deadlines (`backoff`, `single_deadline`), `DEADLINE` (the trigger of a
  deadline transition); and `SagaType`, which adds what the engine cannot know: `Start`
  (what a request puts in the row), command builders, `Route`s, `absorb`, reasons, and
  `Forget` (what its participants forget once it expired).
  Definitions are checked when the SagaType is built (`DefinitionError`).
- deciding: `decide(saga, row, message, now) -> Decision`, pure; an operator's action
  (AbortSaga, RetrySaga) with `act(saga, row, action, now)`, answered in `Decision.answer`;
  retention (ExpireSaga, and the answer of a forget gate) with `expire` and `forgotten`,
  whose Decision deletes the row (`Decision.deleted`).
- running: `orchestrator.engine.runner.SagaRunner`, a Faust worker for a set of saga
  types; `orchestrator.engine.diagram.mermaid` draws a definition.
"""

from orchestrator.engine.definition import (
    DEADLINE,
    DefinitionError,
    Notification,
    SagaDefinition,
    State,
    Step,
    StepKind,
    Timeout,
    Transition,
    backoff,
    command_id,
    single_deadline,
    validate,
)
from orchestrator.engine.machine import (
    Decision,
    DefinitionMissing,
    act,
    decide,
    expire,
    expired,
    forgotten,
)
from orchestrator.engine.retention import RetentionError, parse_retention
from orchestrator.engine.saga import Forget, Route, SagaType, Start

__all__ = [
    "DEADLINE",
    "Decision",
    "DefinitionError",
    "DefinitionMissing",
    "Forget",
    "Notification",
    "RetentionError",
    "Route",
    "SagaDefinition",
    "SagaType",
    "Start",
    "State",
    "Step",
    "StepKind",
    "Timeout",
    "Transition",
    "act",
    "backoff",
    "command_id",
    "decide",
    "expire",
    "expired",
    "forgotten",
    "parse_retention",
    "single_deadline",
    "validate",
]
