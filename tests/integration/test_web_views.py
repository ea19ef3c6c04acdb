"""The workers' web views over HTTP: JSON contents, HTML negotiation, 404 and 400.

Orders go through the real saga (the `workers` fixture); then each view must show what
the saga did: the orchestrator's state and timeline, the order, the stock, the account.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import quote

import pytest

from messaging import topics
from messaging.catalog import Catalog
from messaging.local_workers import Workers
from tests.integration.order_helpers import (
    customer,
    http_get,
    place_orders,
    poll,
    product,
    wait_terminal,
)

pytestmark = pytest.mark.integration

ALL_SCOPE = "all partitions, from every worker owning some"
APPROVED_PATH = [
    (None, "CREATING_ORDER", "OrderRequested"),
    ("CREATING_ORDER", "VERIFYING_PRODUCTS", "OrderCreated"),
    ("VERIFYING_PRODUCTS", "AUTHORIZING_PAYMENT", "ProductsReserved"),
    ("AUTHORIZING_PAYMENT", "APPROVING_ORDER", "PaymentAuthorized"),
    ("APPROVING_ORDER", "ORDER_APPROVED", "OrderApproved"),
]
QUANTITY = 2
UNIT_PRICE = Decimal("2.50")  # the widget of the test catalog


@dataclass(frozen=True)
class Urls:
    orchestrator: str
    order: str
    product: str
    payment: str


@dataclass(frozen=True)
class Placed:
    """One approved and one rejected saga, with stock and account before and after."""

    urls: Urls
    widget: str
    rich: str
    poor: str
    approved: str
    rejected: str
    stock_before: dict[str, Any]
    account_before: dict[str, Any]


def _urls(workers: Workers) -> Urls:
    port = {name: worker.web_port for name, worker in workers.workers.items()}
    return Urls(
        **{
            name: f"http://127.0.0.1:{port[name]}"
            for name in ("orchestrator", "order", "product", "payment")
        }
    )


def _row(url: str) -> dict[str, Any]:
    """A view's JSON once it exists (the seeded catalog may not be applied yet)."""
    reply = poll(lambda: http_get(url), lambda r: r.status == 200, f"GET {url} -> 200")
    body: dict[str, Any] = reply.json()
    return body


def _settled(stock_url: str, saga_id: str, outcome: str) -> dict[str, Any]:
    """The product's row once the saga's hold of it is settled with `outcome`."""
    reply = poll(
        lambda: http_get(f"{stock_url}?saga={quote(saga_id)}"),
        lambda r: [h["status"] for h in r.json().get("holds", [])] == [outcome],
        f"{saga_id} settled as {outcome} in {stock_url}",
    )
    body: dict[str, Any] = reply.json()
    return body


@pytest.fixture(scope="module")
def placed(workers: Workers, test_catalog: Catalog) -> Placed:
    urls = _urls(workers)
    widget = product(test_catalog, "widget")
    rich, poor = customer(test_catalog, "rich"), customer(test_catalog, "poor")
    stock_before = _row(f"{urls.product}/stock/{widget}")
    account_before = _row(f"{urls.payment}/accounts/{rich}")
    _row(f"{urls.payment}/accounts/{poor}")
    approved, rejected = place_orders(
        (rich, [(widget, QUANTITY)]),
        (poor, [(widget, QUANTITY)]),  # 5.00 EUR against a balance of 1.00 EUR
    )
    finals = wait_terminal([approved, rejected])
    assert finals[approved.order_id].to_state == "ORDER_APPROVED", finals
    assert finals[rejected.order_id].to_state == "ORDER_REJECTED", finals
    return Placed(
        urls, widget, rich, poor, approved.order_id, rejected.order_id, stock_before, account_before
    )


