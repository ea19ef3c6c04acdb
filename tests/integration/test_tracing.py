"""One trace per saga on a real broker.

- With the test workers (tracing off): `saga order` starts a trace, and every record of
  the saga on every topic (request, commands, product hops, replies, events) carries its
  trace id; `saga status` and `saga tail` show it.
- With four workers of their own exporting over OTLP/HTTP to a sink in this process
  (`bench.otlp_sink`), on a broker of their own (the same consumer groups as the test
  workers would otherwise share partitions with them): each worker's span of a record is
  the parent of the next worker's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from bench.otlp_sink import OtlpSink, ReceivedSpan
from messaging import catalog, client, topics, tracing
from messaging.catalog import Catalog
from messaging.local_workers import Workers
from schemas import codec
from tests.integration.order_helpers import customer, http_get, product, wait_terminal
from tests.integration.test_cli import requested_id, saga
from tests.ports import broker_port, free_ports

pytestmark = pytest.mark.integration

SAGA_TOPICS = (
    "orders.requested",
    "order.commands",
    "product.commands",
    "payment.commands",
    "saga.replies",
    "saga.events",
)


def records_of_saga(saga_id: str, since_ms: int) -> list[tuple[str, Any, str | None]]:
    """(topic, message, trace id) of every record of the saga on the saga's topics, read
    from `since_ms` to their current ends: keyed by the saga id, or (product and payment
    commands, keyed by product and customer) naming it."""
    consumer = client.consumer()
    found = []
    try:
        for topic in SAGA_TOPICS:
            partitions = range(topics.partitions(topic))
            ends = {p: client.end_offset(consumer, TopicPartition(topic, p)) for p in partitions}
            starts = consumer.offsets_for_times(
                [TopicPartition(topic, p, since_ms) for p in partitions], timeout=10
            )
            position = {tp.partition: tp.offset if tp.offset >= 0 else ends[tp.partition]
                        for tp in starts}  # fmt: skip
            consumer.assign([TopicPartition(topic, p, o) for p, o in position.items()])
            deadline = time.monotonic() + 30
            while any(position[p] < ends[p] for p in partitions):
                assert time.monotonic() < deadline, f"reading {topic} took too long"
                record = consumer.poll(0.5)
                if record is None or record.error() is not None:
                    continue
                position[record.partition() or 0] = (record.offset() or 0) + 1
                if (record.offset() or 0) >= ends[record.partition() or 0]:
                    continue
                try:
                    message = codec.decode(record.value() or b"")
                except codec.MessageDecodeError:
                    continue  # another test's garbage
                owner = getattr(message, "saga_id", None) or getattr(message, "order_id", None)
                if owner == saga_id:
                    found.append((topic, message, tracing.trace_id_in(record.headers())))
            consumer.unassign()
    finally:
        consumer.close()
    return found


def test_every_record_of_a_saga_carries_its_trace_id(
    workers: Workers, test_catalog: Catalog
) -> None:
    rich = customer(test_catalog, "rich")
    items = [f"{product(test_catalog, 'widget')}:2", f"{product(test_catalog, 'pricey')}:1"]
    since_ms = int(time.time() * 1000) - 5000
    result = saga("order", "--customer", rich, *(a for i in items for a in ("--item", i)),
                  "--wait", timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    saga_id = requested_id(result.stdout)

    # Each topic's message types, sorted: read partition by partition.
    expected = {
        "orders.requested": ["OrderRequested"],
        "order.commands": ["ApproveOrder", "CreateOrder"],
        "product.commands": ["ReserveProducts"] * 2 + ["SellProducts"] * 2,  # two hops each
        "payment.commands": ["AuthorizePayment"],
        "saga.replies": ["OrderApproved", "OrderCreated", "PaymentAuthorized", "ProductsReserved"],
        "saga.events": ["SagaEvent"] * 5,
    }
    deadline = time.monotonic() + 30  # the sale's last hop may follow the terminal event
    while True:
        records = records_of_saga(saga_id, since_ms)
        per_topic = {
            topic: sorted(type(message).__name__ for t, message, _ in records if t == topic)
            for topic in SAGA_TOPICS
        }
        if per_topic == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert per_topic == expected
    trace_ids = {trace for _topic, _message, trace in records}
    assert len(trace_ids) == 1 and None not in trace_ids, records
    (trace,) = trace_ids

    status = saga("status", saga_id, timeout=60)
    assert status.returncode == 0, status.stderr
    assert f"  trace {trace}" in status.stdout.splitlines()
    as_json = saga("status", saga_id, "--json", timeout=60)
    assert {json.loads(line)["trace_id"] for line in as_json.stdout.splitlines()} == {trace}
    tail = saga("tail", "saga.events", "--key", saga_id, "--from-beginning", timeout=60)
    assert tail.returncode == 0, tail.stderr
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert len(lines) == 5 and {line["trace_id"] for line in lines} == {trace}
    assert all(line["headers"]["traceparent"][3:35] == trace for line in lines)
    page = http_get(f"{workers.workers['orchestrator'].url}/sagas/{saga_id}").json()
    assert page["trace_id"] == trace


# ---- four workers exporting spans ----

CATALOG = """
currency: EUR
products:
  - {id: traced-widget, stock: 1000, price: "2.50"}
  - {id: traced-gizmo, stock: 1000, price: "4.00"}
