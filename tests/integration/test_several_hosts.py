"""Workers on several hosts: two product and two orchestrator workers bound to 127.0.0.2
and 127.0.0.3 (two hosts on one machine, the same port on both), in place of the
session's own. Each advertises its own address, so either answers for every key (Faust's
table routing forwards a lookup to the owner's advertised URL) and lists the whole table
(the list views ask the other host for its part).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable
from typing import Any

import pytest

from messaging import client, topics
from messaging.catalog import Catalog
from messaging.local_workers import Workers
from tests.conftest import TEST_WORKER_PORTS
from tests.integration.order_helpers import (
    Reply,
    customer,
    http_get,
    keys_in_every_partition,
    poll,
    product,
    seed_products,
    send_requests,
    wait_terminal,
)

HOSTS = ("127.0.0.2", "127.0.0.3")
SERVICES = ("orchestrator", "product")
PORTS = {service: TEST_WORKER_PORTS[service] + 20 for service in SERVICES}  # on both hosts
SAGAS_PER_PARTITION = 2


def loopback_aliases_bindable() -> bool:
    """127.0.0.2 and .3 are loopback on Linux; not on every system."""
    for host in HOSTS:
        with socket.socket() as s:
            try:
                s.bind((host, 0))
            except OSError:
                return False
    return True


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not loopback_aliases_bindable(), reason="127.0.0.2/.3 not bindable"),
]


def url(host: str, service: str) -> str:
    return f"http://{host}:{PORTS[service]}"


def through_each_host(service: str, path: str) -> dict[str, Reply]:
    return {host: http_get(url(host, service) + path, timeout=20) for host in HOSTS}


def local_partitions(service: str, path: str) -> dict[str, list[int]]:
    """The partitions each host's worker owns, as its list view says (`?scope=local`)."""
    replies = through_each_host(service, f"{path}?scope=local&limit=1")
    return {
        host: reply.json()["partitions"] if reply.status == 200 else []
        for host, reply in replies.items()
    }


def split_between_hosts(service: str, path: str, partitions: int) -> bool:
    owned = local_partitions(service, path)
    held = sorted(p for partitions_of_host in owned.values() for p in partitions_of_host)
    return all(owned.values()) and held == list(range(partitions))


def without_answering_worker(body: dict[str, Any]) -> dict[str, Any]:
    return {field: value for field, value in body.items() if field != "worker"}


def read_every_key(service: str, path: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Each key through either host: both 200 and the same answer, from the key's owner,
    which is one of the two hosts. Returns the answers by key."""
    answers = {}
    for key in keys:
        replies = through_each_host(service, f"{path}/{key}")
        bodies = {host: reply.json() for host, reply in replies.items()}
        assert all(r.status == 200 for r in replies.values()), (key, replies)
        assert bodies[HOSTS[0]] == bodies[HOSTS[1]], key
        answers[key] = bodies[HOSTS[0]]
    owners = {body["worker"].rstrip("/") for body in answers.values()}
    assert owners == {url(host, service) for host in HOSTS}, "each host owns some keys"
    return answers


def whole_list_from_either_host(service: str, path: str) -> dict[str, Any]:
    """The list view through either host: both whole (every partition, both hosts' parts)
    and alike but for the answering worker. Polled: a saga of an earlier test may still
    move meanwhile."""

    def alike(replies: dict[str, Reply]) -> bool:
        if any(r.status != 200 for r in replies.values()):
            return False
        bodies = [without_answering_worker(r.json()) for r in replies.values()]
        return bodies[0] == bodies[1]

    replies = poll(lambda: through_each_host(service, path), alike, f"{path} alike", timeout=30)
    for host, reply in replies.items():
        body = reply.json()
        assert body["worker"] == url(host, service)
        assert body["workers"] == sorted(url(h, service) for h in HOSTS)
        assert body["complete"] is True
    whole: dict[str, Any] = replies[HOSTS[0]].json()
    return whole


@pytest.mark.timeout(420)
def test_either_host_answers_for_every_key_and_lists_the_whole_table(
    workers: Workers, test_catalog: Catalog
) -> None:
    hosts = Workers([], loglevel="warning")
    for service in SERVICES:
        for host in HOSTS:
            hosts.add(service, web_host=host, web_port=PORTS[service])
    session_workers = list(SERVICES)
    stopped = workers.stop(names=session_workers)
    assert stopped == dict.fromkeys(session_workers, 0)
    hosts.start()
    try:
        hosts.wait_ready(timeout=180)
        sagas_partitions = topics.partitions("orders.requested")
        stock_partitions = topics.partitions("product.commands")
        poll(
            lambda: [
                split_between_hosts("orchestrator", "/sagas", sagas_partitions),
                split_between_hosts("product", "/stock", stock_partitions),
            ],
            all,
            "the partitions of both services split between the two hosts",
            timeout=120,
        )

        # Work for the hosts: products in every partition, sagas in every partition.
        run = uuid.uuid4().hex[:8]
        stocks = seed_products(f"hosts-{run}")
        saga_ids = keys_in_every_partition(f"hosts-{run}", sagas_partitions, SAGAS_PER_PARTITION)
        widget, rich = product(test_catalog, "widget"), customer(test_catalog, "rich")
        requests = [client.order_requested(rich, [(widget, 1)], order_id=s) for s in saga_ids]
        send_requests(requests)
        finals = wait_terminal(requests)
        assert {e.to_state for e in finals.values()} == {"ORDER_APPROVED"}

        # The seed is applied once /stock lists it all.
        poll(
            lambda: http_get(f"{url(HOSTS[0], 'product')}/stock?prefix=hosts-{run}-&limit=1000"),
            lambda r: r.status == 200 and r.json()["matching"] == len(stocks),
            "the seeded products listed",
        )

        sagas = read_every_key("orchestrator", "/sagas", saga_ids)
        assert {s["state"] for s in sagas.values()} == {"ORDER_APPROVED"}
        assert all(len(s["timeline"]) == 5 for s in sagas.values())
        stock = read_every_key("product", "/stock", stocks)
        assert {p: s["available"] for p, s in stock.items()} == stocks

        for service, path in (("orchestrator", "/sagas/nothing-here"), ("product", "/stock/x")):
            assert {r.status for r in through_each_host(service, path).values()} == {404}

        # The list views, whole from either host: each asks the other for its part.
        stock_list = whole_list_from_either_host(
            "product", f"/stock?prefix=hosts-{run}-&limit=1000"
        )
        assert [p["product_id"] for p in stock_list["products"]] == sorted(stocks)
        saga_list = whole_list_from_either_host("orchestrator", "/sagas?limit=1000")
        assert set(saga_ids) <= {s["saga_id"] for s in saga_list["sagas"]}
    finally:
        codes = hosts.stop()
        for name in session_workers:
            workers.start(name)
        workers.wait_ready(timeout=180)
    assert codes == dict.fromkeys(hosts.workers, 0)
