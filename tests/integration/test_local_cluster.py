"""`saga kafka start --brokers 3` on a cluster of its own: every topic replicated, the
workers on it, a node killed and back in every ISR, and a stop that stops all three.

One cluster serves the module (a start costs 10-20 s on two cores; see
tests/integration/cluster_helpers.py for where it lives). The tests run in file order: the
last one stops the cluster.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType

from messaging import catalog, client, local_broker, settings, topics
from messaging.local_workers import SERVICE_NAMES, Workers
from tests.integration.cluster_helpers import Cluster, saga, started_cluster
from tests.integration.order_helpers import place_orders, wait_terminal
from tests.integration.test_local_broker import pid_alive
from tests.ports import free_ports

pytestmark = pytest.mark.integration


def report(line: str) -> None:
    """Figures measured here (shown with `pytest -s`, or in the log on failure)."""
    print(f"[cluster] {line}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with started_cluster(tmp_path_factory.mktemp("cluster-home"), report) as running:
        report_memory()
        yield running


def report_memory() -> None:
    for node_id, pid in sorted(local_broker.running_pids().items()):
        rss = int(re.findall(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[0])
        report(f"node {node_id}: RSS {rss / 1024:.0f} MB")


def admin() -> AdminClient:
    """An admin client of the cluster; keep it while its futures run (freed, it fails them)."""
    return AdminClient(settings.confluent_config())


def test_status_names_three_answering_nodes_and_one_active_controller(cluster: Cluster) -> None:
    assert settings.bootstrap_servers() == cluster.bootstrap  # from the cluster's state file
    status = saga(cluster, "kafka", "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "3 of 3 answering" in status.stdout
    pids = local_broker.running_pids()
    for node in local_broker.cluster_nodes():
        assert re.search(rf"node {node.id}  {node.address}\s+pid {pids[node.id]}\s", status.stdout)
    assert status.stdout.count("active controller") == 1
    controller = local_broker.active_controller()
    assert controller is not None
    assert f"pid {pids[controller]}" in status.stdout.split("active controller")[0].splitlines()[-1]
    # Kafka's own tools reach it too: a dynamic quorum of three voters.
    quorum = saga(cluster, "kafka", "tool", "kafka-metadata-quorum", "describe", "--status")
    assert quorum.returncode == 0, quorum.stderr
    assert len(re.findall(r'"id": \d, "directoryId"', quorum.stdout)) == 3, quorum.stdout


def test_topics_apply_replicates_the_project_topics(cluster: Cluster) -> None:
    applied = saga(cluster, "topics", "apply")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert (
        "environment cluster: replication factor 3, min.insync.replicas 2 "
        "(the local three-broker cluster is started)"
    ) in applied.stdout
    again = saga(cluster, "topics", "apply")
    assert again.returncode == 0, again.stderr
    assert f"{len(topics.load().topics)} topic(s) already as declared" in again.stdout


def test_more_replicas_than_brokers_is_refused_naming_the_topic(
    cluster: Cluster, tmp_path: Path
) -> None:
    spec = tmp_path / "topics.yaml"
    spec.write_text("topics: {test.four-copies: {partitions: 1, replication_factor: 4}}\n")
    refused = saga(cluster, "topics", "apply", "--file", str(spec))
    assert refused.returncode == 1
    assert (
        f"replication factor 4 of test.four-copies (topics.yaml) exceeds the 3 broker(s) "
        f"answering at {cluster.bootstrap}"
    ) in refused.stderr
    assert "test.four-copies" not in admin().list_topics(timeout=10).topics


@pytest.fixture(scope="module")
def orders_on_the_cluster(cluster: Cluster) -> dict[str, str]:
    """One worker of each service runs a few orders on the cluster; their end states."""
    run = uuid.uuid4().hex[:8]
    seeded = catalog.parse(
        f"currency: EUR\nproducts:\n  - {{id: c-{run}-widget, stock: 100, price: '2.50'}}\n"
        f"customers:\n  - {{id: c-{run}-rich, balance: '1000.00'}}\n"
        f"  - {{id: c-{run}-poor, balance: '1.00'}}\n"
    )
    catalog.publish(seeded)
    log_path = cluster.home / "workers.log"
    with log_path.open("a", buffering=1) as log_file:
        base = free_ports(len(SERVICE_NAMES))
        workers = Workers(
            ports={name: base + i for i, name in enumerate(SERVICE_NAMES)},
            env=cluster.env,
            echo=lambda line: log_file.write(line + "\n"),
        )
        began = time.monotonic()
        workers.start()
        try:
            workers.wait_ready(timeout=180)
            report(f"four workers ready in {time.monotonic() - began:.1f} s")
            widget = f"c-{run}-widget"
            requests = place_orders(
                *[(f"c-{run}-rich", [(widget, 2)]) for _ in range(4)],
                (f"c-{run}-poor", [(widget, 1)]),
            )
            finals = wait_terminal(requests)
        finally:
            codes = workers.stop()
    assert all(code in (0, None) for code in codes.values()), codes
    return {r.customer_id + ":" + r.order_id: finals[r.order_id].to_state for r in requests}


def test_one_worker_of_each_service_runs_orders_on_the_cluster(
    orders_on_the_cluster: dict[str, str],
) -> None:
    outcomes = sorted((key.split(":")[0].rsplit("-", 1)[1], state) for key, state in (
        orders_on_the_cluster.items()
    ))  # fmt: skip
    assert outcomes == [("poor", "ORDER_REJECTED")] + [("rich", "ORDER_APPROVED")] * 4


@pytest.mark.usefixtures("orders_on_the_cluster")
def test_every_topic_on_the_cluster_has_three_replicas_and_min_isr_two() -> None:
    """Every topic there is after the workers ran: the project's, the changelogs, Faust's
    own if it made any, and Kafka's (__consumer_offsets)."""
    kafka = admin()
    listed = kafka.list_topics(timeout=10).topics
    names = sorted(listed)
    report(f"{len(names)} topics: {', '.join(names)}")
    assert set(topics.load().topics) | {"__consumer_offsets"} <= set(names)
    for name in names:
        replicas = {len(p.replicas) for p in listed[name].partitions.values()}
        assert replicas == {3}, f"{name}: replicas per partition {replicas}"
    described = kafka.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names])
    min_isr = {res.name: future.result()["min.insync.replicas"].value for res, future in (
        described.items()
    )}  # fmt: skip
    assert min_isr == dict.fromkeys(names, "2")


