"""The local three-node cluster without starting a JVM: its settings, the quorum's format
command line, which Kafka the clients are given, and every refusal."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from messaging import local_broker, settings, topics
from tests.ports import cluster_port

BASE = 21092


def properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty SAGA_HOME, the local Kafka on BASE, no external cluster."""
    monkeypatch.setenv("SAGA_HOME", str(tmp_path))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("SAGA_ENV", raising=False)
    monkeypatch.setattr("messaging.settings.LOCAL_BROKER_PORT", BASE)
    return tmp_path


def mark_cluster_started(nodes: list[local_broker.Node]) -> None:
    settings.local_cluster_file().parent.mkdir(parents=True, exist_ok=True)
    settings.local_cluster_file().write_text(local_broker.bootstrap_of(nodes) + "\n")


@pytest.mark.usefixtures("home")
def test_a_cluster_node_gets_its_ports_and_the_replicated_settings() -> None:
    nodes = local_broker.layout(3)
    assert [(n.id, n.port, n.controller_port) for n in nodes] == [
        (1, 21092, 21093), (2, 21094, 21095), (3, 21096, 21097),
    ]  # fmt: skip
    rendered = properties(local_broker.render_properties(nodes[1], nodes))
    assert rendered["node.id"] == "2"
    assert rendered["process.roles"] == "broker,controller"
    assert rendered["listeners"] == "PLAINTEXT://127.0.0.1:21094,CONTROLLER://127.0.0.1:21095"
    assert rendered["log.dirs"] == str(nodes[1].files.data)
    assert nodes[1].files.data.parts[-3:] == ("cluster", "node-2", "data")
    # A dynamic quorum: every controller is listed for bootstrapping, no static voters.
    assert rendered["controller.quorum.bootstrap.servers"] == (
        "127.0.0.1:21093,127.0.0.1:21095,127.0.0.1:21097"
    )
    assert "controller.quorum.voters" not in rendered
    replicated = {
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
        "unclean.leader.election.enable": "false",
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
        "share.coordinator.state.topic.replication.factor": "3",
        "share.coordinator.state.topic.min.isr": "2",
        "broker.session.timeout.ms": "2000",
        "broker.heartbeat.interval.ms": "500",
        "controller.quorum.fetch.timeout.ms": "1000",
        "auto.create.topics.enable": "false",
    }
    assert {key: rendered.get(key) for key in replicated} == replicated


@pytest.mark.usefixtures("home")
def test_the_single_broker_keeps_its_layout_and_static_quorum() -> None:
    [node] = local_broker.layout(1)
    assert node.files.root == settings.local_home() / "kafka"  # where earlier releases put it
    assert node.files.data == settings.local_home() / "kafka" / "data"
    rendered = properties(local_broker.render_properties(node, [node]))
    assert rendered["controller.quorum.voters"] == "1@127.0.0.1:21093"
    assert rendered["offsets.topic.replication.factor"] == "1"
    assert "controller.quorum.bootstrap.servers" not in rendered


@pytest.mark.usefixtures("home")
def test_both_templates_agree_beyond_the_quorum_and_replication() -> None:
    [single] = local_broker.layout(1)
    cluster = local_broker.layout(3)
    one = properties(local_broker.render_properties(single, [single]))
    three = properties(local_broker.render_properties(cluster[0], cluster))
    differ = {
        "controller.quorum.voters", "controller.quorum.bootstrap.servers",
        "advertised.listeners", "log.dirs",
        "offsets.topic.replication.factor", "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor",
        "share.coordinator.state.topic.min.isr", "default.replication.factor",
        "min.insync.replicas", "unclean.leader.election.enable",
        "broker.session.timeout.ms", "broker.heartbeat.interval.ms",
        "controller.quorum.fetch.timeout.ms",
    }  # fmt: skip
    assert {k: v for k, v in one.items() if k not in differ} == {
        k: v for k, v in three.items() if k not in differ
    }


@pytest.mark.usefixtures("home")
def test_the_cluster_is_formatted_with_all_three_initial_controllers() -> None:
    nodes = local_broker.layout(3)
    quorum = local_broker.Quorum("CLUSTERID", BASE, {1: "DIR1", 2: "DIR2", 3: "DIR3"})
    arguments = local_broker.format_arguments(nodes[2], nodes, quorum)
    assert arguments == [
        "format", "-t", "CLUSTERID", "-c", str(nodes[2].files.properties),
        "--initial-controllers",
        "1@127.0.0.1:21093:DIR1,2@127.0.0.1:21095:DIR2,3@127.0.0.1:21097:DIR3",
    ]  # fmt: skip
    [single] = local_broker.layout(1)
    assert local_broker.format_arguments(single, [single], quorum) == [
        "format", "-t", "CLUSTERID", "-c", str(single.files.properties), "-g",
    ]  # fmt: skip


