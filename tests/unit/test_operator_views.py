"""The operator actions' web endpoints (orchestrator/engine/operator_views.py) over HTTP,
without a broker: the Faust app's web server in a test server, the produce-and-wait of
the action replaced by a recorder. Every refused request is a 403 that sends nothing."""

from __future__ import annotations

import html
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from messaging.operator_guard import Guard
from orchestrator.engine import operator_views as ov
from orchestrator.engine import views as saga_views
from orchestrator.sagas.create_order import SAGA as CREATE
from schemas import messages as m
from tests.unit.saga_factories import saga_in

TOKEN = "operator-token-for-the-tests"
PORT = 7499
ORIGIN = f"http://127.0.0.1:{PORT}"
SAGA = "saga-1"
HTML = {"Accept": "text/html"}
SAME = {"Origin": ORIGIN}  # a POST from the worker's own page


@dataclass
class Engine:
    """Stands for Kafka and the orchestrator: records the actions, answers as told."""

    sent: list[m.AbortSaga | m.RetrySaga] = field(default_factory=list)
    answer: Callable[[m.AbortSaga | m.RetrySaga], m.SagaActionAnswered | None] | None = None

    def request_action(
        self, message: m.AbortSaga | m.RetrySaga, timeout: float = 0.0
    ) -> m.SagaActionAnswered | None:
        self.sent.append(message)
        return None if self.answer is None else self.answer(message)


def answered(accepted: bool, text: str, state: str | None) -> Callable[[Any], Any]:
    def answer(message: m.AbortSaga | m.RetrySaga) -> m.SagaActionAnswered:
        return m.SagaActionAnswered(
            message.saga_id,
            message.action_id,
            type(message).__name__,
            accepted,
            text,
            state,
            message.operator,
            datetime.now(UTC),
        )

    return answer


def make_guard() -> Guard:
    guard = Guard.from_env(ORIGIN, {"SAGA_OPERATOR_TOKEN": TOKEN})
    assert guard is not None
    return guard


async def serve(guard: Guard | None) -> TestClient:
    app = faust.App(
        "test-operator-views", broker="kafka://127.0.0.1:1", store="memory://", web_port=PORT
    )
    ov.register_operator_views(app, guard)
    web: Any = app.web  # Faust's aiohttp driver: its aiohttp application
    client = TestClient(TestServer(web.web_app))
    await client.start_server()
    return client


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Engine:
    recorder = Engine(answer=answered(True, "aborted: CREATING_ORDER -> REJECTING_ORDER", "X"))
    monkeypatch.setattr(ov, "request_action", recorder.request_action)
    return recorder


@pytest.fixture
async def web(engine: Engine) -> AsyncIterator[TestClient]:
    client = await serve(make_guard())
    try:
        yield client
    finally:
        await client.close()


def form(action: str = "abort", saga_id: str = SAGA, **fields: str) -> dict[str, str]:
    """What the saga page's form of `action` sends, filled in."""
    csrf = make_guard().issue("form", (saga_id, action), time.time(), ov.FORM_LIFETIME)
    return {"csrf": csrf, "token": TOKEN, "reason": "stuck", "operator": "ops-alice", **fields}


async def ask(
    web: TestClient,
    action: str = "abort",
    data: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    saga_id: str = SAGA,
) -> ClientResponse:
    return await web.post(
        f"/sagas/{saga_id}/{action}",
        data=form(action, saga_id) if data is None else data,
        headers={"Origin": ORIGIN, **HTML} if headers is None else headers,
    )


async def confirmation(web: TestClient, action: str = "abort", **fields: str) -> dict[str, str]:
    """The hidden fields of the confirmation page's form."""
    reply = await ask(web, action, form(action, **fields))
    page = await reply.text()
    assert reply.status == 200, page
    hidden = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page)
    return {name: html.unescape(value) for name, value in hidden}


async def confirm(
    web: TestClient, data: dict[str, str], action: str = "abort", saga_id: str = SAGA
) -> ClientResponse:
    return await web.post(
        f"/sagas/{saga_id}/{action}/confirm", data=data, headers={"Origin": ORIGIN, **HTML}
    )


# ---- the whole way ----


