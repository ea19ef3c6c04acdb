"""Reliability: the reduced chaos run, and SIGTERM under load.

The chaos run (`saga chaos`, `make chaos` with 2000 orders) gets a broker and workers of
its own (home .local/chaos-test, port 19192, web ports 7166-7169): it stops and wipes
them, so it never touches the session's broker and workers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from bench.invariants import DEADLINE_REASONS
from cli.processes import Workers
from messaging import client, settings
from messaging.catalog import Catalog
from participants.payment.logic import account_invariant_violations
from participants.product.logic import stock_invariant_violations
from schemas import messages as m
from tests.integration.order_helpers import customer, product, wait_terminal

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

CHAOS_HOME = settings.PROJECT_ROOT / ".local" / "chaos-test"
CHAOS_ARGS = [
    "--orders", "150", "--kills", "1", "--terms", "1", "--rate", "20",
    "--home", str(CHAOS_HOME), "--port", "19192", "--web-port-base", "7166",
    "--settle-timeout", "180",
]  # fmt: skip
STOP_WITHIN = 30.0


@pytest.mark.timeout(290)
def test_reduced_chaos_run_passes() -> None:
    """Crashes, a SIGTERM each, a broker restart, duplicates and bad records: every
    invariant holds (the printed table says what was injected and found)."""
    command = [sys.executable, "-m", "cli.main", "chaos", *CHAOS_ARGS]
    run = subprocess.run(command, capture_output=True, text=True, timeout=280)
    report = run.stdout[-6000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert report.rstrip().endswith("PASS"), report


class OrderFeed(threading.Thread):
    """Places an order every `interval` seconds until stopped: load for the SIGTERMs."""

    def __init__(self, customer_id: str, product_id: str, interval: float = 0.1) -> None:
        super().__init__(name="order-feed", daemon=True)
        self.items = [(product_id, 1)]
        self.customer_id = customer_id
        self.interval = interval
        self.placed: list[m.OrderRequested] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        producer = client.producer()
        while not self.stopping.wait(self.interval):
            request = client.order_requested(self.customer_id, self.items)
            client.send(producer, client.REQUEST_TOPIC, request.order_id, request)
            producer.poll(0)
            self.placed.append(request)
        client.flush(producer)

    def stop(self) -> list[m.OrderRequested]:
        self.stopping.set()
        self.join(timeout=30)
        return self.placed


def sigterm(workers: Workers, name: str) -> tuple[int | None, float]:
    """SIGTERM one worker; its exit code and how long it took (None: still running)."""
    process = workers.workers[name].process
    assert process is not None and process.poll() is None
    began = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    try:
        code: int | None = process.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        code = None
        workers.kill(name)
    return code, time.monotonic() - began


def test_sigterm_under_load_lets_each_worker_finish_and_nothing_is_lost(
    workers: Workers, test_catalog: Catalog
) -> None:
    widget, rich = product(test_catalog, "widget"), customer(test_catalog, "rich")
    feed = OrderFeed(rich, widget)
    feed.start()
    stops = {}
    try:
        for name in ("product", "orchestrator", "payment", "order"):
            time.sleep(2)  # a few orders in flight everywhere
            stops[name] = sigterm(workers, name)
            workers.start(name)
            workers.wait_ready(timeout=120)
    finally:
        orders = feed.stop()
    hung = {name: f"exit {code} after {took:.1f}s" for name, (code, took) in stops.items()}
    assert all(code == 0 for code, _took in stops.values()), hung

    # Nothing lost: every saga ends, approved unless a deadline ran out during a restart.
    finals = wait_terminal(orders, timeout=240)
    rejected = [e for e in finals.values() if e.to_state != "ORDER_APPROVED"]
    assert all(e.reason in DEADLINE_REASONS for e in rejected), rejected
    rows = client.table_rows("saga-order-orders-changelog")
    reservations = client.table_rows("saga-product-reservations-changelog")
    for order in orders:
        approved = finals[order.order_id].to_state == "ORDER_APPROVED"
        row, held = rows[order.order_id.encode()], reservations[order.order_id.encode()]
        assert isinstance(row, m.OrderRow) and isinstance(held, m.Reservation)
        assert (row.status, held.status) == (
            ("APPROVED", "SOLD") if approved else ("REJECTED", "RELEASED")
        )
    stock = client.table_rows("saga-product-stock-changelog")[widget.encode()]
    assert isinstance(stock, m.StockRow) and stock_invariant_violations(stock) == []
    account = client.table_rows("saga-payment-accounts-changelog")[rich.encode()]
    assert isinstance(account, m.Account) and account_invariant_violations(account) == []
