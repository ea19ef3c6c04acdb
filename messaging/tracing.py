"""One trace per saga: W3C trace context in a Kafka header, a span per handled record.

Every record of a saga carries a `traceparent` header (W3C Trace Context,
https://www.w3.org/TR/trace-context/): `00-<trace id: 32 hex>-<parent id: 16 hex>-<flags>`.
`saga order` and `saga cancel` start a trace; each worker puts the context of the record
it handles on every record it sends for it (commands, replies, product hops, SagaEvents,
operator answers); dead letters keep the header of the record they hold. The saga's row
remembers the context it started with, so what the orchestrator sends later on its own
(deadline re-sends, StepTimedOut, retention) continues the same trace.

Tracing off (no OTLP endpoint: the default), a worker only copies the header: the
record's context goes out unchanged, no span is made and OpenTelemetry is not imported.
Tracing on (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set),
the worker makes one span per record it handles (`RecordTracer`), a child of the
record's context, exported by OpenTelemetry's SDK over OTLP/HTTP in batches, and the
records it sends carry that span's context: each worker's span is the parent of the
next one's.

A header that is not a valid traceparent is ignored (as if absent): it never fails a
record or dead-letters it.

Faust's own `setup_opentelemetry` is not used: it is a sensor, a Faust Monitor called
on every event (a tenth of an agent's CPU per record, see messaging/metrics.py), and the
workers send through confluent-kafka, not Faust's producer.
"""

from __future__ import annotations

import logging
import os
import re
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
Headers = list[tuple[str, bytes]]
# A record's headers as the clients give them: (name, value) pairs, value bytes or None.
RawHeaders = Iterable[tuple[str, Any]] | Mapping[str, Any] | None

# version-traceid-parentid-flags, lowercase hex. Version ff is invalid; a later version
# may add fields after a "-" (read as version 00, sent on as 00).
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S)
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
MAX_LENGTH = 512  # longer values are not looked at


def valid(value: object) -> bytes | None:
    """`value` as a version-00 traceparent if it is a valid one (bytes or str), else None.

    A version-00 value comes back as it was (no copy); a later version's is cut to the
    version-00 fields. Never raises.
    """
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return None
    if not isinstance(value, bytes | bytearray) or not 55 <= len(value) <= MAX_LENGTH:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN or version == b"ff":
        return None
    if version == b"00":
        return bytes(value) if rest is None else None  # 00 has exactly four fields
    return bytes(value[:55])


def raw_traceparent(headers: RawHeaders) -> Any:
    """The value of a record's first `traceparent` header as it is (None: none)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == TRACEPARENT:
            return value
    return None


def traceparent_in(headers: RawHeaders) -> bytes | None:
    """The record's trace context: its first `traceparent` header if valid, else None."""
    value = raw_traceparent(headers)
    return None if value is None else valid(value)


def trace_id(traceparent: bytes | None) -> str | None:
    """The trace id (32 hex digits) of a valid traceparent."""
    return None if traceparent is None else traceparent[3:35].decode("ascii")


def trace_id_in(headers: RawHeaders) -> str | None:
    """The trace id of a record's valid `traceparent` header, else None."""
    return trace_id(traceparent_in(headers))


def new_traceparent(sampled: bool = True) -> bytes:
    """The context of a new trace: random trace and parent ids."""
    trace = os.urandom(16).hex()
    span = os.urandom(8).hex()
    if set(trace) == {"0"} or set(span) == {"0"}:  # all zero is invalid: 1 in 2**64
        return new_traceparent(sampled)
    return f"00-{trace}-{span}-{'01' if sampled else '00'}".encode("ascii")


def headers(traceparent: bytes | None) -> Headers | None:
    """The headers that carry `traceparent` on a record sent (None: none)."""
    return None if traceparent is None else [(TRACEPARENT, traceparent)]


def new_trace_headers() -> Headers:
    """Headers that start a new trace (a client's request)."""
    return [(TRACEPARENT, new_traceparent())]


def step_of(message: object) -> str | None:
    """The saga step a message is about: from its command id (`{saga_id}:{step}`), or its
    own `step` field (StepTimedOut)."""
    command_id = getattr(message, "command_id", None)
    if isinstance(command_id, str):
        return command_id.rpartition(":")[2] or None
    step = getattr(message, "step", None)
    return step if isinstance(step, str) else None


def saga_id_of(message: object) -> str | None:
    for field in ("saga_id", "cancel_id", "order_id"):  # a request's id is its saga's
        value = getattr(message, field, None)
        if isinstance(value, str):
            return value
    return None


# ---- configuration ----

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
SUPPORTED_PROTOCOL = "http/protobuf"


def configured(env: Mapping[str, str] | None = None) -> bool:
    """Whether workers export spans: an OTLP endpoint is set, and neither
    OTEL_SDK_DISABLED=true nor OTEL_TRACES_EXPORTER=none says otherwise. Raises
    ValueError for an exporter or protocol that is not installed (the worker then
    refuses to start, saying so)."""
    env = os.environ if env is None else env
    if not any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES):
        return False
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")}
    if exporters <= {"none", ""}:
        return False
    if exporters - {"otlp", "none", ""}:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']!r}: only otlp (or none) "
            "is installed"
        )
    for name in PROTOCOL_VARIABLES:
        protocol = env.get(name, "").strip()
        if protocol:
            if protocol != SUPPORTED_PROTOCOL:
                raise ValueError(
                    f"{name}={protocol!r}: only {SUPPORTED_PROTOCOL} is installed (use the"
                    " collector's HTTP port, 4318)"
                )
            break
    return True