customers:
  - {id: traced-alice, balance: "1000.00"}
"""


@pytest.fixture(scope="module")
def exporting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtlpSink]:
    """A broker of its own and four workers exporting their spans to an OTLP sink."""
    home = tmp_path_factory.mktemp("tracing")
    sink = OtlpSink().start()
    env = {
        **os.environ,
        "SAGA_HOME": str(home),
        "SAGA_KAFKA_PORT": str(broker_port()),
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 0.1 s, not 5 s
    }
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    env.pop("SAGA_SAGAS", None)
    command = [sys.executable, "-m", "cli.main"]
    for args in (["kafka", "start"], ["topics", "apply"]):
        run = subprocess.run([*command, *args], env=env, capture_output=True, text=True,
                             timeout=180)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
    patch = pytest.MonkeyPatch()
    patch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{env['SAGA_KAFKA_PORT']}")
    first = free_ports(4)
    ports = {
        name: first + i for i, name in enumerate(("orchestrator", "order", "product", "payment"))
    }
    log = (home / "workers.log").open("a", buffering=1)
    workers = Workers(ports=ports, env=env, echo=lambda line: log.write(line + "\n"))
    try:
        catalog.publish(catalog.parse(CATALOG))
        workers.start()
        workers.wait_ready(timeout=180)
        yield sink
    finally:
        codes = workers.stop()
        log.close()
        subprocess.run([*command, "kafka", "stop"], env=env, capture_output=True, timeout=120)
        patch.undo()
        sink.stop()
        assert all(code in (0, None) for code in codes.values()), codes


def spans_of_saga(sink: OtlpSink, trace: str, count: int) -> list[ReceivedSpan]:
    deadline = time.monotonic() + 30
    while len(spans := sink.of_trace(trace)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return spans


def test_the_four_workers_spans_chain_parent_to_child(exporting: OtlpSink) -> None:
    request = client.order_requested("traced-alice", [("traced-widget", 2), ("traced-gizmo", 1)])
    context = tracing.new_traceparent()
    producer = client.producer()
    client.send(producer, client.REQUEST_TOPIC, request.order_id, request,
                [(tracing.TRACEPARENT, context)])  # fmt: skip
    client.flush(producer)
    final = wait_terminal([request], timeout=90)[request.order_id]
    assert final.to_state == "ORDER_APPROVED"

    trace = tracing.trace_id(context)
    assert trace is not None
    spans = spans_of_saga(exporting, trace, 12)
    services = {span.service for span in spans}
    assert services == {"saga-orchestrator", "saga-order", "saga-product", "saga-payment"}
    assert len(spans) == 12, [(s.service, s.name) for s in spans]
    by_id = {span.span_id: span for span in spans}
    (root,) = [span for span in spans if span.parent_span_id not in by_id]
    assert root.parent_span_id == context[36:52].decode()  # the client's context
    assert (root.service, root.attributes["saga.message"]) == ("saga-orchestrator",
                                                               "OrderRequested")  # fmt: skip

    def path(span: ReceivedSpan) -> list[str]:
        steps = []
        while span is not None:
            steps.append(f"{span.service.removeprefix('saga-')}:{span.attributes['saga.message']}")
            span = by_id.get(span.parent_span_id)  # type: ignore[assignment]
        return steps[::-1]

    leaves = [s for s in spans if s.span_id not in {p.parent_span_id for p in spans}]
    assert max((path(leaf) for leaf in leaves), key=len) == [
        "orchestrator:OrderRequested",
        "order:CreateOrder",
        "orchestrator:OrderCreated",
        "product:ReserveProducts",
        "product:ReserveProducts",
        "orchestrator:ProductsReserved",
        "payment:AuthorizePayment",
        "orchestrator:PaymentAuthorized",
        "order:ApproveOrder",
        "orchestrator:OrderApproved",
        "product:SellProducts",
        "product:SellProducts",
    ]
    for span in spans:
        attributes = span.attributes
        assert attributes["messaging.system"] == "kafka"
        assert attributes["saga.id"] == request.order_id
        assert {"messaging.destination.name", "messaging.destination.partition.id",
                "messaging.kafka.offset", "saga.outcome"} <= set(attributes)  # fmt: skip
        assert span.status_code != 2  # no error


def test_status_shows_the_trace_of_a_saga_started_without_one(exporting: OtlpSink) -> None:
    request = client.order_requested("traced-alice", [("traced-widget", 1)])
    producer = client.producer()
    client.send(producer, client.REQUEST_TOPIC, request.order_id, request)  # no header
    client.flush(producer)
    wait_terminal([request], timeout=90)
    traced = client.traced_saga_events(request.order_id)
    traces = {trace for _event, trace in traced}
    assert len(traces) == 1 and None not in traces  # the orchestrator started one
    (trace,) = traces
    spans = spans_of_saga(exporting, str(trace), 10)  # 5 orchestrator, 2 order, 2 product, 1
    assert len(spans) == 10
    roots = [span for span in spans if not span.parent_span_id]
    assert [(s.service, s.attributes["saga.message"]) for s in roots] == [
        ("saga-orchestrator", "OrderRequested")
    ]
