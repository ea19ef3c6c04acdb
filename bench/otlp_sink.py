"""A tiny OTLP/HTTP trace receiver: takes what workers export, like a collector would.

For measuring tracing on (`saga bench` with OTEL_EXPORTER_OTLP_ENDPOINT pointing here)
and for tests that check the spans real workers export. It answers POST /v1/traces,
decodes each ExportTraceServiceRequest (protobuf, gzip or not) and keeps the spans (or
only counts them):

    python -m bench.otlp_sink --port 4318          # counts, prints a line every 10 s
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

TRACES_PATH = "/v1/traces"


@dataclass(frozen=True)
class ReceivedSpan:
    """An exported span, flattened: ids as hex, attributes as Python values."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    attributes: dict[str, Any]
    links: tuple[str, ...]  # trace ids of its links
    status_code: int  # 0 unset, 1 ok, 2 error
    start_ns: int  # Unix time, nanoseconds
    end_ns: int


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return None if kind is None else getattr(any_value, kind)


def spans_of(request: ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(
                    service=str(resource.get("service.name", "")),
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    attributes={a.key: _value(a.value) for a in span.attributes},
                    links=tuple(link.trace_id.hex() for link in span.links),
                    status_code=span.status.code,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                )


class OtlpSink:
    """The receiver, on 127.0.0.1:`port` (0: any free port) in threads of this process."""

    def __init__(self, port: int = 0, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[ReceivedSpan] = []
        self.count = 0
        self.requests = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != TRACES_PATH:
                    self.send_response(404)
                    self.end_headers()
                    return
                sink.received(ExportTraceServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no line per export

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def endpoint(self) -> str:
        """What OTEL_EXPORTER_OTLP_ENDPOINT is set to (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self.port}"

    def received(self, request: ExportTraceServiceRequest) -> None:
        spans = list(spans_of(request))
        with self.lock:
            self.requests += 1
            self.count += len(spans)
            if self.keep:
                self.spans.extend(spans)

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]

    def start(self) -> OtlpSink:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def running(port: int = 0, keep: bool = True) -> Iterator[OtlpSink]:
    sink = OtlpSink(port, keep).start()
    try:
        yield sink
    finally:
        sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    with running(args.port, keep=False) as sink:
        print(f"OTLP/HTTP sink at {sink.endpoint}{TRACES_PATH}", flush=True)
        try:
            while True:
                time.sleep(10)
                print(f"{sink.count} spans in {sink.requests} requests", flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
