"""The HTML pages (Jinja2 templates): free text is escaped on every page that shows it,
an undefined name is an error, templates are compiled once, and every template ships in
the installed package."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import jinja2
import pytest

from messaging import web as w
from messaging.operator_guard import Guard
from orchestrator.engine import operator_views
from orchestrator.engine import views as saga_views
from orchestrator.engine.views import Timeline
from orchestrator.sagas.create_order import SAGA as CREATE
from participants.order import views as order_views
from participants.payment import views as payment_views
from participants.product import views as product_views
from schemas import messages as m
from tests.unit.saga_factories import T0, saga_in

ROOT = Path(__file__).resolve().parents[2]
EVIL = "<script>alert('x')</script>"
ESCAPED = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
WORKER = "http://127.0.0.1:7001"
EUR = m.Money(Decimal("2.50"), "EUR")


def event(sequence: int, to_state: str, reason: str | None) -> m.SagaEvent:
    return m.SagaEvent(
        saga_id=EVIL,
        sequence=sequence,
        at=T0,
        trigger="OrderRequested",
        from_state=None if sequence == 1 else "CREATING_ORDER",
        to_state=to_state,
        step="create_order",
        attempt=1,
        reason=reason,
        commands=["CreateOrder"],
        terminal=False,
        operator=EVIL,
    )


def saga_page() -> str:
    row = dataclasses.replace(
        saga_in("CREATING_ORDER", reason=EVIL), saga_id=EVIL, order_id=EVIL, customer_id=EVIL
    )
    timeline = Timeline([event(1, "CREATING_ORDER", EVIL)], complete=False, error=EVIL)
    guard = Guard.from_env(WORKER, {"SAGA_OPERATOR_TOKEN": "a-token-of-twenty-chars"})
    forms = operator_views.page_actions(guard, EVIL, T0.timestamp())  # with the forms
    return saga_views.render_saga(saga_views.saga_detail(CREATE, row, timeline, WORKER), forms)


def saga_list_page() -> str:
    row = dataclasses.replace(saga_in("ORDER_REJECTED", reason=EVIL), saga_id=EVIL)
    summary = saga_views.saga_summary(CREATE, dataclasses.replace(row, customer_id=EVIL))
    payload = {
        "scope": w.ALL_SCOPE,
        "worker": WORKER,
        "workers": [WORKER],
        "partitions": [0],
        "complete": True,
        "filter": {"state": None},
        "limit": 50,
        "total": 1,
        "matched": 1,
        "counts": {"ORDER_REJECTED": 1},
        "sagas": [summary],
    }
    return saga_views.render_list(payload)


def order_page() -> str:
    row = m.OrderRow(EVIL, EVIL, [m.OrderItem(EVIL, 1)], "REJECTED", EVIL, T0, EVIL)
    cancels = [m.OrderCancel(EVIL, "REFUSED", EVIL, 1, -1)]
    return order_views.render_order(order_views.order_json(row, WORKER, cancels))


def account_page() -> str:
    account = m.Account(EVIL, EUR, EUR, EUR)
    payments = [m.Payment(EVIL, EUR, "FAILED", EVIL)]
    return payment_views.render_account(payment_views.account_json(account, payments, WORKER))


def product_page() -> str:
    row = m.StockRow(EVIL, 1, 0, 0, 1, EUR)
    holds = [m.StockHold(EVIL, EVIL, 1, "HELD", 1, -1)]
    return product_views.render_product(product_views.stock_detail(row, holds, WORKER))


def stock_page() -> str:
    payload = {
        "scope": w.LOCAL_SCOPE,
        "worker": WORKER,
        "workers": [WORKER],
        "partitions": [0],
        "complete": True,
        "filter": {"prefix": None},
        "limit": 100,
        "matching": 1,
        "products": [product_views.stock_summary(m.StockRow(EVIL, 1, 0, 0, 1, EUR))],
    }
    return product_views.render_list(payload)


def confirm_page() -> str:
    payload = {
        "saga_id": EVIL,
        "action": "abort",
        "operator": EVIL,
        "reason": EVIL,
        "what_happens": operator_views.WHAT_HAPPENS["abort"],
        "confirm": "1.n.mac",
        "confirm_url": w.path("sagas", EVIL, "abort", "confirm"),
        "saga_url": w.path("sagas", EVIL),
        "expires_in": 300,
        "worker": WORKER,
    }
    return operator_views.render_confirm(payload)


def answer_page() -> str:
    payload = {
        "saga_id": EVIL,
        "action": "retry",
        "action_id": "web-n",
        "operator": EVIL,
        "reason": EVIL,
        "answered": True,
        "accepted": False,
        "answer": EVIL,
        "state": EVIL,
        "saga_url": w.path("sagas", EVIL),
        "answer_timeout": 10.0,
        "worker": WORKER,
    }
    return operator_views.render_answer(payload)


def problem_page() -> str:
    return w.render_problem("orchestrator", 404, f"no saga {EVIL!r}", {"saga_id": EVIL})


PAGES: dict[str, tuple[Callable[[], str], int]] = {
    # page -> (its renderer, how many of its values carry the text at least)
    # id (title, h1), reason, order id, customer, event's operator and reason, error
    "saga": (saga_page, 8),
    "saga list": (saga_list_page, 2),  # id, customer in `about`
    "order": (order_page, 6),  # id, customer, reason, cancel saga, item, cancel's reason
    "account": (account_page, 3),  # customer (title, h1), payment's saga, its reason
    "product": (product_page, 3),  # id (title, h1), hold's saga
    "stock": (stock_page, 1),  # product id
    "error": (problem_page, 3),  # detail (title, h1, text), the saga id
    # id (title, h1, fields, button), operator and reason (fields, hidden fields)
    "action confirmation": (confirm_page, 8),
    # id (title, h1, fields), operator, reason, answer, state
    "action answer": (answer_page, 7),
}


@pytest.mark.parametrize("name", PAGES)
def test_free_text_is_escaped_on_every_page(name: str) -> None:
    render, at_least = PAGES[name]
    page = render()
    assert "<script" not in page.lower(), page
    assert page.count(ESCAPED) >= at_least, page
    assert page.startswith("<!DOCTYPE html>")


def test_free_text_in_attributes_is_escaped_too() -> None:
    quoted = '" onmouseover="alert(1)'
    row = dataclasses.replace(saga_in("ORDER_REJECTED"), saga_id=quoted)
    summary = saga_views.saga_summary(CREATE, row)
    page = saga_views.render_list(
        {
            "scope": w.ALL_SCOPE,
            "worker": WORKER,
            "workers": [WORKER],
            "partitions": [0],
            "complete": True,
            "filter": {"state": None},
            "limit": 50,
            "total": 1,
            "matched": 1,
            "counts": {},
            "sagas": [{**summary, "url": quoted}],
        }
    )
    assert 'onmouseover="alert' not in page
    assert 'href="&#34; onmouseover=&#34;alert(1)"' in page


def test_an_undefined_name_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(jinja2.UndefinedError):
        order_views.PAGES.render("order.html.j2", service="order service")


def test_templates_are_compiled_once_not_read_per_page(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_reading(*args: object) -> None:
        raise AssertionError("a template was read again")

    monkeypatch.setattr(jinja2.PackageLoader, "get_source", no_reading)
    for render, _count in PAGES.values():
        render()


def test_every_template_ships_in_the_package() -> None:
    """Each templates/*.j2 file is package data of its package in pyproject.toml."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data: dict[str, list[str]] = config["tool"]["setuptools"]["package-data"]
    packages = ("messaging", "orchestrator", "participants", "schemas", "cli", "bench")
    templates = sorted(t for p in packages for t in (ROOT / p).glob("**/templates/*.j2"))
    assert templates
    for template in templates:
        relative = template.relative_to(ROOT)
        package_dir = relative.parents[1]  # the package holding templates/
        package = ".".join(package_dir.parts)
        inside = str(relative.relative_to(package_dir))
        globs = package_data.get(package, [])
        assert any(fnmatch.fnmatch(inside, g) for g in globs), (relative, package, globs)


def test_every_view_package_finds_the_shared_layout() -> None:
    for pages in (saga_views.PAGES, order_views.PAGES, payment_views.PAGES, product_views.PAGES):
        assert {"base.html.j2", "macros.html.j2", "problem.html.j2"} <= set(pages.templates)
    assert re.search(r"<title>.*·.*</title>", order_page())
