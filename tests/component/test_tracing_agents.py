"""One trace per saga, in the agents: the traceparent header on everything a saga's
records cause, and the span of each record a child of the one before.

The four services' agents run under agent.test_context() in this process, memory
stores, no broker: a `Bus` stands in for Kafka, putting each record a service sends, with
its headers, on the agent that reads its topic. With an OpenTelemetry TracerProvider per
service (InMemorySpanExporter), the services export a span per record.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from messaging import tracing
from messaging.dead_letters import original_headers
from orchestrator.app import OrchestratorService
from orchestrator.engine.runner import OPERATIONS_TOPIC
from participants.order.app import OrderService
from participants.payment.app import PaymentService
from participants.product.app import ProductService
from schemas import codec
from schemas import messages as m
from tests.component.test_orchestrator_agent import put as put_orchestrator
from tests.unit.saga_factories import T0, reply

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT = f"00-{TRACE}-00f067aa0ba902b7-01".encode()  # what `saga order` would send
MALFORMED = [b"", b"garbage", CLIENT.upper(), f"00-{'0' * 32}-00f067aa0ba902b7-01".encode()]
EUR = "EUR"


@dataclass
class Sent:
    topic: str
    key: bytes
    message: Any
    headers: Any

    @property
    def traceparent(self) -> bytes | None:
        return tracing.traceparent_in(self.headers)


class Bus:
    """Kafka for the four agents: a queue of the records they send, delivered in order to
    the agent that reads each topic (saga.events and dead letters only kept)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.queue: collections.deque[Sent] = collections.deque()
        self.agents: dict[str, Any] = {}
        self.dead: list[tuple[Any, dict[str, Any]]] = []

    def send(
        self,
        topic: str,
        key: bytes,
        message: object,
        partition: int | None = None,
        headers: Any = None,
    ) -> int:
        record = Sent(topic, key, message, headers)
        self.sent.append(record)
        self.queue.append(record)
        return 0

    def dead_letter(
        self, producer: Any, key: Any, value: Any, error: Any, *rest: Any, **options: Any
    ) -> None:
        self.dead.append((key, options))

    async def put(self, topic: str, key: bytes, message: object, headers: Any = None) -> None:
        if topic in ("orders.requested", "saga.replies", OPERATIONS_TOPIC):
            orchestrator = self.agents["orchestrator"]
            await put_orchestrator(orchestrator, key, message, topic, headers=headers)
        else:
            await self.agents[topic].put(codec.encode(message), key=key, headers=headers)

    async def run(self) -> None:
        """Deliver until nothing is left to deliver."""
        while self.queue:
            record = self.queue.popleft()
            if record.topic in self.agents or record.topic in ("saga.replies", OPERATIONS_TOPIC):
                await self.put(record.topic, record.key, record.message, record.headers)


@dataclass
class System:
    bus: Bus
    orchestrator: OrchestratorService
    spans: InMemorySpanExporter | None

    def finished(self) -> list[ReadableSpan]:
        assert self.spans is not None
        return list(self.spans.get_finished_spans())