def otlp_provider(service_name: str, instance: str | None = None) -> Any:
    """A TracerProvider exporting in batches over OTLP/HTTP, configured by the OTEL_*
    environment (endpoint, headers, timeout, sampler, batch sizes, resource attributes).

    `service.name` is the worker's (saga-orchestrator, saga-order...): the four workers
    usually share one environment, so OTEL_SERVICE_NAME would give them one name.
    """
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {"service.name": service_name}
    if instance:
        attributes["service.instance.id"] = instance
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


# ---- spans ----

# The outcome of a record whose handling failed.
DEAD_LETTERED = "dead_lettered"
FAILED = "failed"  # the worker stops on it (not the record's fault)


class Undecoded:
    """Stands for a record that could not be decoded (names its span)."""


UNDECODED = Undecoded()


class RecordTracer:
    """Makes the span of each record a worker handles (only when tracing is on)."""

    def __init__(self, provider: Any, consumer_group: str) -> None:
        from opentelemetry import trace
        from opentelemetry.trace import (
            Link,
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
        )

        self.provider = provider
        self._tracer = provider.get_tracer("kafka-saga")
        self._in_context = trace.set_span_in_context
        self._non_recording = NonRecordingSpan
        self._span_context = SpanContext
        self._flags = TraceFlags
        self._link = Link
        self._kind = SpanKind.CONSUMER
        self._status = Status
        self._error_code = StatusCode.ERROR
        self.consumer_group = consumer_group

    def _context_of(self, traceparent: bytes) -> Any:
        return self._span_context(
            trace_id=int(traceparent[3:35], 16),
            span_id=int(traceparent[36:52], 16),
            is_remote=True,
            trace_flags=self._flags(int(traceparent[53:55], 16)),
        )

    def start(
        self,
        message: object,
        topic: str,
        partition: int,
        offset: int,
        parent: bytes | None,
        link: bytes | None = None,
    ) -> Any:
        """The span of handling `message` (a record of topic[partition]@offset), a child of
        `parent` (None: the root of a new trace), linked to `link` (another trace the
        record came with)."""
        context = None
        if parent is not None:
            context = self._in_context(self._non_recording(self._context_of(parent)))
        links = () if link is None else (self._link(self._context_of(link)),)
        name = type(message).__name__
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "messaging.destination.name": topic,
            "messaging.destination.partition.id": str(partition),
            "messaging.kafka.offset": offset,
            "messaging.consumer.group.name": self.consumer_group,
            "saga.message": name,
        }
        saga_id = saga_id_of(message)
        if saga_id is not None:
            attributes["saga.id"] = saga_id
        step = step_of(message)
        if step is not None:
            attributes["saga.step"] = step
        return self._tracer.start_span(
            f"process {name}", context, kind=self._kind, attributes=attributes, links=links
        )

    def traceparent(self, span: Any) -> bytes:
        """The context records sent for the span's record carry: the span's own."""
        context = span.get_span_context()
        return b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags)

    def end(
        self,
        span: Any,
        outcome: str,
        error: BaseException | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """End the span with the record's outcome (and the error it failed with)."""
        span.set_attribute("saga.outcome", outcome)
        if attributes:
            span.set_attributes(attributes)
        if error is not None:
            span.record_exception(error)
            span.set_status(self._status(self._error_code, f"{type(error).__name__}: {error}"))
        span.end()

    def dead_lettered(
        self,
        topic: str,
        partition: int,
        offset: int,
        parent: bytes | None,
        error: BaseException,
    ) -> None:
        """The span of a record dead-lettered before it was decoded."""
        span = self.start(UNDECODED, topic, partition, offset, parent)
        self.end(span, DEAD_LETTERED, error)

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporter."""
        try:
            self.provider.shutdown()
        except Exception:  # never fail a stop over traces
            log.exception("stopping the trace exporter failed")


_TRACERS: weakref.WeakKeyDictionary[Any, RecordTracer] = weakref.WeakKeyDictionary()


def install(app: Any, provider: Any = None, instance: str | None = None) -> RecordTracer | None:
    """Give `app` its RecordTracer: on `provider` if given (tests), else an OTLP one if
    the environment configures an endpoint (`configured`), else none (tracing off)."""
    if provider is None:
        if not configured():
            return None
        provider = otlp_provider(app.conf.id, instance)
    tracer = RecordTracer(provider, app.conf.id)
    _TRACERS[app] = tracer
    return tracer


def tracer_of(app: Any) -> RecordTracer | None:
    """The app's RecordTracer, or None when tracing is off."""
    try:
        return _TRACERS.get(app)
    except TypeError:  # not an app (no weak reference to it): it has none
        return None


def shutdown(app: Any) -> None:
    """Export the spans the app's tracer still holds, and stop it."""
    tracer = tracer_of(app)
    if tracer is not None:
        tracer.shutdown()
