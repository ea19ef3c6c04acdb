"""Operator actions from the saga's web page: Abort and Retry as forms, with a
confirmation step, for every saga the engine runs.

1. `/sagas/{saga_id}` (views.py) shows a form per action while the saga waits for a step
   (reason, operator, the operator token, and a signed CSRF token bound to the saga and
   the action), when the worker's SAGA_OPERATOR_TOKEN is set.
2. `POST /sagas/{saga_id}/{abort|retry}` checks where the request comes from, the
   operator token and the form's CSRF token (messaging/operator_guard.py), validates the
   operator (an id, default "web") and the reason, and answers a confirmation page: what
   the action will do, and a button carrying a one-time token signed for exactly this
   saga, action, operator and reason (valid 5 minutes).
3. `POST /sagas/{saga_id}/{abort|retry}/confirm` checks the origin and the one-time
   token, produces the AbortSaga or RetrySaga to saga.operations keyed by the saga id,
   and waits (up to ANSWER_TIMEOUT) for the engine's SagaActionAnswered on
   saga.operations.answers: accepted (200), refused with the engine's reason (409: after
   the pivot, an ended saga, no such saga), or no answer yet (202: requested, see the
   timeline). The engine records an accepted action in saga.events with the operator.

A refused request (actions off, another origin, no or a wrong token, a forged, expired or
used confirmation) is a 403 saying why, and writes nothing. The POSTs need not reach the
worker owning the saga: the action travels through Kafka to it, and so does the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import faust
from aiohttp import web as aiohttp_web
from confluent_kafka import KafkaException, TopicPartition
from faust.web import Request, Response

from messaging import client, topics
from messaging import web as w
from messaging.faust_app import utc_now
from messaging.operator_guard import TOKEN_ENV, Guard, OneTime, Refused, bearer
from orchestrator.engine.runner import ANSWERS_TOPIC, OPERATIONS_TOPIC
from schemas import codec
from schemas.limits import CONTROL_CHARACTER, MAX_REASON_LENGTH, id_problem
from schemas.messages import AbortSaga, RetrySaga, SagaActionAnswered

log = logging.getLogger(__name__)

SERVICE = "orchestrator"
ACTIONS: dict[str, type[AbortSaga] | type[RetrySaga]] = {
    "abort": AbortSaga,
    "retry": RetrySaga,
}
WHAT_HAPPENS = {
    "abort": (
        "Before its pivot the saga stops waiting and compensates now: it undoes what its "
        "steps did and ends rejected. At or after its pivot, or while it compensates "
        "already, the engine refuses and nothing changes."
    ),
    "retry": (
        "The saga re-sends the command of the step it waits for now (the same command, "
        "its next attempt) and its backoff starts again. A saga that has ended is not "
        "retried."
    ),
}
DEFAULT_OPERATOR = "web"
DEFAULT_RETRY_REASON = "asked on the saga's web page"
FORM_LIFETIME = 3600  # seconds a saga page's forms may be sent
CONFIRM_LIFETIME = 300  # seconds a confirmation may be confirmed
ANSWER_TIMEOUT = 10.0  # seconds the confirmation waits for the engine's answer

PAGES = w.pages("orchestrator.engine")


# ---- the saga page's forms ----


def page_actions(guard: Guard | None, saga_id: str, now: float) -> dict[str, Any]:
    """What the saga's page offers: `enabled` and, when on, a form per action with its
    URL and a CSRF token bound to the saga and the action."""
    if guard is None:
        return {"enabled": False, "forms": [], "token_env": TOKEN_ENV}
    forms = [
        {
            "action": action,
            "label": action.capitalize(),
            "url": w.path("sagas", saga_id, action),
            "csrf": guard.issue("form", (saga_id, action), now, FORM_LIFETIME),
            "what": WHAT_HAPPENS[action],
            "reason_required": action == "abort",
        }
        for action in ACTIONS
    ]
    return {"enabled": True, "forms": forms, "token_env": TOKEN_ENV}


# ---- what an operator asks ----


def operator_of(form: Mapping[str, str]) -> str:
    """The operator the form names (default "web"), valid like any id; else 400."""
    operator = form.get("operator", "").strip() or DEFAULT_OPERATOR
    problem = id_problem("operator", operator)
    if problem is not None:
        raise w.bad_request(problem, parameter="operator")
    return operator


def reason_of(action: str, form: Mapping[str, str]) -> str:
    """Why the operator acts: required for an abort; else 400."""
    reason = form.get("reason", "").strip()
    if not reason:
        if action == "abort":
            raise w.bad_request("an abort needs a reason", parameter="reason")
        reason = DEFAULT_RETRY_REASON
    if len(reason) > MAX_REASON_LENGTH:
        raise w.bad_request(
            f"the reason has {len(reason)} characters, at most {MAX_REASON_LENGTH}",
            parameter="reason",
        )
    if CONTROL_CHARACTER.search(reason):
        raise w.bad_request("the reason contains a control character", parameter="reason")
    return reason


def action_message(
    action: str, saga_id: str, action_id: str, operator: str, reason: str
) -> AbortSaga | RetrySaga:
    return ACTIONS[action](saga_id, action_id, operator, reason, utc_now())


# ---- through Kafka ----


def request_action(
    message: AbortSaga | RetrySaga, timeout: float = ANSWER_TIMEOUT
) -> SagaActionAnswered | None:
    """Produce the action to saga.operations (key: the saga id) and wait for its answer
    on saga.operations.answers; None if none came within `timeout` (blocking: run it in
    an executor). Raises client.ClientError if the action was not written."""
    key = message.saga_id.encode()
    partition = client.partition_for(key, topics.partitions(ANSWERS_TOPIC))
    consumer = client.consumer()
    try:
        # Where the answers stand *before* the action is sent: its answer comes after.
        start = client.end_offset(consumer, TopicPartition(ANSWERS_TOPIC, partition))
        producer = client.producer()
        client.send(producer, OPERATIONS_TOPIC, message.saga_id, message)
        client.flush(producer)
        consumer.assign([TopicPartition(ANSWERS_TOPIC, partition, start)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = consumer.poll(0.2)
            if record is None or record.error() is not None or record.key() != key:
                continue
            try:
                answer = codec.decode_as(record.value() or b"", SagaActionAnswered)
            except codec.MessageDecodeError:
                continue
            if answer.action_id == message.action_id:
                return answer
        return None
    except KafkaException as exc:
        raise client.ClientError(str(exc.args[0] if exc.args else exc)) from exc
    finally:
        consumer.close()


# ---- pages ----


def render_confirm(payload: Mapping[str, Any]) -> str:
    return PAGES.render(
        "action_confirm.html.j2", service=f"{SERVICE} · {payload['worker']}", ask=payload
    )


def render_answer(payload: Mapping[str, Any]) -> str:
    return PAGES.render(
        "action_answer.html.j2", service=f"{SERVICE} · {payload['worker']}", done=payload
    )


# ---- the views ----


def remote(request: Request) -> str:
    """The address the request came from (aiohttp's; a proxy's own, behind one)."""
    return str(getattr(request, "remote", None) or "?")


def refused(request: Request, why: str, **extra: Any) -> w.Problem:
    """A 403 saying why, logged with where the request came from."""
    log.warning(
        "operator action refused: %s %s from %s: %s",
        request.method,
        request.rel_url.path,
        remote(request),
        why,
    )
    return w.Problem(403, why, **extra)


async def form_of(request: Request) -> dict[str, str]:
    """The POSTed form's text fields."""
    try:
        posted = await request.post()
    except aiohttp_web.HTTPException as exc:  # e.g. a body over the server's limit
        raise w.Problem(exc.status, exc.reason) from None
    return {name: value for name, value in posted.items() if isinstance(value, str)}


