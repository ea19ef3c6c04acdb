"""Payment Service worker: the `accounts` table (key customer id) and its command agent."""

from __future__ import annotations

import os
from typing import Any

from messaging import settings
from messaging.faust_app import typed_table, utc_now
from participants.payment import logic
from participants.payment.views import register_views
from participants.service import ParticipantService
from schemas import messages as m

APP_ID = settings.APP_IDS["payment"]
DEFAULT_WEB_PORT = 6069
COMMAND_TOPIC = "payment.commands"


class PaymentService(ParticipantService):
    def __init__(self, web_port: int = DEFAULT_WEB_PORT, **app_options: Any) -> None:
        super().__init__(APP_ID, web_port, **app_options)
        self.accounts = typed_table(self.app, "accounts")
        self.agent = self.consume(
            COMMAND_TOPIC,
            {
                m.AuthorizePayment: self._authorize,
                m.CancelPayment: self._cancel,
                m.RefundPayment: self._refund,
                m.ForgetPayment: self._forget,
                m.TopUp: self._top_up,
            },
            key_of=lambda message: message.customer_id,
            name="handle_payment_commands",
        )
        register_views(self.app, self.accounts)

    def _payment(self, customer_id: str, saga_id: str) -> m.Payment | None:
        return self.accounts.row(logic.payment_key(customer_id, saga_id))

    def _authorize(self, key: bytes, command: m.AuthorizePayment, offset: int) -> None:
        account, payment = self.accounts.row(key), self._payment(key.decode(), command.saga_id)
        self._apply(logic.authorize_payment(account, payment, command, utc_now(), offset))

    def _cancel(self, key: bytes, command: m.CancelPayment, offset: int) -> None:
        account, payment = self.accounts.row(key), self._payment(key.decode(), command.saga_id)
        self._apply(logic.cancel_payment(account, payment, command, utc_now(), offset))

    def _refund(self, key: bytes, command: m.RefundPayment, offset: int) -> None:
        """A cancelled order's refund: the payment is its CreateOrderSaga's (the order id)."""
        account, payment = self.accounts.row(key), self._payment(key.decode(), command.order_id)
        self._apply(logic.refund_payment(account, payment, command, utc_now(), offset))

    def _forget(self, key: bytes, command: m.ForgetPayment, offset: int) -> None:
        payment = self._payment(key.decode(), command.saga_id)
        self._apply(logic.forget_payment(self.accounts.row(key), payment, command, offset))

    def _top_up(self, key: bytes, command: m.TopUp, offset: int) -> None:
        applied = self.accounts.row(logic.top_up_key(command.customer_id, command.top_up_id))
        self._apply(logic.top_up(self.accounts.row(key), applied, command, offset))

    def _apply(self, effect: logic.Effect) -> None:
        """Write the rows (in order, the account last), then send the reply."""
        for row_key, row in effect.rows:
            if row is None:  # forgotten
                del self.accounts[row_key]
            else:
                self.accounts[row_key] = row
        if effect.reply is not None:
            self.reply(effect.reply)


def build(web_port: int | None = None, **app_options: Any) -> PaymentService:
    port = web_port or int(os.environ.get("SAGA_PAYMENT_PORT", DEFAULT_WEB_PORT))
    return PaymentService(web_port=port, **app_options)