def test_saga_view_shows_state_order_and_timeline(placed: Placed) -> None:
    saga = http_get(f"{placed.urls.orchestrator}/sagas/{placed.approved}").json()

    assert saga["saga_id"] == placed.approved
    assert saga["worker"].startswith("http://")  # the owner of the saga's partition
    assert saga["state"] == "ORDER_APPROVED"
    assert saga["terminal"] is True
    assert saga["step"] is None and saga["deadline"] is None and saga["reason"] is None
    assert saga["order"] == {
        "order_id": placed.approved,
        "customer_id": placed.rich,
        "items": [{"product_id": placed.widget, "quantity": QUANTITY}],
        "total": {"amount": "5.00", "currency": "EUR"},
    }
    timeline = saga["timeline"]
    assert saga["timeline_complete"] is True
    assert [(e["from_state"], e["to_state"], e["trigger"]) for e in timeline] == APPROVED_PATH
    assert (
        [e["sequence"] for e in timeline] == [1, 2, 3, 4, 5] == list(range(1, saga["sequence"] + 1))
    )
    assert [e["terminal"] for e in timeline] == [False, False, False, False, True]
    assert [e["at"] for e in timeline] == sorted(e["at"] for e in timeline)
    assert timeline[0]["commands"] == ["CreateOrder"]
    assert timeline[-1]["commands"] == ["SellProducts"]  # the sale is final


def test_saga_view_with_trailing_slash_is_the_same(placed: Placed) -> None:
    plain = http_get(f"{placed.urls.orchestrator}/sagas/{placed.approved}").json()
    slash = http_get(f"{placed.urls.orchestrator}/sagas/{placed.approved}/").json()
    assert slash == plain


def test_rejected_saga_shows_the_reason(placed: Placed) -> None:
    saga = http_get(f"{placed.urls.orchestrator}/sagas/{placed.rejected}").json()
    assert saga["state"] == "ORDER_REJECTED"
    assert "insufficient funds" in saga["reason"]
    states = [e["to_state"] for e in saga["timeline"]]
    assert states[0] == "CREATING_ORDER"
    assert states[-3:] == ["RELEASING_PRODUCTS", "REJECTING_ORDER", "ORDER_REJECTED"]
    assert saga["timeline"][-1]["reason"] == saga["reason"]


def test_order_views(placed: Placed) -> None:
    approved = http_get(f"{placed.urls.order}/orders/{placed.approved}").json()
    assert approved["order_id"] == placed.approved
    assert approved["customer_id"] == placed.rich
    assert approved["status"] == "APPROVED"
    assert approved["items"] == [{"product_id": placed.widget, "quantity": QUANTITY}]
    rejected = http_get(f"{placed.urls.order}/orders/{placed.rejected}").json()
    assert rejected["status"] == "REJECTED"
    assert "insufficient funds" in rejected["reason"]


def test_stock_views(placed: Placed) -> None:
    url = f"{placed.urls.product}/stock/{placed.widget}"
    # The sale is recorded when the Product Service gets SellProducts (the saga approved).
    after = _settled(url, placed.approved, "SOLD")
    _settled(url, placed.rejected, "RELEASED")
    before = placed.stock_before

    assert after["product_id"] == placed.widget
    assert after["unit_price"] == {"amount": "2.50", "currency": "EUR"}
    assert after["available"] == before["available"] - QUANTITY
    assert after["sold"] == before["sold"] + QUANTITY
    assert after["restocked"] == before["restocked"] == 100_000
    assert after["returned"] == before["returned"] == 0
    assert after["available"] + after["reserved"] + after["sold"] == after["restocked"]
    assert after["holds"] == [{"saga_id": placed.approved, "quantity": QUANTITY, "status": "SOLD"}]
    listed = http_get(f"{url}?holds=1000").json()["holds"]  # every saga that touched it
    assert {"saga_id": placed.rejected, "quantity": QUANTITY, "status": "RELEASED"} in listed
    assert {"saga_id": placed.approved, "quantity": QUANTITY, "status": "SOLD"} in listed

    listing = http_get(f"{placed.urls.product}/stock?prefix={quote(placed.widget)}&limit=10").json()
    assert listing["scope"] == ALL_SCOPE
    assert listing["partitions"] == list(range(topics.partitions("saga-product-stock-changelog")))
    assert listing["filter"] == {"prefix": placed.widget}
    (row,) = listing["products"]  # whichever worker owns it
    assert row["product_id"] == placed.widget
    assert {k: row[k] for k in ("available", "reserved", "sold")} == {
        k: after[k] for k in ("available", "reserved", "sold")
    }
    whole = http_get(f"{placed.urls.product}/stock?limit=1000").json()
    for row in whole["products"]:  # the stock invariant, for every product shown
        in_stock = row["available"] + row["reserved"] + row["sold"]
        assert in_stock == row["restocked"] + row["returned"], row