def test_a_killed_node_leaves_every_topic_writable_and_comes_back_into_every_isr(
    cluster: Cluster,
) -> None:
    # The topic exists before the kill: the victim leads some of its partitions, which
    # must move to a surviving replica (an admin request made after the kill may wait
    # out its own timeout on a client that still routes it to the dead node).
    name = f"test.one-down.{uuid.uuid4().hex[:8]}"
    kafka = admin()
    kafka.create_topics([NewTopic(name, 6)])[name].result(timeout=30)
    victim = local_broker.busiest_leader("saga.replies")
    local_broker.kill_node(victim)
    killed_at = time.monotonic()
    try:
        # Two in-sync replicas are left: acks=all writes go on, to every partition.
        # log_level 0: the refused connections to the dead node are expected.
        producer = client.producer(**{"message.timeout.ms": 30_000, "log_level": 0})
        for partition in range(6):
            producer.produce(name, value=b"acknowledged by two", partition=partition)
        assert producer.flush(40) == 0
        report(
            f"node {victim} killed; 6 partitions written {time.monotonic() - killed_at:.1f} s later"
        )

        down = saga(cluster, "kafka", "status")
        assert down.returncode == 1
        assert re.search(rf"node {victim} .* not running\s+NOT answering", down.stdout), down.stdout
    finally:  # the next tests need the node back, whatever failed here
        answered_in = local_broker.restart_node(victim)
    in_sync_in = local_broker.wait_until_in_every_isr(victim, timeout=90)
    report(f"node {victim} answered {answered_in:.1f} s after its restart, in every ISR "
           f"{in_sync_in:.1f} s later")  # fmt: skip
    assert local_broker.missing_from_isr(victim) == []
    assert saga(cluster, "kafka", "status").returncode == 0


def test_stop_stops_all_three_nodes(cluster: Cluster) -> None:
    pids = local_broker.running_pids()
    assert len(pids) == 3
    report_memory()  # after the workers' orders and a node's restart
    stopped = saga(cluster, "kafka", "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "local Kafka cluster of 3 brokers stopped" in stopped.stdout
    report(stopped.stdout.strip().splitlines()[-1])
    assert local_broker.running_pids() == {}  # reaps the node this process restarted
    assert not [pid for pid in pids.values() if pid_alive(pid)]
    assert not local_broker.cluster_started()
    assert settings.bootstrap_servers() == cluster.bootstrap.split(",")[0]  # single again
    status = saga(cluster, "kafka", "status")
    assert status.returncode == 1
    assert status.stdout.startswith("local Kafka stopped"), status.stdout