def test_kafka_uuids_are_what_random_uuid_prints() -> None:
    ids = [local_broker.kafka_uuid() for _ in range(500)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        assert len(text) == 22 and not text.startswith("-")
        assert len(base64.urlsafe_b64decode(text + "==")) == 16


@pytest.mark.parametrize(
    ("brokers", "message"),
    [
        (0, "--brokers 0: Kafka needs at least one broker"),
        (-1, "--brokers -1: Kafka needs at least one broker"),
        (2, "--brokers 2: the local Kafka runs 1 broker or a cluster of 3"),
        (4, "--brokers 4: the local Kafka runs 1 broker or a cluster of 3"),
    ],
)
def test_unsupported_broker_counts_are_refused(brokers: int, message: str) -> None:
    with pytest.raises(local_broker.BrokerError, match=message):
        local_broker.check_broker_count(brokers)


def test_start_with_zero_brokers_is_a_usage_error_that_starts_nothing(home: Path) -> None:
    result = CliRunner().invoke(cli, ["kafka", "start", "--brokers", "0"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--brokers': Kafka needs at least one broker" in result.output
    assert not (home / "kafka").exists()


@pytest.mark.usefixtures("home")
def test_cluster_ports_stay_below_the_ephemeral_range() -> None:
    assert local_broker.layout(3, 32762)[-1].controller_port == 32767
    with pytest.raises(local_broker.BrokerError, match="reach Linux's ephemeral range"):
        local_broker.layout(3, 32763)


@pytest.mark.usefixtures("home")
def test_every_client_gets_every_node_while_the_cluster_is_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings.bootstrap_servers() == "127.0.0.1:21092"
    assert topics.chosen_environment().name == "single"
    mark_cluster_started(local_broker.layout(3))
    every_node = "127.0.0.1:21092,127.0.0.1:21094,127.0.0.1:21096"
    assert settings.bootstrap_servers() == every_node
    assert settings.confluent_config()["bootstrap.servers"] == every_node
    assert topics.chosen_environment().name == "cluster"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "elsewhere:9092")  # still overrides all
    assert settings.bootstrap_servers() == "elsewhere:9092"


@pytest.fixture
def fake_single_broker(home: Path) -> Iterator[int]:
    """A process whose command line is the single broker's, with its pid file."""
    [node] = local_broker.layout(1)
    node.files.root.mkdir(parents=True)
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka",
         str(node.files.properties)],
    )  # fmt: skip
    node.files.pid.write_text(str(process.pid))
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    while b"kafka.Kafka" not in cmdline.read_bytes():  # empty for a moment after the exec
        time.sleep(0.01)
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def test_a_cluster_is_not_started_beside_the_single_broker(fake_single_broker: int) -> None:
    assert local_broker.running_pid() == fake_single_broker
    result = CliRunner().invoke(cli, ["kafka", "start", "--brokers", "3"])
    assert result.exit_code == 1
    assert (
        f"the local single broker runs (pid {fake_single_broker}): stop it first with "
        "`saga kafka stop` (its data is kept), then `saga kafka start --brokers 3`"
    ) in result.output
    assert not local_broker.paths().cluster.exists()


@pytest.mark.usefixtures("home")
def test_the_single_broker_is_not_started_while_the_cluster_is() -> None:
    mark_cluster_started(local_broker.layout(3))
    result = CliRunner().invoke(cli, ["kafka", "start", "--brokers", "1"])
    assert result.exit_code == 1
    assert "a local cluster of 3 brokers is started here: stop it first" in result.output
    assert not local_broker.paths().single.properties.exists()


@pytest.mark.usefixtures("home")
def test_a_formatted_cluster_cannot_move_to_other_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = local_broker.layout(3)
    local_broker.paths().cluster.mkdir(parents=True)
    local_broker.paths().quorum.write_text(
        json.dumps({"cluster_id": "C", "base_port": BASE, "directory_ids": {"1": "a"}})
    )
    monkeypatch.setattr("messaging.settings.LOCAL_BROKER_PORT", BASE + 1000)
    with pytest.raises(local_broker.BrokerError, match=f"set SAGA_KAFKA_PORT={BASE}, or delete"):
        local_broker.start(3)
    assert all(not node.files.root.exists() for node in nodes)


@pytest.mark.usefixtures("home")
def test_a_node_that_lost_its_data_is_not_formatted_alone() -> None:
    nodes = local_broker.layout(3)
    local_broker.paths().cluster.mkdir(parents=True)
    local_broker.paths().quorum.write_text(
        json.dumps({"cluster_id": "C", "base_port": BASE, "directory_ids": {"1": "a", "2": "b"}})
    )
    for node in nodes:
        if node.id != 2:
            node.files.data.mkdir(parents=True)
            (node.files.data / "meta.properties").write_text("node.id=1\n")
    with pytest.raises(local_broker.BrokerError, match=r"node\(s\) 2 of the local cluster lost"):
        local_broker.format_storage(nodes)


