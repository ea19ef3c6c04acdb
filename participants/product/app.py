"""Product Service worker: the `stock` table (key product id) and one agent on
product.commands (key product id).

The CreateOrderSaga's ReserveProducts, ReleaseProducts and SellProducts, and the
CancelOrderSaga's ReturnProducts, travel from product to product of the order, each hop
handled where the product's row lives; the last hop replies
(participants/product/logic.py). Restock comes on the same topic.
"""

from __future__ import annotations

import os
from typing import Any

from messaging import settings
from messaging.faust_app import typed_table, utc_now
from participants.product import logic
from participants.product.views import register_views
from participants.service import ParticipantService
from schemas import messages as m

APP_ID = settings.APP_IDS["product"]
DEFAULT_WEB_PORT = 6068
COMMAND_TOPIC = "product.commands"


class ProductService(ParticipantService):
    def __init__(self, web_port: int = DEFAULT_WEB_PORT, **app_options: Any) -> None:
        super().__init__(APP_ID, web_port, **app_options)
        self.stock = typed_table(self.app, "stock")
        handle = self._handle
        self.agent = self.consume(
            COMMAND_TOPIC,
            {
                m.ReserveProducts: handle,
                m.ReleaseProducts: handle,
                m.SellProducts: handle,
                m.ReturnProducts: handle,
                m.ForgetProducts: handle,
                m.ReleaseItem: handle,
                m.Restock: handle,
            },
            key_of=logic.product_of,
            name="handle_product_commands",
        )
        register_views(self.app, self.stock)

    def _handle(self, key: bytes, record: Any, offset: int) -> None:
        """Read the product's row and the saga's hold, apply the logic, write the rows
        (in order, the product's last), then send what the logic said."""
        owned = self.stock.row(logic.owned_key(record))
        effect = logic.handle(record, self.stock.row(key), owned, utc_now(), offset)
        for row_key, row in effect.rows:
            if row is None:  # forgotten
                del self.stock[row_key]
            else:
                self.stock[row_key] = row
        for forward in effect.forward:
            self.forward(COMMAND_TOPIC, logic.product_of(forward).encode(), forward)
        if effect.reply is not None:
            self.reply(effect.reply)


def build(web_port: int | None = None, **app_options: Any) -> ProductService:
    port = web_port or int(os.environ.get("SAGA_PRODUCT_PORT", DEFAULT_WEB_PORT))
    return ProductService(web_port=port, **app_options)
