"""Order Service worker: the `orders` table (key order id) and its command agent."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from messaging import settings
from messaging.faust_app import typed_table, utc_now
from participants.order import logic
from participants.order.views import register_views
from participants.service import Handler, ParticipantService
from schemas import messages as m

APP_ID = settings.APP_IDS["order"]
DEFAULT_WEB_PORT = 6067
COMMAND_TOPIC = "order.commands"
MAX_CANCELS = 100_000  # cancel rows of one order read to forget them (one per cancel saga)


class OrderService(ParticipantService):
    def __init__(self, web_port: int = DEFAULT_WEB_PORT, **app_options: Any) -> None:
        super().__init__(APP_ID, web_port, **app_options)
        self.orders = typed_table(self.app, "orders")
        self.agent = self.consume(
            COMMAND_TOPIC,
            {
                m.CreateOrder: self._order_command(logic.create_order),
                m.ApproveOrder: self._order_command(logic.approve_order),
                m.RejectOrder: self._order_command(logic.reject_order),
                m.BeginCancelOrder: self._cancel_command(logic.begin_cancel_order),
                m.UndoBeginCancelOrder: self._cancel_command(logic.undo_begin_cancel_order),
                m.ConfirmCancelOrder: self._cancel_command(logic.confirm_cancel_order),
                m.ForgetOrder: self._forget_order,
                m.ForgetCancel: self._forget_cancel,
            },
            key_of=lambda command: command.order_id,
            name="handle_order_commands",
        )
        register_views(self.app, self.orders)

    def _order_command(self, decide: Callable[..., logic.Effect]) -> Handler:
        """A CreateOrderSaga command: it reads the order's row."""

        def handle(key: bytes, command: Any, offset: int) -> None:
            self._apply(decide(self.orders.row(key), command, utc_now(), offset))

        return handle

    def _cancel_command(self, decide: Callable[..., logic.Effect]) -> Handler:
        """A CancelOrderSaga command: it reads the order's row and the saga's row of it."""

        def handle(key: bytes, command: Any, offset: int) -> None:
            cancel = self.orders.row(logic.cancel_key(command.order_id, command.saga_id))
            self._apply(decide(self.orders.row(key), cancel, command, utc_now(), offset))

        return handle

    def _forget_order(self, key: bytes, command: m.ForgetOrder, offset: int) -> None:
        """An expired CreateOrderSaga: the order and every cancel row of it."""
        cancels = self.orders.owned(key, "cancel", limit=MAX_CANCELS)
        self._apply(logic.forget_order(self.orders.row(key), cancels, command, utc_now(), offset))

    def _forget_cancel(self, key: bytes, command: m.ForgetCancel, offset: int) -> None:
        cancel = self.orders.row(logic.cancel_key(command.order_id, command.saga_id))
        self._apply(logic.forget_cancel(self.orders.row(key), cancel, command, offset))

    def _apply(self, effect: logic.Effect) -> None:
        """Write the rows (in order, the order last; None: delete), then send the reply."""
        for row_key, row in effect.rows:
            if row is None:
                del self.orders[row_key]
            else:
                self.orders[row_key] = row
        if effect.reply is not None:
            self.reply(effect.reply)


def build(web_port: int | None = None, **app_options: Any) -> OrderService:
    port = web_port or int(os.environ.get("SAGA_ORDER_PORT", DEFAULT_WEB_PORT))
    return OrderService(web_port=port, **app_options)
