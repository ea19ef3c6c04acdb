"""The Product Service's web views: `/stock` and `/stock/{product_id}` (JSON or HTML).

- `/stock?prefix=t-&limit=100`: the products (by id, optionally only ids starting with
  `prefix`), with available, reserved, sold, returned (of the sold, given back by
  cancelled orders), restocked and price, over the whole table:
  each product worker owning partitions gives its part, merged here (`?scope=local`: only
  this worker's partitions).
- `/stock/{product_id}`: one product and, per saga, what it holds or how that ended (up
  to `?holds=` of them, by saga id; `?saga=ID` shows that saga's). Routed by Faust to
  the worker that owns the product (`table_route`).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import faust
from faust.web import Request, Response

from messaging import web as w
from messaging.tables import RowTable
from schemas import messages as m

SERVICE = "product service"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SCAN_CAP = 100_000  # products one /stock request reads at most
HOLDS_SHOWN = 50


def stock_summary(row: m.StockRow) -> dict[str, Any]:
    return {
        "product_id": row.product_id,
        "available": row.available,
        "reserved": row.reserved,
        "sold": row.sold,
        "returned": row.returned,
        "restocked": row.restocked,
        "unit_price": w.money(row.unit_price),
        "url": w.path("stock", row.product_id),
    }


def stock_detail(row: m.StockRow, holds: list[m.StockHold], worker: str) -> dict[str, Any]:
    return {
        **stock_summary(row),
        "holds": [
            {"saga_id": h.saga_id, "quantity": h.quantity, "status": h.status} for h in holds
        ],
        "worker": worker,  # the worker owning the product's partition (requests are routed)
    }


def merge_lists(parts: Sequence[Mapping[str, Any]], limit: int) -> dict[str, Any]:
    """The /stock rows of several workers' parts: matches summed, the first `limit` by id."""
    return {
        "matching": sum(part["matching"] for part in parts),
        "products": w.top_rows(
            parts, "products", limit, key=itemgetter("product_id"), largest=False
        ),
    }


PAGES = w.pages("participants.product")


def render_list(payload: Mapping[str, Any]) -> str:
    return PAGES.render(
        "stock.html.j2",
        service=f"{SERVICE} · {payload['worker']}",
        stock=payload,
        scan_cap=SCAN_CAP,
    )


def render_product(payload: Mapping[str, Any]) -> str:
    return PAGES.render(
        "product.html.j2", service=f"{SERVICE} · {payload['worker']}", product=payload
    )


def register_views(app: faust.App, stock: RowTable) -> None:
    """Add the stock views to the Product Service's Faust web server."""

    class StockList(w.NegotiatedView):
        service_name = SERVICE

        async def get(self, request: Request) -> Response:
            w.wants_html(request)
            limit = w.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
            prefix = request.query.get("prefix") or ""

            async def local() -> dict[str, Any]:
                scan = await w.scan_table(stock, SCAN_CAP)
                matching = [
                    row
                    for _key, row in scan.rows
                    if isinstance(row, m.StockRow) and row.product_id.startswith(prefix)
                ]
                first = heapq.nsmallest(limit, matching, key=lambda row: row.product_id)
                return {
                    "filter": {"prefix": prefix or None},
                    "limit": limit,
                    "matching": len(matching),
                    "complete": scan.complete,
                    "products": [stock_summary(row) for row in first],
                }

            payload = await w.whole_table(app, stock, request, local, merge_lists)
            return self.respond(request, payload, render_list)

    class StockDetail(w.NegotiatedView):
        service_name = SERVICE

        @w.table_route(app, stock, "product_id")
        async def get(self, request: Request, product_id: str) -> Response:
            w.wants_html(request)
            row = stock.get(product_id.encode())
            if not isinstance(row, m.StockRow):
                raise w.missing(
                    app, stock, product_id, f"no product {product_id!r}", product_id=product_id
                )
            limit = w.int_param(request, "holds", HOLDS_SHOWN, minimum=0, maximum=MAX_LIMIT)
            saga = request.query.get("saga")  # only that saga's hold
            holds = stock.owned(product_id.encode(), "hold", limit, saga)
            payload = stock_detail(row, holds, w.worker_url(app))
            return self.respond(request, payload, render_product)

    w.add_page(app, "/stock", StockList)
    w.add_page(app, "/stock/{product_id}", StockDetail)
    w.add_readiness(app, SERVICE)