def test_account_view(placed: Placed) -> None:
    account = http_get(f"{placed.urls.payment}/accounts/{placed.rich}").json()
    before = placed.account_before
    total = Decimal("2.50") * QUANTITY

    assert account["customer_id"] == placed.rich
    assert account["topped_up"] == {"amount": "1000000.00", "currency": "EUR"}
    assert Decimal(account["balance"]["amount"]) == Decimal(before["balance"]["amount"]) - total
    captured = Decimal(account["captured"]["amount"])
    assert captured == Decimal(before["captured"]["amount"]) + total
    payment = {
        "saga_id": placed.approved,
        "amount": {"amount": "5.00", "currency": "EUR"},
        "status": "AUTHORIZED",
        "reason": None,
    }
    one = http_get(f"{placed.urls.payment}/accounts/{placed.rich}?saga={placed.approved}").json()
    assert one["payments"] == [payment]
    listed = account["payments"]  # by saga id, at most ?limit= (other tests pay too)
    assert 1 <= len(listed) <= 100 and [p["saga_id"] for p in listed] == sorted(
        p["saga_id"] for p in listed
    )
    poor = http_get(f"{placed.urls.payment}/accounts/{placed.poor}").json()
    assert poor["balance"] == {"amount": "1.00", "currency": "EUR"}
    refused = next(p for p in poor["payments"] if p["saga_id"] == placed.rejected)
    assert refused["status"] == "FAILED"
    assert "insufficient funds" in refused["reason"]


def test_saga_list_counts_and_filter(placed: Placed) -> None:
    listing = http_get(f"{placed.urls.orchestrator}/sagas?limit=1000").json()
    assert listing["scope"] == ALL_SCOPE
    assert listing["workers"] == [placed.urls.orchestrator]  # the session runs one
    counts = listing["counts"]
    assert "ORDER_APPROVED" in counts and "CREATING_ORDER" in counts
    assert sum(counts.values()) == listing["total"]
    assert len(listing["sagas"]) == min(1000, listing["total"])
    updated = [s["updated_at"] for s in listing["sagas"]]
    assert updated == sorted(updated, reverse=True)

    approved = http_get(f"{placed.urls.orchestrator}/sagas?state=ORDER_APPROVED&limit=1000").json()
    assert approved["filter"] == {
        "state": "ORDER_APPROVED",
        "saga": None,
        "waiting": None,
        "stuck_for": None,
        "entered_before": None,
    }
    assert approved["matched"] == approved["counts"]["ORDER_APPROVED"]
    assert {s["state"] for s in approved["sagas"]} <= {"ORDER_APPROVED"}
    assert len(approved["sagas"]) == min(1000, approved["counts"]["ORDER_APPROVED"])
    mine = next(s for s in approved["sagas"] if s["saga_id"] == placed.approved)
    assert mine["url"] == f"/sagas/{placed.approved}"
    assert mine["total"] == {"amount": "5.00", "currency": "EUR"}

    one = http_get(f"{placed.urls.orchestrator}/sagas/?limit=1").json()
    assert len(one["sagas"]) <= 1

    # One worker owns every partition: its own part is the whole table.
    local = http_get(f"{placed.urls.orchestrator}/sagas?limit=1000&scope=local").json()
    assert local["scope"] == "partitions owned by this worker"
    assert local["partitions"] == listing["partitions"]
    assert local["counts"]["ORDER_APPROVED"] >= approved["counts"]["ORDER_APPROVED"]


def _pages(placed: Placed) -> list[tuple[str, str]]:
    """(url, text the page must show) for every view."""
    u = placed.urls
    return [
        (f"{u.orchestrator}/sagas/{placed.approved}", placed.approved),
        (f"{u.orchestrator}/sagas", "ORDER_APPROVED"),
        (f"{u.order}/orders/{placed.approved}", placed.approved),
        (f"{u.product}/stock", "Stock"),
        (f"{u.product}/stock/{placed.widget}", placed.widget),
        (f"{u.payment}/accounts/{placed.rich}", placed.rich),
    ]


