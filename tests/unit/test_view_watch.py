"""How the view watch of `saga chaos --watch-views` judges lookups (chaos.view_watch):
what is retried, what fails. Answers are scripted; no broker, no workers."""

from __future__ import annotations

import random

import pytest

from chaos import view_watch
from chaos.view_watch import Answer, ViewWatch

A, B = "http://127.0.0.1:7001", "http://127.0.0.1:7002"


def saga(key: str, owner: str = A) -> Answer:
    return Answer(200, {"saga_id": key, "state": "ORDER_APPROVED", "worker": owner})


class Script:
    """Answers requests in turn; `leave` takes workers out of service after a request."""

    def __init__(self, answers: list[Answer], in_service: list[str], leave: bool = False) -> None:
        self.answers = iter(answers)
        self.in_service = in_service
        self.leave = leave
        self.requested: list[str] = []

    def get(self, url: str) -> Answer:
        self.requested.append(url)
        answer = next(self.answers)
        if self.leave:
            self.in_service[:] = [B]  # A stopped while the request was out
        return answer


def look_up(answers: list[Answer], *, leave: bool = False) -> tuple[ViewWatch, Script]:
    script = Script(answers, [A], leave)
    watcher = ViewWatch(
        lambda _service: ["s1"],
        lambda _service: tuple(script.in_service),
        random.Random(1),
        get=script.get,
    )
    watcher.look_up("orchestrator", "s1")
    return watcher, script


@pytest.fixture(autouse=True)
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(view_watch, "RETRY_PAUSE", 0.0)


def test_the_row_of_the_key_is_an_answer_and_names_its_owner() -> None:
    watcher, script = look_up([saga("s1", owner=B)])
    findings = watcher.findings
    assert (findings.lookups["orchestrator"], findings.failures) == (1, [])
    assert findings.owners == {"orchestrator": {B}}
    assert script.requested == [f"{A}/sagas/s1?format=json"]


def test_a_503_is_retried_until_the_row_comes() -> None:
    moving = Answer(503, {"error": "partitions are moving: ...; retry"})
    watcher, _ = look_up([moving, moving, saga("s1")])
    assert watcher.findings.lookups["orchestrator"] == 1
    assert watcher.findings.retried.total() == 2
    assert watcher.findings.failures == []


def test_a_503_past_the_budget_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(view_watch, "RETRY_BUDGET", -1.0)
    watcher, _ = look_up([Answer(503, {"error": "the worker owning this key did not answer"})])
    assert watcher.findings.failures == [
        "orchestrator s1 at 0.0s: no answer in -1s (last: retry: 503 the worker owning this "
        "key did not answer)"
    ]


@pytest.mark.parametrize(
    ("answer", "failure"),
    [
        (Answer(404, {"error": "no saga 's1'"}), f"{A} answered 404: no saga 's1'"),
        (Answer(500, {"error": "internal error"}), f"{A} answered 500: internal error"),
        (saga("s2"), f"{A} answered another row: 's2'"),
        (Answer(None, problem="unreachable: refused"), f"{A} unreachable: refused"),
    ],
)
def test_any_other_answer_from_a_worker_in_service_fails(answer: Answer, failure: str) -> None:
    watcher, _ = look_up([answer])
    assert watcher.findings.failures == [f"orchestrator s1 at 0.0s: {failure}"]
    assert not watcher.findings.lookups


def test_a_worker_taken_out_of_service_meanwhile_is_no_failure() -> None:
    watcher, script = look_up(
        [Answer(None, problem="unreachable: refused"), saga("s1")], leave=True
    )
    assert watcher.findings.failures == []
    assert watcher.findings.retried == {"orchestrator: the worker left service meanwhile": 1}
    assert script.requested[-1].startswith(B)
