"""Mermaid `stateDiagram-v2` of a saga, generated from its definition.

`python -m orchestrator.diagram` prints the diagram of every saga the orchestrator runs.
"""

from __future__ import annotations

from collections.abc import Iterator

from orchestrator.engine.definition import DEADLINE, SagaDefinition, StepKind, Transition
from orchestrator.engine.saga import SagaType


def mermaid(saga: SagaType, definition: SagaDefinition | None = None) -> str:
    """The diagram of `definition` (by default the saga's latest). Edges are labelled
    `trigger / command sent`; `deadline` is the step's deadline."""
    lines = _lines(definition or saga.latest, saga.request.__name__)
    return "\n".join(["stateDiagram-v2", *(f"    {line}" for line in lines)]) + "\n"


def _lines(d: SagaDefinition, request: str) -> Iterator[str]:
    yield f"[*] --> {d.initial} : {_label(d, request, d.initial)}"
    if d.invalid_request is not None:
        yield f"[*] --> {d.invalid_request} : {request} breaking the limits"
    for state in d.states:
        step = d.waiting_step(state.name)
        if step is not None and step.kind is StepKind.RETRIABLE:
            yield f"{state.name} --> {state.name} : deadline / retry {step.command.__name__}"
        elif step is not None and step.attempts > 1:
            resend = f"deadline, attempt < {step.attempts} / re-send {step.command.__name__}"
            yield f"{state.name} --> {state.name} : {resend}"
        for transition in d.outgoing(state.name):
            yield _edge(d, transition)
    for state in d.states:
        if d.is_terminal(state.name):
            yield f"{state.name} --> [*]"
    for step in d.steps:
        if step.kind is StepKind.PIVOT:
            for state in d.states:
                if state.step == step.name:
                    yield f"note right of {state.name} : pivot"


def _edge(d: SagaDefinition, transition: Transition) -> str:
    trigger = "deadline" if transition.trigger is DEADLINE else transition.trigger.__name__
    label = _label(d, trigger, transition.target)
    return f"{transition.source} --> {transition.target} : {label}"


def _label(d: SagaDefinition, trigger: str, target: str) -> str:
    """`trigger / commands sent on entering target` (a step's, then notifications')."""
    step = d.waiting_step(target)
    sent = [] if step is None else [step.command.__name__]
    sent += [n.command.__name__ for n in d.notifications_on(target)]
    return f"{trigger} / {', '.join(sent)}" if sent else trigger