def register_operator_views(app: faust.App, guard: Guard | None) -> None:
    """The POST endpoints of the operator actions (answering 403 while `guard` is None:
    the worker's SAGA_OPERATOR_TOKEN is not set)."""
    used = OneTime()

    def admitted(request: Request, saga_id: str, action: str) -> Guard:
        if action not in ACTIONS:
            raise w.not_found(f"no action {action!r}; one of: {', '.join(ACTIONS)}")
        if guard is None:
            raise refused(
                request, f"operator actions are off on this worker: its {TOKEN_ENV} is not set"
            )
        try:
            guard.check_origin(request.headers)
            guard.check_bearer(request.headers)
        except Refused as why:
            raise refused(request, str(why)) from None
        problem = id_problem("saga id", saga_id)
        if problem is not None:
            raise w.bad_request(problem, saga_id=saga_id)
        return guard

    class ActionAsked(w.NegotiatedView):
        """Step 2: the operator asked; answer what will happen and how to confirm it."""

        service_name = SERVICE

        async def post(self, request: Request, saga_id: str, action: str) -> Response:
            w.wants_html(request)
            checked = admitted(request, saga_id, action)
            form = await form_of(request)
            now = time.time()
            try:
                if bearer(request.headers) is None:  # a browser's form: the token and CSRF
                    checked.check_token(form.get("token", "").strip())
                    checked.verify(form.get("csrf"), "form", (saga_id, action), now)
            except Refused as why:
                raise refused(request, str(why)) from None
            operator, reason = operator_of(form), reason_of(action, form)
            payload = {
                "saga_id": saga_id,
                "action": action,
                "operator": operator,
                "reason": reason,
                "what_happens": WHAT_HAPPENS[action],
                "confirm": checked.issue(
                    "confirm", (saga_id, action, operator, reason), now, CONFIRM_LIFETIME
                ),
                "confirm_url": w.path("sagas", saga_id, action, "confirm"),
                "saga_url": w.path("sagas", saga_id),
                "expires_in": CONFIRM_LIFETIME,
                "worker": w.worker_url(app),
            }
            return self.respond(request, payload, render_confirm)

    class ActionConfirmed(w.NegotiatedView):
        """Step 3: the operator confirmed; send the action and show the engine's answer."""

        service_name = SERVICE

        async def post(self, request: Request, saga_id: str, action: str) -> Response:
            w.wants_html(request)
            checked = admitted(request, saga_id, action)
            form = await form_of(request)
            operator, reason = form.get("operator", ""), form.get("reason", "")
            now = time.time()
            try:
                signed = checked.verify(
                    form.get("confirm"), "confirm", (saga_id, action, operator, reason), now
                )
            except Refused as why:
                raise refused(request, str(why)) from None
            if not used.take(signed, now):
                raise refused(
                    request,
                    "this confirmation was used already: the action was asked once; see "
                    "the saga's timeline",
                    saga_url=w.path("sagas", saga_id),
                )
            operator, reason = operator_of(form), reason_of(action, form)  # as signed
            action_id = f"web-{signed.nonce}"  # one per confirmation
            message = action_message(action, saga_id, action_id, operator, reason)
            log.info(
                "operator action %s on saga %s by %s (%s), from %s",
                type(message).__name__,
                saga_id,
                operator,
                action_id,
                remote(request),
            )
            loop = asyncio.get_running_loop()
            try:
                answer = await loop.run_in_executor(None, request_action, message)
            except client.ClientError as exc:
                raise w.Problem(
                    503,
                    f"the action may not have reached {OPERATIONS_TOPIC}: {exc}; see the "
                    "saga's timeline before asking again",
                ) from None
            payload = {
                "saga_id": saga_id,
                "action": action,
                "action_id": action_id,
                "operator": operator,
                "reason": reason,
                "answered": answer is not None,
                "accepted": None if answer is None else answer.accepted,
                "answer": None if answer is None else answer.answer,
                "state": None if answer is None else answer.state,
                "saga_url": w.path("sagas", saga_id),
                "answer_timeout": ANSWER_TIMEOUT,
                "worker": w.worker_url(app),
            }
            status = 202 if answer is None else 200 if answer.accepted else 409
            return self.respond(request, payload, render_answer, status=status)

    w.add_page(app, "/sagas/{saga_id}/{action}", ActionAsked, slash=False)
    w.add_page(app, "/sagas/{saga_id}/{action}/confirm", ActionConfirmed, slash=False)