def test_the_active_controller_is_read_from_the_quorum_status() -> None:
    status = (
        "ClusterId:              goHnODISRCukTvRf7_dwcA\n"
        "LeaderId:               2\n"
        "LeaderEpoch:            1\n"
        "HighWatermark:          32\n"
        'CurrentVoters:          [{"id": 1, "directoryId": "sL8QR6nzR3aq0CgpKIhDnw"}]\n'
    )
    assert local_broker.quorum_leader(status) == 2
    no_leader = status.replace("LeaderId:               2", "LeaderId:               -1")
    assert local_broker.quorum_leader(no_leader) is None
    assert local_broker.quorum_leader("Error: timed out") is None


@pytest.mark.parametrize(("excluding", "chosen"), [(None, 2), (2, 3), (3, 2), (1, 2)], ids=str)
def test_the_busiest_leader_is_chosen_among_the_nodes_not_excluded(
    monkeypatch: pytest.MonkeyPatch, excluding: int | None, chosen: int
) -> None:
    counts = Counter({2: 2, 3: 2, 1: 0})  # a tie: the lower id; node 1 leads nothing
    monkeypatch.setattr(local_broker, "leader_counts", lambda _topic: counts)
    monkeypatch.setattr(local_broker, "current_nodes", lambda: local_broker.layout(3))
    assert local_broker.busiest_leader("saga.replies", excluding=excluding) == chosen


def test_a_node_that_leads_nothing_is_chosen_when_the_leaders_are_excluded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local_broker, "leader_counts", lambda _topic: Counter({1: 4}))
    monkeypatch.setattr(local_broker, "current_nodes", lambda: local_broker.layout(3))
    assert local_broker.busiest_leader("saga.replies", excluding=1) == 2


def test_status_of_a_started_cluster_names_every_node(home: Path) -> None:
    nodes = local_broker.layout(3, cluster_port())
    local_broker.paths().cluster.mkdir(parents=True)
    local_broker.paths().quorum.write_text(
        json.dumps(
            {
                "cluster_id": "C",
                "base_port": nodes[0].port,
                "directory_ids": {"1": "a", "2": "b", "3": "c"},
            }
        )
    )
    mark_cluster_started(nodes)
    result = CliRunner().invoke(cli, ["kafka", "status"])
    assert result.exit_code == 1, result.output
    assert f"local Kafka cluster of 3 brokers at {local_broker.bootstrap_of(nodes)}" in (
        result.output
    )
    for node in nodes:
        assert f"node {node.id}  {node.address}" in result.output
    assert result.output.count("not running") == 3
    assert "0 of 3 answering" in result.output


@pytest.mark.usefixtures("home")
def test_logs_of_a_cluster_are_prefixed_by_node_and_can_be_chosen() -> None:
    nodes = local_broker.layout(3)
    mark_cluster_started(nodes)
    for node in nodes:
        node.files.root.mkdir(parents=True, exist_ok=True)
        node.files.log.write_text(f"line of node {node.id}\n")
    every = CliRunner().invoke(cli, ["kafka", "logs"])
    assert every.exit_code == 0, every.output
    assert every.output.splitlines() == [f"node {n} | line of node {n}" for n in (1, 2, 3)]
    one = CliRunner().invoke(cli, ["kafka", "logs", "--node", "2"])
    assert one.output.splitlines() == ["line of node 2"]
    missing = CliRunner().invoke(cli, ["kafka", "logs", "--node", "4"])
    assert missing.exit_code == 2
    assert "no node 4: the local Kafka cluster of 3 brokers has nodes 1-3" in missing.output


@pytest.mark.usefixtures("home")
def test_stopping_a_crashed_cluster_hands_clients_back_to_the_single_broker() -> None:
    mark_cluster_started(local_broker.layout(3))
    result = CliRunner().invoke(cli, ["kafka", "stop"])
    assert result.exit_code == 0
    assert "local Kafka cluster of 3 brokers is not running" in result.output
    assert not local_broker.cluster_started()
    assert settings.bootstrap_servers() == f"127.0.0.1:{BASE}"


def test_tools_keep_a_bootstrap_controller_given_to_them() -> None:
    args = ["--bootstrap-controller", "127.0.0.1:21093", "describe", "--status"]
    assert not local_broker.tool_uses_configured_cluster("kafka-metadata-quorum", args)
    assert local_broker.tool_uses_configured_cluster("kafka-metadata-quorum", ["describe"])
