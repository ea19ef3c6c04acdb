"""Payment Service worker: the `accounts` table (key customer id) and its command agent."""

from __future__ import annotations

import os
from typing import Any

from messaging.faust_app import typed_table, utc_now
from participants.payment import logic
from participants.payment.views import register_views
from participants.service import ParticipantService
from schemas import messages as m

APP_ID = "saga-payment"
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
                m.TopUp: self._top_up,
            },
            key_of=lambda message: message.customer_id,
            name="handle_payment_commands",
        )
        register_views(self)

    def _store(self, key: bytes, old: m.Account | None, new: m.Account | None) -> None:
        if new is not None and new is not old:
            self.accounts[key] = new

    async def _authorize(self, key: bytes, command: m.AuthorizePayment) -> None:
        account = self.accounts.row(key)
        new, reply = logic.authorize_payment(account, command, utc_now())
        self._store(key, account, new)
        self.reply(reply)

    async def _cancel(self, key: bytes, command: m.CancelPayment) -> None:
        account = self.accounts.row(key)
        new, reply = logic.cancel_payment(account, command, utc_now())
        self._store(key, account, new)
        self.reply(reply)

    async def _top_up(self, key: bytes, top_up: m.TopUp) -> None:
        account = self.accounts.row(key)
        self._store(key, account, logic.top_up(account, top_up))


def build(web_port: int | None = None, **app_options: Any) -> PaymentService:
    port = web_port or int(os.environ.get("SAGA_PAYMENT_PORT", DEFAULT_WEB_PORT))
    return PaymentService(web_port=port, **app_options)
