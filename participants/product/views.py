"""The Product Service's web views: `/stock` and `/stock/{product_id}` (JSON or HTML).

- `/stock?prefix=t-&limit=100`: the products (by id, optionally only ids starting with
  `prefix`), with available, reserved, sold, restocked and price, over the whole table:
  each product worker owning partitions gives its part, merged here (`?scope=local`: only
  this worker's partitions).
- `/stock/{product_id}`: one product with the sagas holding a reservation and the latest
  settled ones. Routed by Faust to the worker that owns the product (`table_route`).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response

from messaging import web as w
from schemas import messages as m

if TYPE_CHECKING:
    from participants.product.app import ProductService

SERVICE = "product service"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SCAN_CAP = 100_000  # rows of the stock table one /stock request reads at most
SETTLED_SHOWN = 20


def stock_summary(row: m.StockRow) -> dict[str, Any]:
    return {
        "product_id": row.product_id,
        "available": row.available,
        "reserved": row.reserved,
        "sold": row.sold,
        "restocked": row.restocked,
        "unit_price": w.money(row.unit_price),
        "url": w.path("stock", row.product_id),
    }


def stock_detail(row: m.StockRow, worker: str) -> dict[str, Any]:
    settled = list(row.settled.items())[-SETTLED_SHOWN:]
    return {
        **stock_summary(row),
        "reservations": dict(row.reservations),  # saga id -> quantity held
        "recent_settled": [
            {"saga_id": saga_id, "outcome": outcome} for saga_id, outcome in reversed(settled)
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


def render_list(payload: Mapping[str, Any]) -> str:
    rows = [
        (
            w.link(p["url"], p["product_id"]),
            p["available"],
            p["reserved"],
            p["sold"],
            p["restocked"],
            w.money_text(p["unit_price"]),
        )
        for p in payload["products"]
    ]
    shown = f"{len(rows)} of {payload['matching']} product(s)"
    if not payload["complete"]:
        shown += f" (a worker's scan stopped at {SCAN_CAP} rows)"
    return w.document(
        "Stock",
        f"{SERVICE} · {payload['worker']}",
        w.scope_note(payload, shown),
        w.table(
            ["product", "available", "reserved", "sold", "restocked", "unit price"],
            rows,
            numeric={1, 2, 3, 4, 5},
            id="stock",
            empty="no product here",
        ),
    )


def render_product(payload: Mapping[str, Any]) -> str:
    return w.document(
        f"Product {payload['product_id']}",
        f"{SERVICE} · {payload['worker']}",
        w.fields(
            [
                ("available", payload["available"]),
                ("reserved", payload["reserved"]),
                ("sold", payload["sold"]),
                ("restocked", payload["restocked"]),
                ("unit price", w.money_text(payload["unit_price"])),
            ],
            id="product",
        ),
        w.section(
            "Held by open sagas",
            w.table(
                ["saga", "quantity"],
                [
                    (w.tag("span", saga, class_="mono"), q)
                    for saga, q in payload["reservations"].items()
                ],
                numeric={1},
                id="reservations",
                class_="compact",
                empty="no reservation",
            ),
        ),
        w.section(
            "Recently settled",
            w.table(
                ["saga", "outcome"],
                [
                    (
                        w.tag("span", s["saga_id"], class_="mono"),
                        w.state_badge(s["outcome"], class_="status"),
                    )
                    for s in payload["recent_settled"]
                ],
                id="settled",
                class_="compact",
                empty="none",
            ),
        ),
        w.tag("p", w.link(w.path("stock"), "all products"), class_="note"),
    )


def register_views(service: ProductService) -> None:
    """Add the stock views to the Product Service's Faust web server."""
    app = service.app
    stock = service.stock

    class StockList(w.NegotiatedView):
        service_name = SERVICE

        async def get(self, request: Request) -> Response:
            w.wants_html(request)
            limit = w.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
            prefix = request.query.get("prefix") or ""

            async def local() -> dict[str, Any]:
                scan = await w.scan_table(stock, SCAN_CAP)
                matching = [row for _key, row in scan.rows if row.product_id.startswith(prefix)]
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
            row: m.StockRow | None = stock.get(product_id.encode())
            if row is None:
                raise w.not_found(f"no product {product_id!r}", product_id=product_id)
            return self.respond(request, stock_detail(row, w.worker_url(app)), render_product)

    w.add_page(app, "/stock", StockList)
    w.add_page(app, "/stock/{product_id}", StockDetail)
    w.add_readiness(app, SERVICE)
