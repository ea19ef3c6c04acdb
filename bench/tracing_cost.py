"""What tracing costs a worker per record, off and on: `python -m bench.tracing_cost`.

Times, in CPU microseconds per record of this process (every thread, so the SDK's export
thread counts), the work messaging/tracing.py adds to the handling of one record:

- off: reading the record's traceparent header and building the headers of what it sends
  (a participant), plus checking the saga row's context (the orchestrator); what the
  header costs librdkafka per record sent (produce with the header against without) and
  aiokafka per record fetched (reading a batch with headers against without);
- on: a span per record (start as the child of the record's context, its context for the
  records sent, end with the outcome) exported by a BatchSpanProcessor to an exporter that
  drops it, then over OTLP/HTTP to `bench.otlp_sink` in another process.

Best of several rounds: the machine is shared, and a round only gets slower from others'
work.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import confluent_kafka
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from messaging import tracing
from schemas import messages as m

COMMAND = m.AuthorizePayment(
    "s-1", "s-1:authorize_payment", 1, datetime.now(UTC), "s-1", "c-1", m.Money(Decimal(1), "EUR")
)
CONTEXT = tracing.new_traceparent()
HEADERS = ((tracing.TRACEPARENT, CONTEXT),)  # as aiokafka gives them
ROW_CONTEXT = CONTEXT.decode()
VALUE = b"x" * 200  # about a command's size


def cpu_per_call(work: Callable[[int], None], records: int, rounds: int) -> float:
    """The least CPU time of `rounds` runs of `work(records)`, in µs per record."""
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work(records)
        best = min(best, time.process_time() - started)
    return best / records * 1e6


def participant_off(records: int) -> None:
    for _ in range(records):
        tracing.headers(tracing.traceparent_in(HEADERS))


def orchestrator_off(records: int) -> None:
    for _ in range(records):
        incoming = tracing.traceparent_in(HEADERS)
        saga = tracing.valid(ROW_CONTEXT)
        assert incoming is not None and saga is not None
        tracing.headers(incoming if incoming[3:35] == saga[3:35] else saga)


def producing(with_header: bool) -> Callable[[int], None]:
    producer = confluent_kafka.Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    headers: list[tuple[str, str | bytes | None]] = [(tracing.TRACEPARENT, CONTEXT)]

    def produce(records: int) -> None:
        for n in range(records):
            if with_header:
                producer.produce("t", VALUE, b"key", headers=headers)
            else:
                producer.produce("t", VALUE, b"key")
            if n % 10_000 == 9_999:
                empty()
        empty()

    def empty() -> None:  # nothing is delivered: keep librdkafka's queue from filling up
        producer.purge()
        producer.poll(0)  # the purged records' reports

    return produce


def fetching(with_header: bool) -> Callable[[int], None]:
    from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=10**7,
    )  # fmt: skip
    headers = [(tracing.TRACEPARENT, CONTEXT)] if with_header else []
    for offset in range(1000):
        builder.append(offset, timestamp=None, key=b"key", value=VALUE, headers=headers)
    batch = bytes(builder.build())

    def fetch(records: int) -> None:
        for _ in range(records // 1000):
            for record in DefaultRecordBatch(batch):
                record.headers  # noqa: B018 (what Faust's message takes)

    return fetch


class Dropped(SpanExporter):
    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def spans(provider: TracerProvider) -> Callable[[int], None]:
    tracer = tracing.RecordTracer(provider, "saga-payment")

    def record(records: int) -> None:
        for offset in range(records):
            span = tracer.start(COMMAND, "payment.commands", 0, offset, CONTEXT)
            tracing.headers(tracer.traceparent(span))
            tracer.end(span, "SUCCESS")
        provider.force_flush()

    return record


def batch_provider(exporter: SpanExporter, records: int) -> TracerProvider:
    """The workers' span processor, with room for every span of a round: a tight loop
    makes spans faster than any exporter takes them, and a full queue drops them."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=records + 1))
    return provider


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, rounds = args.records, args.rounds

    def show(name: str, micros: float) -> None:
        print(f"{name:62} {micros:7.2f} µs/record", flush=True)

    print(f"{n} records, best of {rounds} rounds (CPU of this process, all threads)")
    show(
        "off: participant (read header, headers to send)", cpu_per_call(participant_off, n, rounds)
    )
    orchestrator = cpu_per_call(orchestrator_off, n, rounds)
    show("off: orchestrator (same, and the saga row's context)", orchestrator)
    without = cpu_per_call(producing(False), n, rounds)
    with_header = cpu_per_call(producing(True), n, rounds)
    show("librdkafka produce, no header", without)
    show("librdkafka produce, traceparent header", with_header)
    show("  the header's cost per record sent", with_header - without)
    without = cpu_per_call(fetching(False), n, rounds)
    with_header = cpu_per_call(fetching(True), n, rounds)
    show("aiokafka reading a fetched record, no header", without)
    show("aiokafka reading a fetched record, traceparent header", with_header)
    show("  the header's cost per record fetched", with_header - without)
    dropped = cpu_per_call(spans(batch_provider(Dropped(), n)), n, rounds)
    show("on: span per record, exporter that drops it", dropped)

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = subprocess.Popen(  # in its own process: its CPU is not the worker's
        [sys.executable, "-m", "bench.otlp_sink", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        time.sleep(1.5)
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces")
        exported = cpu_per_call(spans(batch_provider(exporter, n)), n, rounds)
        show("on: span per record, OTLP/HTTP to a sink", exported)
    finally:
        sink.terminate()
        sink.wait(10)


if __name__ == "__main__":
    main()
