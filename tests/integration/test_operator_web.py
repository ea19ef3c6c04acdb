"""Operator actions on the saga's web page against the real orchestrator worker and broker:
a POST without the operator token, with a wrong one, or from another origin is refused
(403) and writes nothing to saga.operations; an allowed one is answered by the engine,
which refuses what it cannot do (abort after the pivot, retry of an ended saga, no saga).

The test workers run with SAGA_OPERATOR_TOKEN set (tests/conftest.py). The Order Service
is stopped for the module: a CreateOrderSaga then waits in CREATING_ORDER (re-sending
CreateOrder for ever), and a CancelOrderSaga in BEGINNING_CANCEL, its pivot.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from messaging import client
from messaging.catalog import Catalog
from messaging.local_workers import Workers
from tests.conftest import TEST_OPERATOR_TOKEN
from tests.integration.operator_helpers import (
    hidden_fields,
    http_post,
    operations_written,
    stopped,
    wait_state,
)
from tests.integration.order_helpers import customer, http_get, place_orders, product, wait_terminal

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Sagas:
    base: str  # the orchestrator's URL, which is also its origin
    ended: str  # an approved saga
    waiting: str  # a saga waiting for the (stopped) Order Service, before its pivot
    order_service_back: Callable[[], None]
    # Sagas a test started, to end before the module does (a cancel left running would
    # move stock while later modules count it).
    started: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def sagas(workers: Workers, test_catalog: Catalog) -> Iterator[Sagas]:
    rich, widget = customer(test_catalog, "rich"), product(test_catalog, "widget")
    (done,) = place_orders((rich, [(widget, 1)]))
    assert wait_terminal([done])[done.order_id].to_state == "ORDER_APPROVED"
    with ExitStack() as order_service:
        order_service.enter_context(stopped(workers, "order"))
        (held,) = place_orders((rich, [(widget, 1)]))
        wait_state(held.order_id, "CREATING_ORDER")
        base = workers.workers["orchestrator"].url
        made = Sagas(base, done.order_id, held.order_id, order_service.close)
        yield made
        order_service.close()  # the Order Service back (if no test brought it back)
    wait_terminal([held], timeout=180)  # each saga started here ends
    since = held.requested_at - timedelta(seconds=5)
    ended = {e.saga_id for e in client.follow_sagas(made.started, since, 180) if e.terminal}
    assert ended == set(made.started), f"sagas not ended: {set(made.started) - ended}"


def page_of(sagas: Sagas, saga_id: str) -> str:
    reply = http_get(f"{sagas.base}/sagas/{saga_id}?format=html")
    assert reply.status == 200, reply.text[:500]
    return reply.text


def abort_form(sagas: Sagas, **fields: str) -> dict[str, str]:
    """The waiting saga's abort form as its page offers it, filled in."""
    csrf = hidden_fields(page_of(sagas, sagas.waiting), "abort-form")
    return {
        **csrf,
        "reason": "stuck",
        "operator": "ops-test",
        "token": TEST_OPERATOR_TOKEN,
        **fields,
    }


def test_the_saga_page_offers_abort_and_retry(sagas: Sagas) -> None:
    page = page_of(sagas, sagas.waiting)
    assert 'id="abort-form"' in page and 'id="retry-form"' in page
    assert TEST_OPERATOR_TOKEN not in page
    ended = page_of(sagas, sagas.ended)
    assert "<form" not in ended  # nothing to act on


def test_refused_posts_are_403_and_write_nothing(sagas: Sagas) -> None:
    before = operations_written()
    events_before = client.saga_events(sagas.waiting)
    url = f"{sagas.base}/sagas/{sagas.waiting}/abort"
    same = {"Origin": sagas.base}
    cases = [
        ("no token", abort_form(sagas, token=""), same, "no operator token"),
        ("a wrong token", abort_form(sagas, token="not-the-operator-token"), same, "wrong"),
        ("another origin", abort_form(sagas), {"Origin": "http://evil.example"}, "not from"),
        ("no origin", abort_form(sagas), {}, "names no Origin or Referer"),
        (
            "a wrong Bearer token",
            {"reason": "stuck"},
            {"Authorization": "Bearer not-the-operator-token"},
            "wrong operator token",
        ),
    ]
    for what, fields, headers, why in cases:
        reply = http_post(url, fields, headers)
        assert reply.status == 403, (what, reply.text[:500])
        assert why in reply.json()["error"], what
    forged = {"operator": "ops-test", "reason": "stuck", "confirm": "9999999999.nonce.forged"}
    for headers in (same, {"Origin": "http://evil.example"}):
        reply = http_post(f"{url}/confirm", forged, headers)
        assert reply.status == 403, reply.text[:500]

    assert operations_written() == before
    assert client.saga_events(sagas.waiting) == events_before