def provider_for(service: str, exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def system(monkeypatch: pytest.MonkeyPatch, traced: bool) -> AsyncIterator[System]:
    exporter = InMemorySpanExporter() if traced else None

    def options(service: str) -> dict[str, Any]:
        provider = None if exporter is None else provider_for(service, exporter)
        return {"store": "memory://", "tracer_provider": provider}

    bus = Bus()
    orchestrator = OrchestratorService(web_port=7691, **options("saga-orchestrator"))
    services: dict[str, Any] = {
        "order.commands": OrderService(7692, **options("saga-order")),
        "product.commands": ProductService(7693, **options("saga-product")),
        "payment.commands": PaymentService(7694, **options("saga-payment")),
    }
    monkeypatch.setattr("messaging.faust_app.send_dead_letter", bus.dead_letter)
    for service in (orchestrator, *services.values()):
        monkeypatch.setattr(service.sender, "send", bus.send)
    async with AsyncExitStack() as stack:
        bus.agents["orchestrator"] = await stack.enter_async_context(
            orchestrator.agent.test_context()
        )
        for topic, service in services.items():
            bus.agents[topic] = await stack.enter_async_context(service.agent.test_context())
        for product in ("p-1", "p-2"):
            restock = m.Restock(f"r-{product}", product, 100, m.Money(Decimal("2.50"), EUR))
            await bus.put("product.commands", product.encode(), restock)
        top_up = m.TopUp("t-1", "c-1", m.Money(Decimal("1000.00"), EUR))
        await bus.put("payment.commands", b"c-1", top_up)
        await bus.run()
        bus.sent.clear()
        if exporter is not None:
            exporter.clear()
        yield System(bus, orchestrator, exporter)


@pytest.fixture
async def untraced(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[System]:
    async for running in system(monkeypatch, traced=False):
        yield running


@pytest.fixture
async def traced(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[System]:
    async for running in system(monkeypatch, traced=True):
        yield running


def order(saga_id: str = "s-1") -> m.OrderRequested:
    return m.OrderRequested(saga_id, "c-1", [m.OrderItem("p-1", 2), m.OrderItem("p-2", 1)], T0)


def kinds(sent: list[Sent]) -> list[str]:
    return [type(record.message).__name__ for record in sent]


# ---- tracing off: the header travels unchanged ----


async def test_every_record_of_a_saga_carries_the_request_context(untraced: System) -> None:
    bus = untraced.bus
    await bus.put("orders.requested", b"s-1", order(), headers=[("traceparent", CLIENT)])
    await bus.run()
    row = untraced.orchestrator.sagas[b"s-1"]
    assert row.state == "ORDER_APPROVED" and row.traceparent == CLIENT.decode()
    assert kinds(bus.sent) == [
        "CreateOrder", "SagaEvent", "OrderCreated",
        "ReserveProducts", "SagaEvent", "ReserveProducts", "ProductsReserved",
        "AuthorizePayment", "SagaEvent", "PaymentAuthorized",
        "ApproveOrder", "SagaEvent", "OrderApproved",
        "SellProducts", "SagaEvent", "SellProducts",
    ]  # fmt: skip
    assert {record.traceparent for record in bus.sent} == {CLIENT}
    assert bus.dead == []


async def test_a_request_without_context_starts_the_saga_trace(untraced: System) -> None:
    bus = untraced.bus
    await bus.put("orders.requested", b"s-1", order())
    await bus.run()
    started = untraced.orchestrator.sagas[b"s-1"].traceparent
    assert tracing.valid(started) == started.encode()
    assert {record.traceparent for record in bus.sent} == {started.encode()}


@pytest.mark.parametrize("malformed", MALFORMED)
async def test_a_malformed_header_is_ignored_never_dead_lettered(
    untraced: System, malformed: bytes
) -> None:
    bus = untraced.bus
    await bus.put("orders.requested", b"s-1", order(), headers=[("traceparent", malformed)])
    await bus.run()
    # Nothing failed: the saga ran to the end, in a trace of its own.
    started = untraced.orchestrator.sagas[b"s-1"]
    assert started.state == "ORDER_APPROVED"
    assert {record.traceparent for record in bus.sent} == {started.traceparent.encode()}
    # A participant given a malformed header replies without one.
    command = m.ApproveOrder("s-1", "s-1:approve_order", 2, T0, "s-1")
    await bus.put("order.commands", b"s-1", command, headers=[("traceparent", malformed)])
    assert bus.sent[-1].headers is None and type(bus.sent[-1].message) is m.OrderApproved
    assert bus.dead == []


async def test_what_the_orchestrator_sends_later_continues_the_saga_trace(
    untraced: System,
) -> None:
    bus, service = untraced.bus, untraced.orchestrator
    await put_orchestrator(
        bus.agents["orchestrator"], "s-1", order(), headers=[("traceparent", CLIENT)]
    )
    row = service.sagas[b"s-1"]
    # The deadline timer's StepTimedOut, and the re-sent command it causes.
    await service.fire_deadlines(row.deadline + timedelta(seconds=1))
    timed_out = bus.sent[-1]
    assert type(timed_out.message) is m.StepTimedOut and timed_out.traceparent == CLIENT
    await bus.put("saga.replies", b"s-1", timed_out.message)  # even without its header
    assert kinds(bus.sent[-2:]) == ["CreateOrder", "SagaEvent"]
    assert bus.sent[-2].message.attempt == 2
    # An operator's retry from another trace: the saga's trace goes on.
    other = tracing.new_traceparent()
    retry = m.RetrySaga("s-1", "a-1", "ops", "stuck", T0)
    await bus.put(OPERATIONS_TOPIC, b"s-1", retry, headers=[("traceparent", other)])
    assert kinds(bus.sent[-3:]) == ["CreateOrder", "SagaEvent", "SagaActionAnswered"]
    assert {record.traceparent for record in bus.sent} == {CLIENT}


async def test_a_reply_of_another_trace_is_handled_in_the_saga_trace(untraced: System) -> None:
    bus = untraced.bus
    await put_orchestrator(
        bus.agents["orchestrator"], "s-1", order(), headers=[("traceparent", CLIENT)]
    )
    created = replace(reply(m.OrderCreated, saga_id="s-1"), order_id="s-1")
    other = [("traceparent", tracing.new_traceparent())]
    await put_orchestrator(bus.agents["orchestrator"], "s-1", created, headers=other)
    assert kinds(bus.sent[-2:]) == ["ReserveProducts", "SagaEvent"]
    assert {record.traceparent for record in bus.sent} == {CLIENT}


async def test_a_dead_letter_keeps_the_record_header(untraced: System) -> None:
    bus = untraced.bus
    misplaced = m.TopUp("t", "c", m.Money(Decimal(1), EUR))  # on neither topic
    for topic in ("saga.replies", "order.commands"):
        await bus.put(topic, b"s-9", misplaced, headers=[("traceparent", CLIENT)])
    await bus.agents["product.commands"].put(
        b"\x00not avro", key=b"p-1", headers=[("traceparent", b"kept as it was")]
    )
    kept = [dict(original_headers(options["headers"])) for _key, options in bus.dead]
    assert [headers["traceparent"] for headers in kept] == [
        CLIENT,
        CLIENT,
        b"kept as it was",
    ]


# ---- tracing on: a span per record, each the child of the one before ----


def attr(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes[name]


def by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in spans}


def service_of(span: ReadableSpan) -> str:
    return str(span.resource.attributes["service.name"]).removeprefix("saga-")


def chain(span: ReadableSpan, spans: dict[int, ReadableSpan]) -> Iterator[ReadableSpan]:
    """The span and its ancestors among `spans`, nearest first."""
    while span is not None:
        yield span
        span = spans.get(span.parent.span_id) if span.parent else None  # type: ignore[assignment]


async def test_the_four_services_spans_chain_parent_to_child(traced: System) -> None:
    bus = traced.bus
    await bus.put("orders.requested", b"s-1", order(), headers=[("traceparent", CLIENT)])
    await bus.run()
    assert traced.orchestrator.sagas[b"s-1"].state == "ORDER_APPROVED"
    spans = traced.finished()
    assert {f"{span.context.trace_id:032x}" for span in spans} == {TRACE}
    assert {service_of(span) for span in spans} == {"orchestrator", "order", "product", "payment"}
    assert len(spans) == 12  # one per record handled: 5 orchestrator, 2 order, 4 product, 1
    known = by_id(spans)
    roots = [span for span in spans if span.parent.span_id not in known]  # type: ignore[union-attr]
    (root,) = roots
    assert f"{root.parent.span_id:016x}" == CLIENT.decode()[36:52]  # type: ignore[union-attr]
    # The last span, the second product's SellProducts hop, descends from every record
    # before it, across the four services.
    last = max(spans, key=lambda span: span.end_time or 0)
    path = [f"{service_of(s)}:{attr(s, 'saga.message')}" for s in chain(last, known)]
    assert path[::-1] == [
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
    # Every record sent carries the span of the record it was sent for.
    senders = {f"{s.context.span_id:016x}" for s in spans} | {CLIENT.decode()[36:52]}
    assert all(record.traceparent[36:52].decode() in senders for record in bus.sent)  # type: ignore[index]
    attributes = root.attributes
    assert attributes is not None
    assert (attributes["saga.id"], attributes["saga.outcome"]) == ("s-1", "started")
    assert attributes["messaging.destination.name"] == "orders.requested"
    assert (attributes["saga.state"], attributes["saga.next_step"]) == (
        "CREATING_ORDER",
        "create_order",
    )


async def test_spans_say_each_record_outcome(traced: System) -> None:
    bus = traced.bus
    await bus.put("orders.requested", b"s-1", order(), headers=[("traceparent", CLIENT)])
    await bus.run()
    outcomes = [
        (service_of(s), attr(s, "saga.message"), attr(s, "saga.outcome"))
        for s in sorted(traced.finished(), key=lambda span: span.start_time or 0)
    ]
    assert outcomes == [
        ("orchestrator", "OrderRequested", "started"),
        ("order", "CreateOrder", "SUCCESS"),
        ("orchestrator", "OrderCreated", "moved"),
        ("product", "ReserveProducts", "forwarded"),
        ("product", "ReserveProducts", "SUCCESS"),
        ("orchestrator", "ProductsReserved", "moved"),
        ("payment", "AuthorizePayment", "SUCCESS"),
        ("orchestrator", "PaymentAuthorized", "moved"),
        ("order", "ApproveOrder", "SUCCESS"),
        ("orchestrator", "OrderApproved", "moved"),
        ("product", "SellProducts", "forwarded"),
        ("product", "SellProducts", "processed"),
    ]
    traced.spans.clear()  # type: ignore[union-attr]
    await bus.put("orders.requested", b"s-1", order(), headers=[("traceparent", CLIENT)])
    (duplicate,) = traced.finished()
    assert attr(duplicate, "saga.outcome") == "unchanged"
    assert attr(duplicate, "saga.state") == "ORDER_APPROVED"


async def test_a_request_without_context_is_the_root_of_the_saga_trace(traced: System) -> None:
    bus = traced.bus
    await bus.put("orders.requested", b"s-1", order())
    await bus.run()
    spans = traced.finished()
    assert len({span.context.trace_id for span in spans}) == 1
    (root,) = [span for span in spans if span.parent is None]
    assert attr(root, "saga.message") == "OrderRequested"
    saga_trace = traced.orchestrator.sagas[b"s-1"].traceparent
    # (flags 03: sampled, and the SDK's trace ids are random, W3C trace context level 2)
    assert saga_trace[:52] == f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}"


async def test_a_failed_record_span_is_an_error_in_the_trace(traced: System) -> None:
    bus = traced.bus
    await bus.agents["order.commands"].put(
        b"\x00not avro", key=b"s-1", headers=[("traceparent", CLIENT)]
    )
    (span,) = traced.finished()
    assert attr(span, "saga.outcome") == "dead_lettered"
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.status.status_code.name == "ERROR"


async def test_the_timer_and_operators_continue_the_saga_trace_with_spans(traced: System) -> None:
    bus, service = traced.bus, traced.orchestrator
    await put_orchestrator(
        bus.agents["orchestrator"], "s-1", order(), headers=[("traceparent", CLIENT)]
    )
    (started,) = traced.finished()
    await service.fire_deadlines(service.sagas[b"s-1"].deadline + timedelta(seconds=1))
    await bus.put("saga.replies", b"s-1", bus.sent[-1].message, bus.sent[-1].headers)
    other = tracing.new_traceparent()
    retry = m.RetrySaga("s-1", "a-1", "ops", "stuck", T0)
    await bus.put(OPERATIONS_TOPIC, b"s-1", retry, headers=[("traceparent", other)])
    _, timed_out, retried = sorted(traced.finished(), key=lambda span: span.start_time or 0)
    for span in (timed_out, retried):  # children of the saga's first span
        assert span.parent.span_id == started.context.span_id  # type: ignore[union-attr]
    assert attr(timed_out, "saga.outcome") == "resent"
    assert attr(retried, "saga.outcome") == "accepted"
    (link,) = retried.links
    assert f"{link.context.trace_id:032x}" == tracing.trace_id(other)
