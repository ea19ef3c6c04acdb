"""The ceiling: the saga's message hops through the same broker, with nothing else.

A saga that ends in ORDER_APPROVED moves ten messages: the request, four commands, four
replies and the terminal event, each handed on by one of the four workers. Here ten topics
`bench.hop0` .. `bench.hop9` carry one small opaque record through the same nine
hand-offs, done by four relay processes that mirror which worker makes each hop:

    hop  saga message in -> out                       worker / relay
    0    OrderRequested -> CreateOrder                orchestrator
    1    CreateOrder -> OrderCreated                  order
    2    OrderCreated -> ReserveProducts              orchestrator
    3    ReserveProducts -> ProductsReserved          product
    4    ProductsReserved -> AuthorizePayment         orchestrator
    5    AuthorizePayment -> PaymentAuthorized        payment
    6    PaymentAuthorized -> ApproveOrder            orchestrator
    7    ApproveOrder -> OrderApproved                order
    8    OrderApproved -> SagaEvent (terminal)        orchestrator

A relay is a plain confluent-kafka consume -> produce loop: no state, no Avro, no
commits, no table, no intermediate SagaEvents, no product-to-product hops. What the saga
does beyond this is what its throughput is measured against.

Run a relay by hand: `python -m bench.baseline relay ROLE` (prints "ready" once assigned).
"""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Container
from types import FrameType

from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from bench.driver import Completion
from bench.kafka_io import admin_client, assign_at_end, plain_consumer, poll_batch
from messaging import settings, topics

HOPS = 9
TOPICS = [f"bench.hop{i}" for i in range(HOPS + 1)]
RELAY_HOPS = {
    "orchestrator": [0, 2, 4, 6, 8],
    "order": [1, 7],
    "product": [3],
    "payment": [5],
}
# Same partitioning as the saga's reply topic; records are kept only a few minutes.
PARTITIONS_LIKE = "saga.replies"
TOPIC_CONFIGS = {"retention.ms": str(10 * 60 * 1000)}
# About the size of an encoded OrderRequested, so both move similar bytes.
PAYLOAD_SIZE = 120
OUTCOME = "DELIVERED"
READY_TIMEOUT = 60.0


def producer_config() -> dict[str, settings.ConfigValue]:
    # The producer settings of messaging.client.producer(), which the saga's clients use;
    # acks=all like the Faust workers (producer_acks=-1).
    extra: dict[str, settings.ConfigValue] = {
        "partitioner": "murmur2_random",
        "linger.ms": 1,
        "enable.idempotence": True,
        "acks": "all",
    }
    return settings.confluent_config(**extra)


def ensure_topics(timeout: float = 30.0) -> None:
    """Create the hop topics that are missing (they are reused across runs)."""
    admin = admin_client()
    existing = admin.list_topics(timeout=timeout).topics
    spec = topics.project_topics().topics[PARTITIONS_LIKE]
    missing = [
        NewTopic(name, spec.partitions, spec.replication_factor, config=TOPIC_CONFIGS)
        for name in TOPICS
        if name not in existing
    ]
    if not missing:
        return
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result()
        except Exception as exc:  # created meanwhile by another run is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create {name}: {exc}") from exc


# ---------------------------------------------------------------- the relay processes


def relay(role: str) -> None:
    """Hand every record of this role's hops on to the next hop, until SIGTERM/SIGINT."""
    next_topic = {TOPICS[hop]: TOPICS[hop + 1] for hop in RELAY_HOPS[role]}
    consumer = plain_consumer(f"bench-relay-{role}")
    producer = Producer(producer_config())
    assign_at_end(consumer, next_topic)
    print("ready", flush=True)
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for record in poll_batch(consumer, 0.2):
            if record.error() is None:
                _produce(producer, next_topic[record.topic() or ""], record.key(), record.value())
        producer.poll(0)
    producer.flush(10)
    consumer.close()


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:  # local queue full: let deliveries drain, then retry
            producer.poll(0.05)


class Relays:
    """The four relay processes, started together and stopped together."""

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def start(self) -> dict[str, int]:
        for role in RELAY_HOPS:
            self.processes[role] = subprocess.Popen(
                [sys.executable, "-m", "bench.baseline", "relay", role],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        for role, process in self.processes.items():
            self._wait_ready(role, process)
        return {role: process.pid for role, process in self.processes.items()}

    @staticmethod
    def _wait_ready(role: str, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until "ready", or EOF if it died
        if line.strip() != "ready":
            process.kill()
            raise RuntimeError(f"baseline relay {role!r} did not start (exit {process.wait()})")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---------------------------------------------------------------- the load side


class BaselinePipeline:
    """Offers records to hop0 and reads them back from hop9 (see bench.driver.Pipeline)."""

    name = "baseline"

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.producer = Producer(producer_config())
        self.consumer = plain_consumer(f"bench-baseline-{self.run_id}")
        assign_at_end(self.consumer, [TOPICS[-1]])

    def offer(self, seq: int) -> tuple[str, str]:
        key = f"{self.run_id}-{seq}"
        # The send time travels in the record like the saga's requested_at; padded to size.
        value = struct.pack("<d", time.time()).ljust(PAYLOAD_SIZE, b".")
        _produce(self.producer, TOPICS[0], key.encode(), value)
        self.producer.poll(0)
        return key, "relay"

    def poll(self, timeout: float, pending: Container[str]) -> list[Completion]:
        records = poll_batch(self.consumer, timeout)
        received = time.monotonic()
        self.producer.poll(0)
        completions = []
        for record in records:
            key = (record.key() or b"").decode()
            if record.error() is None and key in pending:
                completions.append(Completion(key, OUTCOME, received))
        return completions

    def close(self) -> None:
        self.producer.flush(10)
        self.consumer.close()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "relay" or sys.argv[2] not in RELAY_HOPS:
        sys.exit(f"usage: python -m bench.baseline relay {{{','.join(RELAY_HOPS)}}}")
    relay(sys.argv[2])
