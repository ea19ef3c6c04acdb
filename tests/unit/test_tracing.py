"""messaging.tracing: the traceparent header read and written, the record spans."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from messaging import tracing
from schemas import messages as m
from tests.unit.saga_factories import T0

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
GOOD = f"00-{TRACE}-{SPAN}-01".encode()


# ---- parsing ----


@pytest.mark.parametrize("value", [GOOD, GOOD.decode(), bytearray(GOOD), f"00-{TRACE}-{SPAN}-00"])
def test_a_valid_traceparent_is_kept_as_it_is(value: Any) -> None:
    parsed = tracing.valid(value)
    assert parsed == (value.encode() if isinstance(value, str) else bytes(value))
    assert tracing.trace_id(parsed) == TRACE


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        42,
        b"garbage",
        GOOD.upper(),  # hex must be lowercase
        GOOD[:-1],  # too short
        GOOD + b"0",  # too long for version 00
        GOOD + b"-extra",  # version 00 has exactly four fields
        f"00-{'0' * 32}-{SPAN}-01".encode(),  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01".encode(),  # all-zero parent id
        f"ff-{TRACE}-{SPAN}-01".encode(),  # version ff is invalid
        f"00-{TRACE}-{SPAN}-1".encode(),
        f"00_{TRACE}_{SPAN}_01".encode(),
        f"00-{TRACE[:-1]}g-{SPAN}-01".encode(),
        f"00-{TRACE}-{SPAN}-01\n".encode(),
        "00-" + TRACE + "-" + SPAN + "-0\u00e9",  # not ASCII
        b"\xff" * 55,
        b"0" * 10_000,
    ],
)
def test_a_malformed_traceparent_is_ignored(value: Any) -> None:
    assert tracing.valid(value) is None
    assert tracing.traceparent_in([(tracing.TRACEPARENT, value)]) is None


def test_a_later_version_is_read_as_version_00() -> None:
    later = f"01-{TRACE}-{SPAN}-01-what-comes-next".encode()
    assert tracing.valid(later) == f"01-{TRACE}-{SPAN}-01".encode()
    assert tracing.valid(f"01-{TRACE}-{SPAN}-01x".encode()) is None  # fields follow a "-"


@given(st.binary(max_size=80) | st.text(max_size=80))
def test_any_header_value_parses_without_raising(value: Any) -> None:
    parsed = tracing.valid(value)
    assert parsed is None or len(parsed) == 55


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (None, None),
        ([], None),
        ((), None),
        ([("other", b"x")], None),
        ([(tracing.TRACEPARENT, None)], None),  # Kafka allows a header without a value
        ([("other", b"x"), (tracing.TRACEPARENT, GOOD)], GOOD),
        (((tracing.TRACEPARENT, GOOD),), GOOD),  # aiokafka gives a tuple
        ({tracing.TRACEPARENT: GOOD}, GOOD),
        ([("Traceparent", GOOD)], None),  # Kafka header names are case-sensitive
        ([(tracing.TRACEPARENT, GOOD), (tracing.TRACEPARENT, b"bad")], GOOD),  # the first
        ([(tracing.TRACEPARENT, b"bad"), (tracing.TRACEPARENT, GOOD)], None),
    ],
)
def test_the_record_context_is_its_first_traceparent_header(headers: Any, expected: Any) -> None:
    assert tracing.traceparent_in(headers) == expected
    assert tracing.trace_id_in(headers) == (None if expected is None else TRACE)


def test_headers_carry_a_context_or_nothing() -> None:
    assert tracing.headers(None) is None
    assert tracing.headers(GOOD) == [("traceparent", GOOD)]


def test_a_new_trace_is_valid_sampled_and_new_each_time() -> None:
    made = {tracing.new_traceparent() for _ in range(100)}
    assert len(made) == 100
    assert all(tracing.valid(t) == t and t.endswith(b"-01") for t in made)
    assert tracing.new_traceparent(sampled=False).endswith(b"-00")
    ((name, value),) = tracing.new_trace_headers()
    assert name == "traceparent" and tracing.valid(value) == value


def test_step_and_saga_of_a_message() -> None:
    command = m.CreateOrder("s1", "s1:create_order", 1, T0, "s1", "c1", [m.OrderItem("p", 1)])
    assert tracing.step_of(command) == "create_order"
    assert tracing.saga_id_of(command) == "s1"
    timeout = m.StepTimedOut("s1", "payment", 2, T0, T0)
    assert tracing.step_of(timeout) == "payment"
    request = m.OrderRequested("o1", "c1", [m.OrderItem("p", 1)], T0)
    assert (tracing.step_of(request), tracing.saga_id_of(request)) == (None, "o1")
    cancel = m.CancelOrderRequested("x1", "o1", T0)
    assert tracing.saga_id_of(cancel) == "x1"  # the cancel's own saga
    assert tracing.saga_id_of(object()) is None


# ---- configuration ----

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, False),
        (ENDPOINT, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h:4318/v1/traces"}, True),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, False),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, True),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_EXPORTER": "otlp"}, False),  # no endpoint
    ],
)
def test_tracing_is_on_only_with_an_endpoint(env: dict[str, str], on: bool) -> None:
    assert tracing.configured(env) is on


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ],
)
def test_an_exporter_that_is_not_installed_is_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        tracing.configured(env)


# ---- spans ----


@pytest.fixture
def spans() -> Iterator[tuple[tracing.RecordTracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracing.RecordTracer(provider, "saga-test"), exporter
    provider.shutdown()


def test_a_record_span_is_a_child_of_the_record_context(spans: Any) -> None:
    tracer, exporter = spans
    command = m.CreateOrder("s1", "s1:create_order", 1, T0, "s1", "c1", [m.OrderItem("p", 1)])
    span = tracer.start(command, "order.commands", 3, 42, GOOD)
    sent = tracer.traceparent(span)
    tracer.end(span, "SUCCESS")
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "process CreateOrder"
    assert finished.kind == SpanKind.CONSUMER
    assert f"{finished.context.trace_id:032x}" == TRACE
    assert f"{finished.parent.span_id:016x}" == SPAN and finished.parent.is_remote
    assert sent == f"00-{TRACE}-{finished.context.span_id:016x}-01".encode()
    assert dict(finished.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": "order.commands",
        "messaging.destination.partition.id": "3",
        "messaging.kafka.offset": 42,
        "messaging.consumer.group.name": "saga-test",
        "saga.message": "CreateOrder",
        "saga.id": "s1",
        "saga.step": "create_order",
        "saga.outcome": "SUCCESS",
    }


def test_a_record_without_context_starts_a_trace_and_a_link_names_another(spans: Any) -> None:
    tracer, exporter = spans
    request = m.OrderRequested("o1", "c1", [m.OrderItem("p", 1)], T0)
    root = tracer.start(request, "orders.requested", 0, 1, None)
    tracer.end(root, "started", attributes={"saga.state": "CREATING_ORDER"})
    linked = tracer.start(request, "orders.requested", 0, 2, tracer.traceparent(root), GOOD)
    tracer.end(linked, "unchanged")
    first, second = exporter.get_finished_spans()
    assert first.parent is None and first.attributes["saga.state"] == "CREATING_ORDER"
    assert second.parent.span_id == first.context.span_id
    (link,) = second.links
    assert f"{link.context.trace_id:032x}" == TRACE


def test_a_failed_record_span_says_why(spans: Any) -> None:
    tracer, exporter = spans
    tracer.dead_lettered("saga.replies", 0, 7, GOOD, ValueError("not avro"))
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "process Undecoded"
    assert finished.status.status_code == StatusCode.ERROR
    assert "not avro" in (finished.status.description or "")
    assert finished.attributes["saga.outcome"] == tracing.DEAD_LETTERED
    assert [e.name for e in finished.events] == ["exception"]


def test_an_unsampled_context_stays_unsampled(spans: Any) -> None:
    tracer, exporter = spans
    unsampled = f"00-{TRACE}-{SPAN}-00".encode()
    span = tracer.start(object(), "t", 0, 0, unsampled)
    sent = tracer.traceparent(span)
    tracer.end(span, "x")
    assert exporter.get_finished_spans() == ()  # parent-based sampling: not recorded
    assert sent.startswith(f"00-{TRACE}-".encode()) and sent.endswith(b"-00")


def test_a_worker_given_an_exporter_it_lacks_says_so_and_exits_78(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from click.testing import CliRunner

    from cli.worker_cmd import worker

    monkeypatch.setenv("SAGA_HOME", str(tmp_path))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    result = CliRunner().invoke(worker, ["order", "--web-port", "1"])
    assert result.exit_code == 78
    assert "order: refusing to start: OTEL_EXPORTER_OTLP_PROTOCOL='grpc'" in result.output


def test_a_worker_without_an_endpoint_makes_no_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    from participants.order.app import OrderService

    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    service = OrderService(7695, store="memory://")
    assert service.tracer is None and tracing.tracer_of(service.app) is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1")
    traced = OrderService(7696, store="memory://")
    assert traced.tracer is not None
    resource = traced.tracer.provider.resource.attributes
    assert resource["service.name"] == "saga-order"
    traced.tracer.shutdown()
