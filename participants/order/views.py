"""The Order Service's web view: `/orders/{order_id}` (JSON or HTML).

Routed by Faust to the worker that owns the order's partition (`table_route`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response

from messaging import web as w
from schemas import messages as m

if TYPE_CHECKING:
    from participants.order.app import OrderService

SERVICE = "order service"


def order_json(row: m.OrderRow, worker: str) -> dict[str, Any]:
    return {
        "order_id": row.order_id,
        "customer_id": row.customer_id,
        "items": w.items(row.items),
        "status": row.status,
        "reason": row.reason,
        "updated_at": w.timestamp(row.updated_at),
        "worker": worker,  # the worker owning the order's partition (requests are routed)
    }


def render_order(payload: Mapping[str, Any]) -> str:
    return w.document(
        f"Order {payload['order_id']}",
        f"{SERVICE} · {payload['worker']}",
        w.fields(
            [
                ("status", w.state_badge(payload["status"], class_="status")),
                ("customer", payload["customer_id"] or None),
                ("reason", payload["reason"]),
                ("last update", payload["updated_at"]),
            ],
            id="order",
        ),
        w.section(
            "Items",
            w.table(
                ["product", "quantity"],
                [(i["product_id"], i["quantity"]) for i in payload["items"]],
                numeric={1},
                id="items",
                class_="compact",
            ),
        ),
    )


def register_views(service: OrderService) -> None:
    """Add the order view to the Order Service's Faust web server."""
    app = service.app
    orders = service.orders

    class OrderDetail(w.NegotiatedView):
        service_name = SERVICE

        @w.table_route(app, orders, "order_id")
        async def get(self, request: Request, order_id: str) -> Response:
            w.wants_html(request)  # a bad ?format= is a 400 before any work
            row: m.OrderRow | None = orders.get(order_id.encode())
            if row is None:
                raise w.missing(app, orders, order_id, f"no order {order_id!r}", order_id=order_id)
            return self.respond(request, order_json(row, w.worker_url(app)), render_order)

    w.add_page(app, "/orders/{order_id}", OrderDetail)
    w.add_readiness(app, SERVICE)
