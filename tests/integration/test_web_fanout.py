"""Two product workers: `/stock` asked of either lists the whole table (each worker gives
its partitions' part), `?scope=local` only the answering worker's part, and a worker that
does not answer makes the list a 503 naming it."""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import pytest

from messaging import client, topics
from messaging.local_workers import Workers
from tests.conftest import TEST_WORKER_PORTS
from tests.integration.order_helpers import Reply, http_get, poll, seed_products

pytestmark = pytest.mark.integration

SECOND_PRODUCT_PORT = TEST_WORKER_PORTS["product"] + 10
STOCK_CHANGELOG = "saga-product-stock-changelog"


def partition_of(product_id: str) -> int:
    return client.partition_for(product_id.encode(), topics.partitions("product.commands"))


def test_stock_lists_the_whole_table_from_either_of_two_workers(workers: Workers) -> None:
    prefix = f"fan-{uuid.uuid4().hex[:8]}"
    stocks = seed_products(prefix)
    ports = [TEST_WORKER_PORTS["product"], SECOND_PRODUCT_PORT]
    urls = {port: f"http://127.0.0.1:{port}" for port in ports}
    every_partition = list(range(topics.partitions(STOCK_CHANGELOG)))
    second = Workers(["product"], ports={"product": SECOND_PRODUCT_PORT}, loglevel="warning")
    second.start()
    try:
        second.wait_ready(timeout=180)

        def listings() -> dict[tuple[int, str], Reply]:
            return {
                (port, scope): http_get(
                    f"{urls[port]}/stock?prefix={prefix}-&limit=1000&scope={scope}", timeout=15
                )
                for port in ports
                for scope in ("all", "local")
            }

        def settled(replies: dict[tuple[int, str], Reply]) -> bool:
            """Both workers own partitions and the whole list has every seeded product."""
            if any(r.status != 200 for r in replies.values()):
                return False
            local = [replies[port, "local"].json()["partitions"] for port in ports]
            wholes = [replies[port, "all"].json() for port in ports]
            return all(local) and all(len(w["products"]) == len(stocks) for w in wholes)

        # The group rebalances onto both workers (and the seed is applied) meanwhile.
        replies = poll(listings, settled, "both product workers listing the seed", timeout=120)

        for port in ports:
            whole = replies[port, "all"].json()
            assert whole["scope"] == "all partitions, from every worker owning some"
            assert whole["worker"] == urls[port]
            assert whole["workers"] == sorted(urls.values())
            assert whole["partitions"] == every_partition
            assert whole["complete"] is True
            assert whole["matching"] == len(stocks)
            assert [p["product_id"] for p in whole["products"]] == sorted(stocks)
            assert {p["product_id"]: p["available"] for p in whole["products"]} == stocks

        owned = {}
        for port in ports:
            local = replies[port, "local"].json()
            assert local["scope"] == "partitions owned by this worker"
            assert local["workers"] == [urls[port]]
            owned[port] = local["partitions"]
            listed = {p["product_id"] for p in local["products"]}
            assert listed == {p for p in stocks if partition_of(p) in owned[port]}
            assert local["matching"] == len(listed)
        assert sorted(owned[ports[0]] + owned[ports[1]]) == every_partition

        page = http_get(f"{urls[ports[1]]}/stock?prefix={prefix}-&format=html").text
        assert all(url in page for url in urls.values())
        assert all(f"/stock/{p}" in page for p in sorted(stocks)[:50])

        # A worker that does not answer (frozen) makes the whole list a 503 naming it.
        assert second.workers["product"].process is not None
        group = second.workers["product"].process.pid
        os.killpg(group, signal.SIGSTOP)
        try:
            frozen = http_get(f"{urls[ports[0]]}/stock?prefix={prefix}-", timeout=30)
        finally:
            os.killpg(group, signal.SIGCONT)
        body: dict[str, Any] = frozen.json()
        assert frozen.status == 503, body
        assert urls[SECOND_PRODUCT_PORT] in body["error"], body
        assert "no answer within" in body["workers"][urls[SECOND_PRODUCT_PORT]], body
    finally:
        codes = second.stop()
        assert codes == {"product": 0}
        workers.wait_ready(timeout=180)  # the session's product worker owns everything again