async def test_abort_asks_for_confirmation_then_sends_and_shows_the_answer(
    web: TestClient, engine: Engine
) -> None:
    reply = await ask(web)
    page = await reply.text()
    assert reply.status == 200 and reply.content_type == "text/html"
    assert "Abort saga saga-1?" in page and ov.WHAT_HAPPENS["abort"] in page
    assert TOKEN not in page  # the secret is never written into a page
    assert engine.sent == []  # nothing before the confirmation

    fields = await confirmation(web)
    assert set(fields) == {"operator", "reason", "confirm"}
    reply = await confirm(web, fields)
    page = await reply.text()
    assert reply.status == 200, page
    assert "aborted: CREATING_ORDER -&gt; REJECTING_ORDER" in page
    assert 'href="/sagas/saga-1"' in page  # the timeline
    (sent,) = engine.sent
    assert isinstance(sent, m.AbortSaga)
    assert (sent.saga_id, sent.operator, sent.reason) == (SAGA, "ops-alice", "stuck")
    assert sent.action_id.startswith("web-")


async def test_a_retry_without_operator_or_reason_is_the_web_operators(
    web: TestClient, engine: Engine
) -> None:
    fields = await confirmation(web, "retry", operator="", reason="")
    reply = await confirm(web, fields, "retry")
    assert reply.status == 200
    (sent,) = engine.sent
    assert isinstance(sent, m.RetrySaga)
    assert (sent.operator, sent.reason) == ("web", ov.DEFAULT_RETRY_REASON)


async def test_the_engine_refusing_is_shown_as_a_conflict(web: TestClient, engine: Engine) -> None:
    why = "AUTHORIZING_PAYMENT is at or after the pivot (authorize_payment): forward only"
    engine.answer = answered(False, why, "AUTHORIZING_PAYMENT")
    reply = await confirm(web, await confirmation(web))
    page = await reply.text()
    assert reply.status == 409
    assert f"Refused by the engine: {why}" in page and "AUTHORIZING_PAYMENT" in page


async def test_no_answer_in_time_is_shown_as_requested(web: TestClient, engine: Engine) -> None:
    engine.answer = None
    fields = await confirmation(web)
    reply = await web.post(f"/sagas/{SAGA}/abort/confirm", data=fields, headers={"Origin": ORIGIN})
    body = await reply.json()
    assert reply.status == 202
    assert body["answered"] is False and body["saga_url"] == "/sagas/saga-1"
    assert body["action_id"] == engine.sent[0].action_id


async def test_a_program_acts_with_a_bearer_token_and_json(web: TestClient, engine: Engine) -> None:
    program = {"Authorization": f"Bearer {TOKEN}"}  # no Origin, no form's CSRF token
    reply = await web.post(
        f"/sagas/{SAGA}/retry", data={"operator": "cron-job", "reason": "r"}, headers=program
    )
    asked = await reply.json()
    assert reply.status == 200, asked
    assert asked["confirm_url"] == "/sagas/saga-1/retry/confirm"
    data = {"operator": asked["operator"], "reason": asked["reason"], "confirm": asked["confirm"]}
    reply = await web.post(asked["confirm_url"], data=data, headers=program)
    assert reply.status == 200 and (await reply.json())["accepted"] is True
    assert [type(a) for a in engine.sent] == [m.RetrySaga]


# ---- refused: 403, nothing sent ----


@pytest.mark.parametrize(
    ("data", "headers", "why"),
    [
        (form(), {"Origin": "http://evil.example"}, "not from this worker"),
        (form(), {"Referer": "http://evil.example/x"}, "not from this worker"),
        (form(), {}, "names no Origin or Referer"),
        ({**form(), "token": ""}, SAME, "no operator token"),
        ({**form(), "token": "operator-token-for-the-test"}, SAME, "wrong operator token"),
        ({**form(), "csrf": ""}, SAME, "carries no token"),
        (form("retry"), SAME, "not valid for this saga and action"),  # retry's form, abort
        (form(saga_id="saga-2"), SAME, "not valid for this saga and action"),
        (form(), {"Origin": ORIGIN, "Authorization": "Bearer wrong"}, "wrong operator token"),
    ],
)
async def test_a_request_refused_is_a_403_that_sends_nothing(
    web: TestClient,
    engine: Engine,
    data: dict[str, str],
    headers: dict[str, str],
    why: str,
) -> None:
    reply = await ask(web, "abort", data, headers)
    body = await reply.json()
    assert reply.status == 403, body
    assert why in body["error"]
    assert engine.sent == []


