"""Two workers of one service: a key lookup asked of either is answered by the worker that
owns the key's partition (Faust's `table_route` forwards the request)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from messaging import catalog
from messaging.local_workers import Workers
from tests.conftest import TEST_WORKER_PORTS
from tests.integration.order_helpers import http_get, poll

pytestmark = pytest.mark.integration

SECOND_PAYMENT_PORT = TEST_WORKER_PORTS["payment"] + 10


def test_either_payment_worker_answers_every_account_from_its_owner(workers: Workers) -> None:
    run = uuid.uuid4().hex[:8]
    customers = [f"route-{run}-{n}" for n in range(12)]
    balances = "\n".join(f'  - {{id: {c}, balance: "{n + 1}.00"}}' for n, c in enumerate(customers))
    catalog.publish(catalog.parse(f"customers:\n{balances}\n"))
    ports = [TEST_WORKER_PORTS["payment"], SECOND_PAYMENT_PORT]
    urls = {f"http://127.0.0.1:{port}" for port in ports}
    second = Workers(["payment"], ports={"payment": SECOND_PAYMENT_PORT}, loglevel="warning")
    second.start()
    try:
        second.wait_ready(timeout=180)

        def lookups() -> dict[tuple[str, int], tuple[int, Any]]:
            answers = {}
            for customer in customers:
                for port in ports:
                    reply = http_get(f"http://127.0.0.1:{port}/accounts/{customer}", timeout=10)
                    body = reply.json() if reply.status == 200 else reply.text[:200]
                    answers[customer, port] = (reply.status, body)
            return answers

        def settled(answers: dict[tuple[str, int], tuple[int, Any]]) -> bool:
            """Every lookup found, both workers agree, and each worker owns some keys."""
            if any(status != 200 for status, _ in answers.values()):
                return False
            owners = {body["worker"].rstrip("/") for _, body in answers.values()}
            agree = all(answers[c, ports[0]] == answers[c, ports[1]] for c in customers)
            return agree and owners == urls

        # The group rebalances onto both workers; until it has, lookups may 503 or differ.
        answers = poll(lookups, settled, "both payment workers answering alike", timeout=120)
        for n, customer in enumerate(customers):
            _, body = answers[customer, ports[1]]
            assert body["customer_id"] == customer
            assert body["balance"]["amount"] == f"{n + 1}.00"
    finally:
        codes = second.stop()
        assert codes == {"payment": 0}
        workers.wait_ready(timeout=180)  # the session's payment worker owns everything again
