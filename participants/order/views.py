"""The Order Service's web view: `/orders/{order_id}` (JSON or HTML).

The order, its status (CANCEL_PENDING or CANCELLED once a CancelOrderSaga holds it, with
that saga), and what each cancel saga that asked did (up to `CANCELS_SHOWN`, by saga id).
Routed by Faust to the worker that owns the order's partition (`table_route`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust
from faust.web import Request, Response

from messaging import web as w
from messaging.tables import RowTable
from schemas import messages as m

SERVICE = "order service"
CANCELS_SHOWN = 50


def order_json(
    row: m.OrderRow, worker: str, cancels: list[m.OrderCancel] | None = None
) -> dict[str, Any]:
    return {
        "order_id": row.order_id,
        "customer_id": row.customer_id,
        "items": w.items(row.items),
        "status": row.status,
        "reason": row.reason,
        "cancel_saga": row.cancel_saga,  # holding it in CANCEL_PENDING, or that cancelled it
        "updated_at": w.timestamp(row.updated_at),
        "cancels": [
            {"saga_id": c.saga_id, "status": c.status, "reason": c.reason} for c in cancels or []
        ],
        "worker": worker,  # the worker owning the order's partition (requests are routed)
    }


PAGES = w.pages("participants.order")


def render_order(payload: Mapping[str, Any]) -> str:
    return PAGES.render("order.html.j2", service=f"{SERVICE} · {payload['worker']}", order=payload)


def register_views(app: faust.App, orders: RowTable) -> None:
    """Add the order view to the Order Service's Faust web server."""

    class OrderDetail(w.NegotiatedView):
        service_name = SERVICE

        @w.table_route(app, orders, "order_id")
        async def get(self, request: Request, order_id: str) -> Response:
            w.wants_html(request)  # a bad ?format= is a 400 before any work
            row: m.OrderRow | None = orders.get(order_id.encode())
            if row is None:
                raise w.missing(app, orders, order_id, f"no order {order_id!r}", order_id=order_id)
            cancels = orders.owned(order_id.encode(), "cancel", CANCELS_SHOWN)
            payload = order_json(row, w.worker_url(app), cancels)
            return self.respond(request, payload, render_order)

    w.add_page(app, "/orders/{order_id}", OrderDetail)
    w.add_readiness(app, SERVICE)