async def test_a_confirmation_is_refused_when_changed_forged_from_elsewhere_or_used(
    web: TestClient, engine: Engine
) -> None:
    fields = await confirmation(web)
    for data, action, saga_id, why in [
        ({**fields, "reason": "something else"}, "abort", SAGA, "not valid"),
        ({**fields, "operator": "ops-mallory"}, "abort", SAGA, "not valid"),
        (fields, "retry", SAGA, "not valid"),
        (fields, "abort", "saga-2", "not valid"),
        ({**fields, "confirm": ""}, "abort", SAGA, "carries no token"),
    ]:
        reply = await confirm(web, data, action, saga_id)
        assert (reply.status, why in await reply.text()) == (403, True), (data, action, saga_id)
    reply = await web.post(
        f"/sagas/{SAGA}/abort/confirm", data=fields, headers={"Origin": "http://evil.example"}
    )
    assert reply.status == 403
    assert engine.sent == []

    assert (await confirm(web, fields)).status == 200
    again = await confirm(web, fields)
    assert again.status == 403 and "used already" in await again.text()
    assert len(engine.sent) == 1


async def test_actions_are_off_without_the_token(engine: Engine) -> None:
    client = await serve(None)
    try:
        for path in (f"/sagas/{SAGA}/abort", f"/sagas/{SAGA}/retry/confirm"):
            reply = await client.post(path, data=form(), headers={"Origin": ORIGIN})
            body = await reply.json()
            assert reply.status == 403
            assert body["error"] == (
                "operator actions are off on this worker: its SAGA_OPERATOR_TOKEN is not set"
            )
    finally:
        await client.close()
    assert engine.sent == []


# ---- bad input: 400, nothing sent ----


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"reason": ""}, "an abort needs a reason"),
        ({"reason": "x" * 1001}, "at most 1000"),
        ({"reason": "line\nbreak"}, "control character"),
        ({"operator": "o" * 129}, "operator has 129 characters"),
        ({"operator": "ops\x07"}, "operator contains a control character"),
    ],
)
async def test_bad_input_is_a_400(
    web: TestClient, engine: Engine, fields: dict[str, str], why: str
) -> None:
    reply = await ask(web, "abort", form(**fields), {"Origin": ORIGIN})
    body = await reply.json()
    assert reply.status == 400 and why in body["error"], body
    assert engine.sent == []


async def test_an_unknown_action_is_a_404(web: TestClient, engine: Engine) -> None:
    reply = await ask(web, "delete", form())
    assert reply.status == 404
    assert engine.sent == []


# ---- the saga page's forms ----


def saga_page(guard: Guard | None, state: str) -> str:
    row = saga_in(state)
    payload = saga_views.saga_detail(CREATE, row, saga_views.Timeline([], True), ORIGIN)
    return saga_views.render_saga(payload, ov.page_actions(guard, row.saga_id, time.time()))


def test_the_saga_page_offers_the_forms_with_their_csrf_tokens() -> None:
    guard = make_guard()
    page = saga_page(guard, "CREATING_ORDER")
    for action in ("abort", "retry"):
        match = re.search(
            rf'<form class="action" id="{action}-form" method="post" '
            rf'action="/sagas/ord-1/{action}">.*?name="csrf" value="([^"]+)"',
            page,
            re.DOTALL,
        )
        assert match, page
        guard.verify(match.group(1), "form", ("ord-1", action), time.time())
    assert 'type="password"' in page and TOKEN not in page


def test_the_saga_page_says_when_actions_are_off_and_offers_none_for_an_ended_saga() -> None:
    off = saga_page(None, "CREATING_ORDER")
    assert "<form" not in off and "its SAGA_OPERATOR_TOKEN is not set" in off
    ended = saga_page(make_guard(), "ORDER_APPROVED")
    assert "<form" not in ended and "operator-actions" not in ended


async def test_refusals_and_actions_are_logged(
    web: TestClient, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger=ov.__name__)
    await ask(web, "abort", form(), {"Origin": "http://evil.example"})
    (refusal,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert refusal.getMessage().startswith("operator action refused: POST /sagas/saga-1/abort")
    assert "not from this worker" in refusal.getMessage()
    await confirm(web, await confirmation(web))
    (acted,) = [r for r in caplog.records if r.levelname == "INFO"]
    assert acted.getMessage().startswith("operator action AbortSaga on saga saga-1 by ops-alice")