def act(sagas: Sagas, saga_id: str, action: str, **fields: str) -> tuple[int, dict[str, object]]:
    """Ask and confirm an action as a program does (Bearer token, JSON)."""
    program = {"Authorization": f"Bearer {TEST_OPERATOR_TOKEN}"}
    asked = http_post(f"{sagas.base}/sagas/{saga_id}/{action}", fields, program)
    assert asked.status == 200, asked.text[:500]
    body = asked.json()
    confirmation = {k: body[k] for k in ("operator", "reason", "confirm")}
    done = http_post(f"{sagas.base}{body['confirm_url']}", confirmation, program)
    return done.status, done.json()


def test_an_abort_at_the_pivot_is_refused_by_the_engine(sagas: Sagas) -> None:
    """A CancelOrderSaga's first step is its pivot: it can never be aborted. (Of an order
    that does not exist: once the Order Service is back it refuses, and nothing moves.)"""
    cancel = client.cancel_requested(f"no-such-order-{uuid.uuid4()}")
    producer = client.producer()
    client.send(producer, client.REQUEST_TOPIC, cancel.cancel_id, cancel)
    client.flush(producer)
    sagas.started.append(cancel.cancel_id)
    wait_state(cancel.cancel_id, "BEGINNING_CANCEL")  # for 3 x 10 s: the order is stopped
    status, body = act(sagas, cancel.cancel_id, "abort", reason="changed my mind")
    assert status == 409, body
    assert body["answered"] is True and body["accepted"] is False
    assert body["answer"] == (
        "BEGINNING_CANCEL is at or after the pivot (begin_cancel): the saga can only go forward"
    )
    events = client.saga_events(cancel.cancel_id)
    assert all(e.trigger != "AbortSaga" for e in events)


def test_a_retry_of_an_ended_saga_or_of_no_saga_is_refused(sagas: Sagas) -> None:
    status, body = act(sagas, sagas.ended, "retry")
    assert (status, body["answer"]) == (409, "the saga has ended (ORDER_APPROVED)"), body
    status, body = act(sagas, "no-such-saga-0000", "retry")
    assert (status, body["answer"], body["state"]) == (409, "no saga no-such-saga-0000", None)


def test_a_retry_from_the_form_is_recorded_with_the_operator(sagas: Sagas) -> None:
    same = {"Origin": sagas.base, "Accept": "text/html"}
    csrf = hidden_fields(page_of(sagas, sagas.waiting), "retry-form")
    fields = {**csrf, "operator": "ops-form", "reason": "", "token": TEST_OPERATOR_TOKEN}
    asked = http_post(f"{sagas.base}/sagas/{sagas.waiting}/retry", fields, same)
    assert asked.status == 200, asked.text[:500]
    confirmation = hidden_fields(asked.text, "confirm-form")
    done = http_post(f"{sagas.base}/sagas/{sagas.waiting}/retry/confirm", confirmation, same)
    assert done.status == 200, done.text[:800]
    assert "re-sent CreateOrder of create_order" in done.text
    (retried,) = [e for e in client.saga_events(sagas.waiting) if e.trigger == "RetrySaga"]
    assert retried.operator == "ops-form"
    assert retried.reason == "RetrySaga by ops-form: asked on the saga's web page"
    # The same confirmation again: refused, not a second retry.
    again = http_post(f"{sagas.base}/sagas/{sagas.waiting}/retry/confirm", confirmation, same)
    assert again.status == 403 and "used already" in again.text


def test_an_abort_before_the_pivot_compensates_and_the_saga_ends_rejected(sagas: Sagas) -> None:
    status, body = act(sagas, sagas.waiting, "abort", operator="ops-abort", reason="wrong price")
    assert status == 200, body
    assert body["answer"] == "aborted: CREATING_ORDER -> REJECTING_ORDER, compensating"
    assert body["state"] == "REJECTING_ORDER"
    # Aborted once: a second abort finds it compensating already.
    status, body = act(sagas, sagas.waiting, "abort", reason="again")
    assert status == 409 and "undoes the saga already" in str(body["answer"]), body

    sagas.order_service_back()  # RejectOrder reaches it: the saga ends
    events = wait_state(sagas.waiting, "ORDER_REJECTED", timeout=120)
    (aborted,) = [e for e in events if e.trigger == "AbortSaga"]
    assert (aborted.from_state, aborted.to_state) == ("CREATING_ORDER", "REJECTING_ORDER")
    assert (aborted.operator, aborted.reason) == (
        "ops-abort",
        "AbortSaga by ops-abort: wrong price",
    )
    assert events[-1].reason == "AbortSaga by ops-abort: wrong price"
