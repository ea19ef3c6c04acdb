"""The saga side of the benchmark: a catalog for the run, the four workers, the orders.

Each benchmark run seeds its own customers and products (ids carry a run id), so table rows
start small and no earlier run's stock or balances matter. Orders spread over many
customers and products, as real traffic would, so every partition works. One order in 20
asks for a sold-out product and one in 20 comes from a customer who cannot pay: the
outcome mix shows both compensation paths next to the approvals.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Container, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import psutil

from bench import system
from bench.driver import Completion
from bench.kafka_io import assign_at_end, poll_batch
from messaging import catalog, client
from messaging.local_workers import SERVICE_NAMES, Workers
from schemas import codec
from schemas import messages as m

CURRENCY = "EUR"
CUSTOMERS = 200
PRODUCTS = 50
UNIT_PRICE = Decimal("5.00")
RICH = Decimal("1000000000.00")
POOR = Decimal("1.00")  # less than any order costs
STOCK = 1_000_000_000
MIX_CYCLE = 20  # order kinds repeat every 20 orders:
SOLD_OUT_SLOT = 7  # ... this one asks for a product with no stock
POOR_SLOT = 14  # ... this one comes from a customer who cannot pay

REGULAR, SOLD_OUT, POOR_CUSTOMER = "regular", "sold-out product", "poor customer"

# The consumer groups of the four workers (their Faust app ids).
WORKER_GROUPS = ("saga-orchestrator", "saga-order", "saga-product", "saga-payment")


class BenchError(RuntimeError):
    """The saga side cannot be benchmarked as asked (the message says why)."""


def order_kind(seq: int) -> str:
    slot = seq % MIX_CYCLE
    return SOLD_OUT if slot == SOLD_OUT_SLOT else POOR_CUSTOMER if slot == POOR_SLOT else REGULAR


@dataclass(frozen=True)
class BenchCatalog:
    """Customers and products of one benchmark run."""

    run_id: str

    def customer(self, i: int) -> str:
        return f"bench-{self.run_id}-c{i % CUSTOMERS:03d}"

    def product(self, i: int) -> str:
        return f"bench-{self.run_id}-p{i % PRODUCTS:02d}"

    @property
    def sold_out_product(self) -> str:
        return f"bench-{self.run_id}-sold-out"

    @property
    def poor_customer(self) -> str:
        return f"bench-{self.run_id}-poor"

    def order(self, seq: int) -> tuple[str, str, list[tuple[str, int]]]:
        """(kind, customer, items) of order number `seq`: two lines, like a real basket."""
        kind = order_kind(seq)
        first = self.product(seq)
        second = self.sold_out_product if kind == SOLD_OUT else self.product(seq + PRODUCTS // 2)
        customer = self.poor_customer if kind == POOR_CUSTOMER else self.customer(seq)
        return kind, customer, [(first, 1), (second, 2)]

    def seed(self) -> catalog.Catalog:
        def money(amount: Decimal) -> m.Money:
            return m.Money(amount=amount, currency=CURRENCY)

        products = [(self.product(i), STOCK) for i in range(PRODUCTS)]
        products.append((self.sold_out_product, 0))
        customers = [(self.customer(i), RICH) for i in range(CUSTOMERS)]
        customers.append((self.poor_customer, POOR))
        return catalog.Catalog(
            restocks=[
                m.Restock(f"bench:{self.run_id}:{p}", p, stock, money(UNIT_PRICE))
                for p, stock in products
            ],
            top_ups=[
                m.TopUp(f"bench:{self.run_id}:{c}", c, money(balance)) for c, balance in customers
            ],
        )

    def describe(self) -> dict[str, object]:
        return {
            "customers": CUSTOMERS,
            "products": PRODUCTS,
            "items_per_order": 2,
            "mix": {
                REGULAR: (MIX_CYCLE - 2) / MIX_CYCLE,
                SOLD_OUT: 1 / MIX_CYCLE,
                POOR_CUSTOMER: 1 / MIX_CYCLE,
            },
        }


class SagaPipeline:
    """Offers OrderRequested and reads terminal SagaEvents (see bench.driver.Pipeline)."""

    name = "saga"

    def __init__(self, bench_catalog: BenchCatalog) -> None:
        self.catalog = bench_catalog
        self.producer = client.producer()
        self.consumer = client.consumer()
        assign_at_end(self.consumer, [client.EVENTS_TOPIC])

    def offer(self, seq: int) -> tuple[str, str]:
        kind, customer, items = self.catalog.order(seq)
        request = m.OrderRequested(
            order_id=str(uuid.uuid4()),
            customer_id=customer,
            items=[m.OrderItem(product_id=p, quantity=q) for p, q in items],
            requested_at=datetime.now(UTC),
        )
        client.send(self.producer, client.REQUEST_TOPIC, request.order_id, request)
        self.producer.poll(0)
        return request.order_id, kind

    def poll(self, timeout: float, pending: Container[str]) -> list[Completion]:
        records = poll_batch(self.consumer, timeout)
        received = time.monotonic()
        self.producer.poll(0)
        completions = []
        for record in records:
            key = (record.key() or b"").decode("utf-8", "replace")
            if record.error() is not None or key not in pending:
                continue  # cheap checks first: only our sagas' events are decoded
            try:
                event = codec.decode_as(record.value() or b"", m.SagaEvent)
            except codec.MessageDecodeError:
                continue
            if event.terminal:
                completions.append(Completion(key, event.to_state, received))
        return completions

    def close(self) -> None:
        self.producer.flush(10)
        self.consumer.close()


@dataclass
class WorkerSet:
    """The workers under test: their pids by name (product, product-2, ...), and the
    Workers if this process runs them."""

    pids: dict[str, int]
    workers: Workers | None = None

    def check_alive(self) -> None:
        """Raise if a worker died: it explains sagas that stopped completing."""
        try:
            if self.workers is not None:
                self.workers.check_alive()
        except RuntimeError as exc:
            raise BenchError(str(exc)) from exc
        dead = [name for name, pid in self.pids.items() if not psutil.pid_exists(pid)]
        if dead:
            raise BenchError(f"worker(s) no longer running: {', '.join(dead)}")

    def strangers(self) -> list[str]:
        """Other workers running now: they share the consumer groups, so they take
        partitions (and cause rebalances) in the middle of a measurement."""
        ours = set(self.pids.values())
        return [f"{name} pid {pid}" for name, pid in system.worker_processes() if pid not in ours]


def workers_to_use(use_running: bool) -> dict[str, int]:
    """Check the workers can be had as asked: the running ones' pids (every service has
    one at least), or {} to start them."""
    running = system.running_workers()
    if use_running:
        missing = [name for name in SERVICE_NAMES if name not in running]
        if missing:
            raise BenchError(f"--use-running, but no worker runs for: {', '.join(missing)}")
        return running
    if running:
        # A second set would join the same consumer groups and split the partitions.
        raise BenchError(
            f"workers already run ({', '.join(sorted(running))}): stop them, "
            "or pass --use-running to benchmark them"
        )
    return {}


@contextmanager
def saga_workers(
    use_running: bool, per_service: int = 1, port_base: int = 6066, ready_timeout: float = 180.0
) -> Iterator[WorkerSet]:
    """The workers: the running ones (--use-running), or `per_service` of each service
    started here (web ports from `port_base`, as `saga up` places them) and stopped after."""
    running = workers_to_use(use_running)
    if running:
        yield WorkerSet(running)
        return
    workers = Workers(
        counts=dict.fromkeys(SERVICE_NAMES, per_service),
        ports={name: port_base + i for i, name in enumerate(SERVICE_NAMES)},
        loglevel="warning",
    )
    workers.start()
    try:
        try:
            workers.wait_ready(ready_timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise BenchError(f"the workers did not start: {exc}") from exc
        pids = {}
        for name, worker in workers.workers.items():
            assert worker.process is not None
            pids[name] = worker.process.pid
        yield WorkerSet(pids, workers)
    finally:
        workers.stop()
