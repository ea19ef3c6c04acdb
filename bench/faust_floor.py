"""The floor under every worker: what one record costs Faust itself, with no saga work.

The saga's workers are Faust agents. Each saga makes them consume about 12 records and
produce about 23 (commands, replies, events, product hops, changelog rows).
This measures, on the same broker, the CPU one record costs a Faust agent built by the
project's `create_app` that does nothing but consume it (and optionally send it on):

    bulk     records already waiting: each fetch brings hundreds
    trickle  records arriving at a steady rate, as in the saga pipeline under light load

Each case runs a fresh worker process (`python -m bench.faust_floor agent ...`) and
prints microseconds of CPU (user+system, all threads) per record:

    python -m bench.faust_floor [--records 5000] [--rate 200]

Adaptive fetch batching (SAGA_FETCH_MAX_WAIT_MS) and producer linger
(SAGA_PRODUCER_LINGER_MS) apply here as in the workers, so their effect can be seen.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid

import click

from messaging import settings

PAYLOAD = b"x" * 120
CASES = [("bulk", False), ("bulk", True), ("trickle", False), ("trickle", True)]


def run_agent(source: str, target: str, records: int, send: bool) -> None:
    """The worker: consume `records` records of `source` (sending each to `target`), then
    print the CPU they cost and exit."""
    import faust

    from messaging.faust_app import create_app
    from messaging.faust_workarounds import quiet_worker
    from messaging.producer import producer_of

    app_id = f"bench-floor-{uuid.uuid4().hex[:8]}"
    app = create_app(app_id, web_port=1, store="memory://", web_enabled=False)
    inputs = app.topic(source, key_type=bytes, value_type=bytes, partitions=4)
    producer = producer_of(app)
    seen = {"count": 0, "cpu": 0.0}

    @app.agent(inputs)
    async def relay(stream: faust.StreamT) -> None:
        async for event in stream.events():
            if seen["count"] == 0:
                seen["cpu"] = time.process_time()
            if send:  # through the workers' confluent-kafka producer, as they send
                producer.send(target, event.key, event.value)
            seen["count"] += 1
            if seen["count"] == records:
                cpu = time.process_time() - seen["cpu"]
                _say(f"result {cpu / records * 1e6:.0f}")
                os._exit(0)

    @app.task
    async def announce() -> None:
        _say("ready")

    quiet_worker(app, "warning").execute_from_commandline()


def _say(line: str) -> None:
    """To the real stdout: the Faust worker redirects sys.stdout into its log."""
    assert sys.__stdout__ is not None
    sys.__stdout__.write(line + "\n")
    sys.__stdout__.flush()


def produce(topic: str, records: int, rate: float | None) -> None:
    from confluent_kafka import Producer

    producer = Producer(settings.confluent_config(**{"linger.ms": 0 if rate else 5}))
    start = time.monotonic()
    for i in range(records):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        producer.produce(topic, key=str(i).encode(), value=PAYLOAD)
        producer.poll(0)
    producer.flush()


def create_topics(*names: str) -> None:
    from confluent_kafka.admin import NewTopic

    from bench.kafka_io import admin_client

    configs = {"retention.ms": str(10 * 60 * 1000)}
    admin = admin_client()  # kept alive until the futures resolve
    futures = admin.create_topics([NewTopic(n, 4, 1, config=configs) for n in names])
    for future in futures.values():
        future.result()


def delete_topics(*names: str) -> None:
    from bench.kafka_io import admin_client

    admin = admin_client()
    for future in admin.delete_topics(list(names)).values():
        # cleanup only: a topic left behind expires with its retention
        with contextlib.suppress(Exception):
            future.result()


def measure(kind: str, send: bool, records: int, rate: float) -> float:
    run = uuid.uuid4().hex[:8]
    source, target = f"bench.floor.{run}.in", f"bench.floor.{run}.out"
    create_topics(source, target)
    try:
        if kind == "bulk":
            produce(source, records, None)
        command = [sys.executable, "-m", "bench.faust_floor", "agent", source, target]
        command += [str(records), "send" if send else "consume"]
        agent = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert agent.stdout is not None
        try:
            for line in agent.stdout:
                if line.startswith("ready") and kind == "trickle":
                    time.sleep(5)  # let it join the group and get its partitions
                    produce(source, records, rate)
                if line.startswith("result"):
                    return float(line.split()[1])
            raise RuntimeError(f"the agent exited with {agent.wait()} before a result")
        finally:
            agent.kill()
            agent.wait()
    finally:
        delete_topics(source, target)


@click.command()
@click.option("--records", default=5000, show_default=True, help="Records per case.")
@click.option("--rate", default=200.0, show_default=True, help="Records/s of the trickle.")
def main(records: int, rate: float) -> None:
    """Print the CPU a record costs a bare Faust agent, in bulk and in a trickle."""
    print(f"Faust agent, CPU per record ({records} records per case, trickle {rate:.0f}/s)")
    for kind, send in CASES:
        micros = measure(kind, send, records, rate)
        what = "consume + send" if send else "consume"
        print(f"  {kind:8s} {what:15s} {micros:7.0f} us/record", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["agent"]:
        source, target, records, mode = sys.argv[2:6]
        run_agent(source, target, int(records), mode == "send")
    else:
        main()
