"""Helpers for integration tests that place orders and read the workers' web views."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import TopicPartition

from messaging import catalog, client, topics
from messaging.catalog import Catalog
from schemas import messages as m

T = TypeVar("T")

TERMINAL_TIMEOUT = 90.0


def catalog_id(ids: Iterable[str], suffix: str) -> str:
    """The session's product or customer id ending in `-suffix` (e.g. "widget", "rich")."""
    return next(i for i in ids if i.endswith(f"-{suffix}"))


def product(test_catalog: Catalog, name: str) -> str:
    return catalog_id((r.product_id for r in test_catalog.restocks), name)


def customer(test_catalog: Catalog, name: str) -> str:
    return catalog_id((t.customer_id for t in test_catalog.top_ups), name)


def keys_in_every_partition(prefix: str, partitions: int, per_partition: int) -> list[str]:
    """Keys `prefix-000`, `prefix-001`, ... until every partition has `per_partition` of
    them at least (murmur2, as the workers place them)."""
    by_partition: dict[int, int] = {}
    keys: list[str] = []
    while len(by_partition) < partitions or min(by_partition.values()) < per_partition:
        key = f"{prefix}-{len(keys):03d}"
        partition = client.partition_for(key.encode(), partitions)
        by_partition[partition] = by_partition.get(partition, 0) + 1
        keys.append(key)
    return keys


def seed_products(prefix: str, per_partition: int = 3) -> dict[str, int]:
    """Products `prefix-N` with stock N + 1, `per_partition` at least in every partition."""
    ids = keys_in_every_partition(prefix, topics.partitions("product.commands"), per_partition)
    stocks = {product_id: n + 1 for n, product_id in enumerate(ids)}
    lines = "\n".join(f'  - {{id: {p}, stock: {s}, price: "1.00"}}' for p, s in stocks.items())
    catalog.publish(catalog.parse(f"products:\n{lines}\n"))
    return stocks


def place_orders(*orders: tuple[str, list[tuple[str, int]]]) -> list[m.OrderRequested]:
    """Produce one OrderRequested per (customer, items) and return them."""
    requests = [client.order_requested(customer_id, items) for customer_id, items in orders]
    send_requests(requests)
    return requests


def send_requests(requests: Iterable[m.OrderRequested]) -> None:
    producer = client.producer()
    for request in requests:
        client.send(producer, client.REQUEST_TOPIC, request.order_id, request)
    client.flush(producer)


def wait_terminal(
    requests: list[m.OrderRequested], timeout: float = TERMINAL_TIMEOUT
) -> dict[str, m.SagaEvent]:
    """The terminal SagaEvent of each requested saga (fails if one does not finish)."""
    since = min(r.requested_at for r in requests)
    finals = {
        event.saga_id: event
        for event in client.follow_sagas([r.order_id for r in requests], since, timeout)
        if event.terminal
    }
    missing = [r.order_id for r in requests if r.order_id not in finals]
    assert not missing, f"sagas not finished within {timeout:.0f}s: {missing}"
    return finals


@dataclass(frozen=True)
class Reply:
    status: int
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        assert self.content_type == "application/json", (self.content_type, self.text[:200])
        return json.loads(self.body)


def http_get(url: str, accept: str | None = None, timeout: float = 30.0) -> Reply:
    """GET a URL; HTTP errors are returned, not raised."""
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.headers.get_content_type(), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.headers.get_content_type(), error.read())


def poll(
    fetch: Callable[[], T],
    done: Callable[[T], bool],
    what: str,
    timeout: float = 60.0,
    interval: float = 0.3,
) -> T:
    """Call `fetch` until `done(result)`; fail naming `what` and the last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f}s; last: {result!r}")
        time.sleep(interval)


def wait_consumed(group: str, topic: str, timeout: float = 60.0) -> None:
    """Wait until consumer group `group` has committed every record `topic` has now.

    A worker commits only what it processed (and its table changes before that), so
    afterwards its tables reflect every record written to `topic` before the call.
    """
    consumer = client.consumer(group)  # only reads the group's commits; never joins it
    try:
        partitions = [TopicPartition(topic, p) for p in range(topics.partitions(topic))]
        ends = [client.end_offset(consumer, tp) for tp in partitions]

        def committed() -> list[int]:
            return [tp.offset for tp in consumer.committed(partitions, timeout=10)]

        poll(
            committed,
            # A partition never written has nothing to commit (its offset stays unset).
            lambda offsets: all(end == 0 or c >= end for c, end in zip(offsets, ends, strict=True)),
            f"{group} committed {topic} up to {ends}",
            timeout=timeout,
        )
    finally:
        consumer.close()
