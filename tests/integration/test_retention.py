"""Retention end to end, on a broker and workers of its own (SAGA_RETENTION=2s).

- Over several cycles of orders (approved, some cancelled), each followed by its sagas'
  expiry, every table comes back to its baseline (the aggregates only: products'
  counters, accounts, the seed's markers) and a restore stays flat: the records a worker
  restoring its table from the changelog reads, and the time until it is ready, do not
  grow with the cycles.
- After expiry a saga's page answers 404 and a repeated OrderRequested with the same
  order id is a new saga and a new order.

What is measured, per changelog: `live` keys (what a restore ends with: the last value
per key, tombstones applied) and `records` (what a restore reads: every record still in
the topic). Kafka compacts only closed segments, so the test gives the changelogs small
segments and an eager cleaner on its own broker (topics.yaml keeps production's hourly
segments): `records` then comes down, at every cycle, to at most one cycle's rows and
tombstones besides the aggregates, instead of the whole history (`written`). And the
orchestrator, killed after each cycle (its store discarded: a kill is not a clean stop),
is timed until it answers /ready again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from messaging import catalog, client, settings, topics
from messaging.local_workers import Workers
from tests.integration.order_helpers import http_get, place_orders, poll, wait_terminal
from tests.integration.test_versioned_deploy import free_ports
from tests.ports import broker_port

pytestmark = pytest.mark.integration

CHANGELOGS = {
    "orchestrator": "saga-orchestrator-sagas-changelog",
    "order": "saga-order-orders-changelog",
    "product": "saga-product-stock-changelog",
    "payment": "saga-payment-accounts-changelog",
}
CYCLES = 3
ORDERS_PER_CYCLE = 30
CANCELS_PER_CYCLE = 5
RUN = uuid.uuid4().hex[:6]
WIDGET, GIZMO, RICH = f"ret-{RUN}-widget", f"ret-{RUN}-gizmo", f"ret-{RUN}-rich"
CATALOG = f"""
currency: EUR
products:
  - {{id: {WIDGET}, stock: 100000, price: "1.00"}}
  - {{id: {GIZMO}, stock: 100000, price: "2.00"}}
customers:
  - {{id: {RICH}, balance: "10000000.00"}}
