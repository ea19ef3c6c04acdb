"""Product Service worker.

Two tables, each keyed like the topics that update it:
- `stock` (key product id) on product.stock: per-item reserve/release/sell and Restock;
- `reservations` (key saga id) on product.commands, product.item-results and saga.events
  (co-partitioned): splits ReserveProducts per item, collects the per-item results and
  replies once; turns a reservation into a sale when the saga is approved.
"""

from __future__ import annotations

import os
from typing import Any

import faust

from messaging.faust_app import typed_table, utc_now
from participants.product import logic
from participants.product.views import register_views
from participants.service import ParticipantService
from schemas import messages as m

APP_ID = "saga-product"
DEFAULT_WEB_PORT = 6068
COMMAND_TOPIC = "product.commands"
STOCK_TOPIC = "product.stock"
RESULTS_TOPIC = "product.item-results"
EVENTS_TOPIC = "saga.events"
APPROVED = "ORDER_APPROVED"


class ProductService(ParticipantService):
    def __init__(self, web_port: int = DEFAULT_WEB_PORT, **app_options: Any) -> None:
        super().__init__(APP_ID, web_port, **app_options)
        self.stock = typed_table(self.app, "stock")
        self.reservations = typed_table(self.app, "reservations")
        self.command_agent = self.consume(
            COMMAND_TOPIC,
            {m.ReserveProducts: self._reserve_products, m.ReleaseProducts: self._release_products},
            key_of=lambda command: command.saga_id,
            name="handle_product_commands",
        )
        self.stock_agent = self.consume(
            STOCK_TOPIC,
            {
                m.ReserveItem: self._apply_stock,
                m.ReleaseItem: self._apply_stock,
                m.SellItem: self._apply_stock,
                m.Restock: self._apply_stock,
            },
            key_of=lambda message: message.product_id,
            name="handle_stock",
        )
        self.results_agent = self.consume(
            RESULTS_TOPIC,
            {m.ItemResult: self._collect_result},
            key_of=lambda result: result.saga_id,
            name="collect_item_results",
        )
        self.events_agent = self.consume(
            EVENTS_TOPIC,
            {m.SagaEvent: self._on_saga_event},
            key_of=lambda event: event.saga_id,
            name="sell_approved_reservations",
        )
        register_views(self)

    # ---- reservations (key saga id) ----

    async def _apply_reservation(self, key: bytes, outcome: tuple[Any, ...], old: Any) -> None:
        new, item_messages, reply = outcome
        if new is not None and new is not old:
            self.reservations[key] = new
        for message in item_messages:
            self.sender.send(STOCK_TOPIC, message.product_id.encode(), message)
        if reply is not None:
            self.reply(reply)

    async def _reserve_products(self, key: bytes, command: m.ReserveProducts) -> None:
        row = self.reservations.row(key)
        await self._apply_reservation(key, logic.start_reservation(row, command, utc_now()), row)

    async def _release_products(self, key: bytes, command: m.ReleaseProducts) -> None:
        row = self.reservations.row(key)
        await self._apply_reservation(key, logic.release_reservation(row, command, utc_now()), row)

    async def _collect_result(self, key: bytes, result: m.ItemResult) -> None:
        row = self.reservations.row(key)
        # Even for an unknown saga: the logic hands back stock reserved for it.
        await self._apply_reservation(key, logic.collect_result(row, result, utc_now()), row)

    async def _on_saga_event(self, key: bytes, event: m.SagaEvent) -> None:
        if not (event.terminal and event.to_state == APPROVED):
            return
        row = self.reservations.row(key)
        if row is None:
            return
        new, sells = logic.sell_reservation(row, utc_now())
        await self._apply_reservation(key, (new, sells, None), row)

    # ---- stock (key product id) ----

    async def _apply_stock(self, key: bytes, message: logic.StockMessage | m.Restock) -> None:
        # The offset tells a replay after a crash from a new message (applied_offset).
        event = faust.current_event()
        if event is None:  # only the stock agent's stream calls this
            raise RuntimeError("a stock message handled outside its stream")
        offset = event.message.offset
        row = self.stock.row(key)
        new, result = logic.apply_stock_message(row, message, offset)
        if new is not None and new is not row:
            self.stock[key] = new
        if result is not None:
            self.sender.send(RESULTS_TOPIC, result.saga_id.encode(), result)


def build(web_port: int | None = None, **app_options: Any) -> ProductService:
    port = web_port or int(os.environ.get("SAGA_PRODUCT_PORT", DEFAULT_WEB_PORT))
    return ProductService(web_port=port, **app_options)
