"""Order Service worker: the `orders` table (key order id) and its command agent."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from messaging import settings
from messaging.faust_app import typed_table, utc_now
from participants.order import logic
from participants.order.views import register_views
from participants.service import ParticipantService
from schemas import messages as m

APP_ID = settings.APP_IDS["order"]
DEFAULT_WEB_PORT = 6067
COMMAND_TOPIC = "order.commands"


class OrderService(ParticipantService):
    def __init__(self, web_port: int = DEFAULT_WEB_PORT, **app_options: Any) -> None:
        super().__init__(APP_ID, web_port, **app_options)
        self.orders = typed_table(self.app, "orders")
        self.agent = self.consume(
            COMMAND_TOPIC,
            {
                m.CreateOrder: self._apply(logic.create_order),
                m.ApproveOrder: self._apply(logic.approve_order),
                m.RejectOrder: self._apply(logic.reject_order),
            },
            key_of=lambda command: command.order_id,
            name="handle_order_commands",
        )
        register_views(self)

    def _apply(self, decide: Callable[..., tuple[m.OrderRow | None, Any]]) -> Any:
        def handle(key: bytes, command: Any, _offset: int) -> None:
            row = self.orders.row(key)
            new_row, reply = decide(row, command, utc_now())
            if new_row is not None and new_row is not row:
                self.orders[key] = new_row
            self.reply(reply)

        return handle


def build(web_port: int | None = None, **app_options: Any) -> OrderService:
    port = web_port or int(os.environ.get("SAGA_ORDER_PORT", DEFAULT_WEB_PORT))
    return OrderService(web_port=port, **app_options)