def test_html_by_accept_header_or_format_parameter(placed: Placed) -> None:
    for url, shown in _pages(placed):
        by_header = http_get(url, accept="text/html,application/xhtml+xml,*/*;q=0.8")
        by_param = http_get(f"{url}?format=html")
        for reply in (by_header, by_param):
            assert reply.status == 200, url
            assert reply.content_type == "text/html", url
            assert reply.text.startswith("<!DOCTYPE html>"), url
            assert shown in reply.text, url
        # ?format= wins over the Accept header; no preference means JSON.
        assert http_get(f"{url}?format=json", accept="text/html").content_type == "application/json"
        assert http_get(url).content_type == "application/json"
        assert http_get(url, accept="application/json").content_type == "application/json"


def test_saga_page_has_the_timeline(placed: Placed) -> None:
    page = http_get(f"{placed.urls.orchestrator}/sagas/{placed.approved}?format=html").text
    assert 'id="timeline"' in page
    positions = [page.index(f'data-to-state="{to}"') for _from, to, _trigger in APPROVED_PATH]
    assert positions == sorted(positions)


def test_unknown_keys_are_404(placed: Placed) -> None:
    u = placed.urls
    missing = "no-such-key-0000"
    for url in (
        f"{u.orchestrator}/sagas/{missing}",
        f"{u.order}/orders/{missing}",
        f"{u.product}/stock/{missing}",
        f"{u.payment}/accounts/{missing}",
    ):
        # 503 is "retry": a worker that took partitions over (an earlier test stopped a
        # second worker) answers it for missing keys until it has committed past them.
        reply = poll(partial(http_get, url), lambda r: r.status != 503, f"GET {url} settled")
        assert reply.status == 404, url
        body = reply.json()
        assert body["status"] == 404 and missing in body["error"], body
        page = http_get(url, accept="text/html")
        assert (page.status, page.content_type) == (404, "text/html"), url
        assert missing in page.text


def test_html_escapes_what_the_url_carries(placed: Placed) -> None:
    evil = "<script>alert(1)</script>"
    page = http_get(f"{placed.urls.orchestrator}/sagas/{quote(evil, safe='')}?format=html")
    assert page.status == 404
    assert evil not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/sagas?state=BOGUS", "state"),
        ("/sagas?state=order_approved", "state"),
        ("/sagas?limit=0", "limit"),
        ("/sagas?limit=many", "limit"),
        ("/sagas?limit=100000", "limit"),
        ("/sagas?format=xml", "format"),
        ("/sagas?scope=mine", "scope"),
        ("/sagas?saga=Nope", "saga"),
        ("/sagas?waiting=maybe", "waiting"),
        ("/sagas?stuck_for=10", "stuck_for"),
        ("/sagas?entered_before=noon", "entered_before"),
    ],
)
def test_bad_query_parameters_are_400(placed: Placed, path: str, parameter: str) -> None:
    reply = http_get(placed.urls.orchestrator + path)
    assert reply.status == 400
    body = reply.json()
    assert body["parameter"] == parameter
    if parameter == "state":
        assert "ORDER_APPROVED" in body["allowed"]
        assert "ORDER_APPROVED" in body["error"]


def test_bad_query_parameters_of_participant_views_are_400(placed: Placed) -> None:
    u = placed.urls
    for url in (
        f"{u.product}/stock?limit=-1",
        f"{u.product}/stock/{placed.widget}?format=pdf",
        f"{u.order}/orders/{placed.approved}?format=pdf",
        f"{u.payment}/accounts/{placed.rich}?limit=x",
    ):
        reply = http_get(url)
        assert reply.status == 400, url
        assert "error" in reply.json()


def test_every_worker_reports_ready(placed: Placed) -> None:
    u = placed.urls
    for base in (u.orchestrator, u.order, u.product, u.payment):
        url = f"{base}/ready"
        reply = poll(partial(http_get, url), lambda r: r.status == 200, f"GET {url} -> 200")
        body = reply.json()
        assert body["ready"] is True and body["recovered"] is True, body
        assert body["worker"] == base
        page = http_get(f"{base}/ready/", accept="text/html")
        assert page.content_type == "text/html" and 'id="readiness"' in page.text
