"""The Payment Service's web view: `/accounts/{customer_id}` (JSON or HTML).

Balance, total topped up, captured, and the customer's payments, one per saga (up to
`?limit=` of them, by saga id; `?saga=ID` shows that saga's). Routed by Faust to the
worker that owns the customer (`table_route`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust
from faust.web import Request, Response

from messaging import web as w
from messaging.tables import RowTable
from schemas import messages as m

SERVICE = "payment service"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def account_json(account: m.Account, payments: list[m.Payment], worker: str) -> dict[str, Any]:
    return {
        "customer_id": account.customer_id,
        "balance": w.money(account.balance),
        "topped_up": w.money(account.topped_up),
        "captured": w.money(account.captured_archived),
        "payments": [
            {
                "saga_id": p.saga_id,
                "amount": w.money(p.amount),
                "status": p.status,
                "reason": p.reason,
            }
            for p in payments
        ],
        "worker": worker,  # the worker owning the customer's partition (requests are routed)
    }


PAGES = w.pages("participants.payment")


def render_account(payload: Mapping[str, Any]) -> str:
    return PAGES.render(
        "account.html.j2", service=f"{SERVICE} · {payload['worker']}", account=payload
    )


def register_views(app: faust.App, accounts: RowTable) -> None:
    """Add the account view to the Payment Service's Faust web server."""

    class AccountDetail(w.NegotiatedView):
        service_name = SERVICE

        @w.table_route(app, accounts, "customer_id")
        async def get(self, request: Request, customer_id: str) -> Response:
            w.wants_html(request)
            limit = w.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
            account = accounts.get(customer_id.encode())
            if not isinstance(account, m.Account):
                raise w.missing(
                    app,
                    accounts,
                    customer_id,
                    f"no account {customer_id!r}",
                    customer_id=customer_id,
                )
            saga = request.query.get("saga")  # only that saga's payment
            payments = accounts.owned(customer_id.encode(), "payment", limit, saga)
            payload = account_json(account, payments, w.worker_url(app))
            return self.respond(request, payload, render_account)

    w.add_page(app, "/accounts/{customer_id}", AccountDetail)
    w.add_readiness(app, SERVICE)