"""
# Stricter than topics.yaml, on this test's broker only: segments closed every second,
# cleaned as soon as anything is dirty, tombstones kept a second once cleaned.
EAGER_COMPACTION = {
    "segment.ms": "1000",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "1000",
    "min.compaction.lag.ms": "0",
}


def alter(admin: AdminClient, kind: ResourceType, name: str, configs: dict[str, str]) -> None:
    entries = [
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
        for key, value in configs.items()
    ]
    resource = ConfigResource(kind, name, incremental_configs=entries)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    home = tmp_path_factory.mktemp("retention")
    env = {
        **os.environ,
        "SAGA_HOME": str(home),
        "SAGA_KAFKA_PORT": str(broker_port()),
        "SAGA_RETENTION": "2s",
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("SAGA_SAGAS", None)
    saga = [sys.executable, "-m", "cli.main"]
    for args in (["kafka", "start"], ["topics", "apply"]):
        run = subprocess.run([*saga, *args], env=env, capture_output=True, text=True, timeout=180)
        assert run.returncode == 0, run.stdout + run.stderr
    patch = pytest.MonkeyPatch()
    patch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{env['SAGA_KAFKA_PORT']}")
    ports = dict(zip(("orchestrator", "order", "product", "payment"), free_ports(4), strict=True))
    log = (home / "workers.log").open("a", buffering=1)
    workers = Workers(ports=ports, env=env, echo=lambda line: log.write(line + "\n"))
    try:
        admin = AdminClient(settings.confluent_config())
        for changelog in CHANGELOGS.values():
            alter(admin, ResourceType.TOPIC, changelog, EAGER_COMPACTION)
        # The cleaner looks for work every 15 s by default; every second here.
        for broker in admin.list_topics(timeout=30).brokers:
            alter(admin, ResourceType.BROKER, str(broker), {"log.cleaner.backoff.ms": "1000"})
        catalog.publish(catalog.parse(CATALOG))
        workers.start()
        workers.wait_ready(timeout=180)
        yield workers
    finally:
        workers.stop()
        log.close()
        subprocess.run([*saga, "kafka", "stop"], env=env, capture_output=True, timeout=120)
        patch.undo()


def census(changelog: str) -> tuple[int, set[bytes], int]:
    """(records in the topic now, live keys, records ever written): what a restore reads,
    what it keeps, and the history it does not read."""
    consumer = client.consumer()
    records, live, written = 0, set(), 0
    try:
        ends = {}
        for partition in range(topics.partitions(changelog)):
            low, high = consumer.get_watermark_offsets(TopicPartition(changelog, partition))
            written += high
            if high > low:
                ends[partition] = high
        consumer.assign([TopicPartition(changelog, p, 0) for p in ends])  # 0: the earliest
        position = dict.fromkeys(ends, -1)
        deadline = time.monotonic() + 60
        while any(position[p] < ends[p] - 1 for p in ends):
            assert time.monotonic() < deadline, f"reading {changelog} took over 60 s"
            record = consumer.poll(0.5)
            if record is None or record.error() is not None:
                continue
            position[record.partition() or 0] = record.offset() or 0
            records += 1
            if record.value() is None:
                live.discard(record.key() or b"")
            else:
                live.add(record.key() or b"")
    finally:
        consumer.close()
    return records, live, written


def all_census() -> dict[str, tuple[int, set[bytes], int]]:
    return {name: census(changelog) for name, changelog in CHANGELOGS.items()}


def wait_all_consumed() -> None:
    """Every command and the seed have been processed, and their rows written back."""
    for group, topic in (
        ("saga-orchestrator", "orders.requested"),
        ("saga-orchestrator", "saga.operations"),
        ("saga-order", "order.commands"),
        ("saga-product", "product.commands"),
        ("saga-payment", "payment.commands"),
    ):
        assert client.wait_until_processed(group, topic, timeout=60), (group, topic)


def live_keys() -> dict[str, set[bytes]]:
    return {name: live for name, (_records, live, _written) in all_census().items()}


def place_cycle() -> None:
    lines = [(WIDGET, 2), (GIZMO, 1)]
    orders = place_orders(*[(RICH, lines)] * ORDERS_PER_CYCLE)
    finals = wait_terminal(orders)
    assert {e.to_state for e in finals.values()} == {"ORDER_APPROVED"}
    cancels = [client.cancel_requested(o.order_id) for o in orders[:CANCELS_PER_CYCLE]]
    producer = client.producer()
    for cancel in cancels:
        client.send(producer, client.REQUEST_TOPIC, cancel.cancel_id, cancel)
    client.flush(producer)
    since = min(c.requested_at for c in cancels)
    ended = [e for e in client.follow_sagas([c.cancel_id for c in cancels], since, 90)]
    assert sum(e.terminal and e.to_state == "ORDER_CANCELLED" for e in ended) == len(cancels)


def test_tables_and_restore_stay_flat_over_retention_cycles(system: Workers) -> None:
    wait_all_consumed()
    baseline = live_keys()
    assert baseline["orchestrator"] == set()  # no saga yet: aggregates and seed markers only
    figures: list[dict[str, Any]] = []
    sagas = ORDERS_PER_CYCLE + CANCELS_PER_CYCLE
    keys_per_cycle = {  # the per-saga rows a cycle writes, each then deleted
        "orchestrator": sagas,
        "order": sagas,  # an order per CreateOrderSaga, an OrderCancel per cancel
        "product": 2 * ORDERS_PER_CYCLE,  # a hold per product
        "payment": ORDERS_PER_CYCLE,
    }
    bound = {n: 2 * k + len(baseline[n]) + 10 for n, k in keys_per_cycle.items()}
    for cycle in range(CYCLES):
        started = time.monotonic()
        place_cycle()  # (with a 2 s retention, the first sagas expire meanwhile)
        wait_all_consumed()  # the cycle's rows are in the changelogs: live keys only shrink
        ran = time.monotonic() - started
        # every saga expires, and with it every per-saga row of every table
        poll(live_keys, lambda keys: keys == baseline, f"cycle {cycle}: back to the baseline")
        expired = time.monotonic() - started - ran
        # What a restore reads: compacted, at most one cycle's rows and tombstones
        # besides the aggregates, whichever cycle this is (not the history).
        counts = poll(
            all_census,
            lambda census: all(census[n][0] <= bound[n] for n in bound),
            f"cycle {cycle}: the changelogs compacted to one cycle's records",
            timeout=60,
        )
        # the orchestrator restores its table from the changelog: killed, its store goes
        system.kill("orchestrator")
        restarted = time.monotonic()
        system.start("orchestrator")
        system.wait_ready(timeout=180)
        figures.append(
            {
                "cycle": cycle,
                "run_s": round(ran, 1),
                "expired_in_s": round(expired, 1),
                "records": {name: census[0] for name, census in counts.items()},
                "written": {name: census[2] for name, census in counts.items()},
                "live": {name: len(census[1]) for name, census in counts.items()},
                "orchestrator_ready_s": round(time.monotonic() - restarted, 1),
            }
        )
        print(figures[-1])
    assert all(f["live"] == {k: len(v) for k, v in baseline.items()} for f in figures)
    # time to ready: noisy on shared cores, so only against growing with the history
    ready = [f["orchestrator_ready_s"] for f in figures]
    assert ready[-1] < 2 * max(ready[0], 10), figures


def test_an_expired_saga_is_gone_and_a_repeated_request_is_a_new_order(system: Workers) -> None:
    port = system.workers["orchestrator"].web_port
    [first] = place_orders((RICH, [(WIDGET, 1)]))
    [end] = wait_terminal([first]).values()
    key = first.order_id.encode()
    page = http_get(f"http://127.0.0.1:{port}/sagas/{first.order_id}")
    if (datetime.now(UTC) - end.at).total_seconds() < 1.5:  # surely not expired yet
        assert page.status == 200
    poll(
        lambda: http_get(f"http://127.0.0.1:{port}/sagas/{first.order_id}").status,
        lambda status: status == 404,
        "the saga's page answers 404 once it expired",
    )
    wait_all_consumed()  # every row the saga made is in the changelogs (or deleted there)
    poll(
        lambda: [key in live for live in live_keys().values()],
        lambda present: not any(present),
        "the saga, its order, holds and payment forgotten",
    )
    # `saga status` still has the timeline: saga.events keeps it (its own retention)
    assert [e.to_state for e in client.saga_events(first.order_id)][-1] == "ORDER_APPROVED"

    again = client.order_requested(RICH, [(GIZMO, 3)], order_id=first.order_id)
    producer = client.producer()
    client.send(producer, client.REQUEST_TOPIC, again.order_id, again)
    client.flush(producer)
    poll(
        lambda: [e.to_state for e in client.saga_events(first.order_id)],
        lambda states: states.count("ORDER_APPROVED") == 2,
        "a second saga with the same id, approved",
    )
    events = client.saga_events(first.order_id)
    assert [e.trigger for e in events].count("OrderRequested") == 2  # two sagas started
    order = http_get(f"http://127.0.0.1:{system.workers['order'].web_port}/orders/{first.order_id}")
    assert order.status == 200 and order.json()["items"] == [{"product_id": GIZMO, "quantity": 3}]
