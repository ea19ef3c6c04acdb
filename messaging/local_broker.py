"""A real Apache Kafka (KRaft) run from Maven Central jars, for development: one broker,
or a cluster of three on loopback (`saga kafka start --brokers 3`).

Layout under `.local/kafka/` (git-ignored):
  lib/                 the broker + console tools classpath (fetched once by Maven)
  data/                the single broker's log.dirs; formatted on first start, survives
                       stop/start (this layout predates the cluster and is kept as it was)
  server.properties    rendered from dev/kafka/server.properties
  broker.log           the broker's log4j2 output
  broker.pid           pid of the running JVM
  cluster/             the three-node cluster, apart from the single broker's data
    quorum.json        cluster id, ports and metadata directory ids, written once every
                       node is formatted
    started            the cluster's bootstrap list, from `start` to `stop`: while it
                       exists every client connects to the cluster (settings.py)
    node-N/            node N's data/, server.properties (from dev/kafka/cluster-node.properties),
                       broker.log, broker.out and broker.pid, as above

Node N listens on SAGA_KAFKA_PORT + 2(N-1) and its controller on the port after it, so node 1
takes the single broker's ports: the two never run at the same time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from messaging import settings

DEV_KAFKA = settings.PROJECT_ROOT / "dev" / "kafka"
CONTROLLER_PORT_OFFSET = 1  # controller listens on broker port + 1
PORTS_PER_NODE = 2  # broker and controller
SUPPORTED_BROKER_COUNTS = (1, 3)
# Linux hands ports from here on to outgoing connections: a cluster node reconnecting to a
# stopped peer on such a port can connect to itself and exit (measured, see KAFKA.md).
EPHEMERAL_PORTS_START = 32768

SINGLE_BROKER_HEAP = ["-Xms256m", "-Xmx768m"]
CLUSTER_NODE_HEAP = ["-Xms128m", "-Xmx320m"]  # three on one machine
TOOL_JVM = ["-Xms128m", "-Xmx256m", "-XX:TieredStopAtLevel=1"]  # short-lived: start fast

# Console tools by their usual script name (main classes of Kafka 4.x).
TOOLS = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-configs": "kafka.admin.ConfigCommand",
    "kafka-get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "kafka-log-dirs": "org.apache.kafka.tools.LogDirsCommand",
    "kafka-metadata-quorum": "org.apache.kafka.tools.MetadataQuorumCommand",
    "kafka-storage": "kafka.tools.StorageTool",
}


_Log = Callable[[str], None]


class BrokerError(RuntimeError):
    """The local broker could not be set up, started or reached."""


@dataclass(frozen=True)
class NodeFiles:
    """Where one broker JVM keeps its data, rendered settings, log and pid."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def log(self) -> Path:
        return self.root / "broker.log"

    @property
    def stdout(self) -> Path:
        return self.root / "broker.out"

    @property
    def pid(self) -> Path:
        return self.root / "broker.pid"


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def lib_stamp(self) -> Path:
        return self.lib / ".pom-sha256"

    @property
    def single(self) -> NodeFiles:
        return NodeFiles(self.home)

    @property
    def cluster(self) -> Path:
        return self.home / "cluster"

    @property
    def quorum(self) -> Path:
        return self.cluster / "quorum.json"

    def node(self, node_id: int) -> NodeFiles:
        return NodeFiles(self.cluster / f"node-{node_id}")


def paths() -> Paths:
    return Paths(settings.local_home() / "kafka")


@dataclass(frozen=True)
class Node:
    """One broker+controller JVM of the local Kafka."""

    id: int
    port: int
    files: NodeFiles

    @property
    def controller_port(self) -> int:
        return self.port + CONTROLLER_PORT_OFFSET

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def check_broker_count(brokers: int) -> None:
    if brokers < 1:
        raise BrokerError(
            f"--brokers {brokers}: Kafka needs at least one broker; "
            "run 1 (the default) or 3 (a replicated cluster)"
        )
    if brokers not in SUPPORTED_BROKER_COUNTS:
        raise BrokerError(
            f"--brokers {brokers}: the local Kafka runs 1 broker or a cluster of 3 "
            "(replication factor 3, min.insync.replicas 2: one node may fail), "
            f"not {brokers}"
        )


def layout(brokers: int, base_port: int | None = None) -> list[Node]:
    """The nodes of a local Kafka of `brokers` brokers from `base_port` (SAGA_KAFKA_PORT)."""
    check_broker_count(brokers)
    base = settings.LOCAL_BROKER_PORT if base_port is None else base_port
    if brokers == 1:
        return [Node(1, base, paths().single)]
    nodes = [
        Node(n, base + PORTS_PER_NODE * (n - 1), paths().node(n)) for n in range(1, brokers + 1)
    ]
    if nodes[-1].controller_port >= EPHEMERAL_PORTS_START:
        raise BrokerError(
            f"a cluster of {brokers} brokers from port {base} needs ports {base}-"
            f"{nodes[-1].controller_port}, which reach Linux's ephemeral range (from "
            f"{EPHEMERAL_PORTS_START}): a node could connect to itself while a peer is down. "
            f"Set SAGA_KAFKA_PORT below {EPHEMERAL_PORTS_START - PORTS_PER_NODE * brokers}"
        )
    return nodes


def cluster_started() -> bool:
    """Whether a local cluster was started here and not stopped (it may have crashed)."""
    return settings.local_cluster_file().exists()


def cluster_nodes() -> list[Node]:
    """The cluster's nodes, on the ports it was formatted for (else from SAGA_KAFKA_PORT)."""
    quorum = read_quorum()
    if quorum is None:
        return layout(3)
    return layout(len(quorum.directory_ids), quorum.base_port)


def current_nodes() -> list[Node]:
    """The nodes of the local Kafka: the cluster while it is started, else the single broker."""
    return cluster_nodes() if cluster_started() else layout(1)


def recent_nodes() -> list[Node]:
    """The nodes of the local Kafka that is started, else of the one that logged last."""
    if cluster_started():
        return cluster_nodes()
    single = layout(1)
    if not paths().quorum.exists():
        return single
    cluster = cluster_nodes()

    def last_logged(nodes: list[Node]) -> float:
        return max((n.files.log.stat().st_mtime for n in nodes if n.files.log.exists()), default=0)

    return cluster if last_logged(cluster) > last_logged(single) else single


def describe(nodes: Sequence[Node]) -> str:
    return "local Kafka" if len(nodes) == 1 else f"local Kafka cluster of {len(nodes)} brokers"


def bootstrap_of(nodes: Sequence[Node]) -> str:
    return ",".join(node.address for node in nodes)


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate and candidate.exists():
        return str(candidate)
    found = shutil.which("java")
    if not found:
        raise BrokerError("java not found: Kafka 4.x needs Java 17+ on PATH or in JAVA_HOME")
    return found


def _pom_digest() -> str:
    return hashlib.sha256((DEV_KAFKA / "pom.xml").read_bytes()).hexdigest()


def ensure_jars(log: _Log = print) -> Path:
    """Fetch the broker and tools classpath with Maven, once per version of dev/kafka/pom.xml."""
    p = paths()
    digest = _pom_digest()
    if p.lib_stamp.exists() and p.lib_stamp.read_text().strip() == digest:
        return p.lib
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError("mvn not found: Maven is needed once to fetch the Kafka jars")
    log(f"fetching Kafka jars with Maven into {p.lib} (once)")
    if p.lib.exists():
        shutil.rmtree(p.lib)
    command = [
        mvn, "-q", "-B", "-f", str(DEV_KAFKA / "pom.xml"),
        "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-DoutputDirectory={p.lib}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"Maven failed to fetch the Kafka jars:\n{result.stdout}{result.stderr}")
    p.lib_stamp.write_text(digest)
    return p.lib


def _classpath() -> str:
    return str(paths().lib / "*")


# ---- settings and storage of the nodes ----


def render_properties(node: Node, nodes: Sequence[Node]) -> str:
    """The server.properties of `node` in a local Kafka of `nodes`."""
    if len(nodes) == 1:
        template = (DEV_KAFKA / "server.properties").read_text()
        return template.format(
            port=node.port, controller_port=node.controller_port, data_dir=node.files.data
        )
    template = (DEV_KAFKA / "cluster-node.properties").read_text()
    return template.format(
        node_id=node.id,
        port=node.port,
        controller_port=node.controller_port,
        data_dir=node.files.data,
        quorum_bootstrap_servers=",".join(f"127.0.0.1:{n.controller_port}" for n in nodes),
    )


def kafka_uuid() -> str:
    """A random Kafka Uuid as `kafka-storage random-uuid` prints it (16 random bytes in
    URL-safe base64, unpadded) without a JVM start for each. Like Kafka's own, it never
    starts with '-', which a command line would take for an option."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass(frozen=True)
class Quorum:
    """What a cluster's nodes were formatted with; their ports cannot change afterwards
    (the voters' controller endpoints are in the metadata log)."""

    cluster_id: str
    base_port: int
    directory_ids: dict[int, str]  # node id -> its metadata log directory id

    @classmethod
    def new(cls, nodes: Sequence[Node]) -> Quorum:
        return cls(kafka_uuid(), nodes[0].port, {node.id: kafka_uuid() for node in nodes})

    def initial_controllers(self, nodes: Sequence[Node]) -> str:
        """The voters, as `kafka-storage format --initial-controllers` takes them."""
        return ",".join(
            f"{n.id}@127.0.0.1:{n.controller_port}:{self.directory_ids[n.id]}" for n in nodes
        )


def read_quorum() -> Quorum | None:
    try:
        raw = json.loads(paths().quorum.read_text())
    except FileNotFoundError:
        return None
    ids = {int(node_id): directory for node_id, directory in raw["directory_ids"].items()}
    return Quorum(raw["cluster_id"], int(raw["base_port"]), ids)


def format_arguments(node: Node, nodes: Sequence[Node], quorum: Quorum) -> list[str]:
    """Arguments of `kafka-storage` that format `node`'s storage.

    The single broker keeps its static `controller.quorum.voters` (data formatted by earlier
    releases must keep starting); the cluster gets the dynamic quorum Kafka 4.1 recommends,
    all three voters written at format time.
    """
    arguments = ["format", "-t", quorum.cluster_id, "-c", str(node.files.properties)]
    if len(nodes) == 1:
        return [*arguments, "-g"]  # -g: already formatted is fine
    return [*arguments, "--initial-controllers", quorum.initial_controllers(nodes)]


def formatted(node: Node) -> bool:
    return (node.files.data / "meta.properties").exists()


def format_storage(nodes: Sequence[Node]) -> None:
    """Format what is not formatted yet; a cluster all at once, or not at all."""
    recorded = read_quorum() if len(nodes) > 1 else None
    if recorded is not None:
        lost = [node for node in nodes if not formatted(node)]
        if lost:
            raise BrokerError(
                f"node(s) {', '.join(str(n.id) for n in lost)} of the local cluster lost their "
                f"data ({lost[0].files.data}); a node with new storage is no voter of the "
                f"quorum. Delete {paths().cluster} to create a new cluster (its topics are lost)"
            )
        return
    if len(nodes) == 1 and formatted(nodes[0]):
        return
    quorum = Quorum.new(nodes)
    for node in nodes:  # a cluster's format cut short: start over
        shutil.rmtree(node.files.data, ignore_errors=True)
    formats = [
        subprocess.Popen(
            _tool_java_command(TOOLS["kafka-storage"], format_arguments(node, nodes, quorum)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in nodes
    ]  # in parallel: a JVM start each
    for process in formats:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise BrokerError(f"formatting Kafka storage failed:\n{output}")
    if len(nodes) > 1:
        paths().quorum.write_text(
            json.dumps(
                {
                    "cluster_id": quorum.cluster_id,
                    "base_port": quorum.base_port,
                    "directory_ids": {str(k): v for k, v in quorum.directory_ids.items()},
                },
                indent=2,
            )
        )


def _tool_java_command(main_class: str, args: Sequence[str]) -> list[str]:
    return [
        _java(), *TOOL_JVM,
        f"-Dlog4j2.configurationFile={DEV_KAFKA / 'tools-log4j2.properties'}",
        "-cp", _classpath(), main_class, *args,
    ]  # fmt: skip


def broker_java_command(node: Node, nodes: Sequence[Node]) -> list[str]:
    heap = SINGLE_BROKER_HEAP if len(nodes) == 1 else CLUSTER_NODE_HEAP
    return [
        _java(), *heap,
        f"-Dlog4j2.configurationFile={DEV_KAFKA / 'log4j2.properties'}",
        f"-Dkafka.log.file={node.files.log}",
        "-cp", _classpath(), "kafka.Kafka", str(node.files.properties),
    ]  # fmt: skip


# ---- processes ----

# JVMs this process started, reaped by node_pid once they exit (else they stay zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}


def node_pid(node: Node) -> int | None:
    """Pid of the node's JVM if it is alive."""
    try:
        pid = int(node.files.pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    child = _children.get(pid)
    if child is not None and child.poll() is not None:  # started here and exited: reaped
        del _children[pid]
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    try:  # a recycled pid must be this node's broker: check the command line
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    ours = b"kafka.Kafka" in cmdline and str(node.files.properties).encode() in cmdline
    return pid if ours else None


def running_pid() -> int | None:
    """Pid of the first node of the local Kafka if it is alive (the single broker's)."""
    return node_pid(current_nodes()[0])


def running_pids() -> dict[int, int]:
    """Node id -> pid of every live node of the local Kafka."""
    return {node.id: pid for node in current_nodes() if (pid := node_pid(node)) is not None}


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _addresses(bootstrap: str) -> list[tuple[str, int]]:
    hosts = [entry.strip().rpartition(":") for entry in bootstrap.split(",")]
    return [(host, int(port)) for host, _, port in hosts]


def _admin(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    # log_level 0: a refused connection is the answer, not librdkafka lines on stderr.
    return AdminClient(settings.confluent_config(log_level=0, **{"bootstrap.servers": bootstrap}))


def answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a metadata request to the cluster succeeds."""
    local = bootstrap == settings.bootstrap_servers() and not settings.external_bootstrap()
    if local and not any(port_open(h, p) for h, p in _addresses(bootstrap)):
        return False  # fail fast: no client timeout
    try:
        return bool(_admin(bootstrap).list_topics(timeout=timeout).brokers)
    except Exception:
        return False


def node_answers(node: Node, timeout: float = 2.0) -> bool:
    """True when the node answers a metadata request and is a live broker in it."""
    if not port_open("127.0.0.1", node.port):
        return False
    try:
        return node.id in _admin(node.address).list_topics(timeout=timeout).brokers
    except Exception:
        return False


def _launch(node: Node, nodes: Sequence[Node]) -> subprocess.Popen[bytes]:
    node.files.root.mkdir(parents=True, exist_ok=True)
    with node.files.stdout.open("ab") as out:
        process = subprocess.Popen(
            broker_java_command(node, nodes),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI that started it
        )
    node.files.pid.write_text(str(process.pid))
    _children[process.pid] = process
    return process


def _check_ports_free(nodes: Sequence[Node]) -> None:
    for node in nodes:
        for port in (node.port, node.controller_port):
            if port_open("127.0.0.1", port):
                owner = "" if node.files == paths().single else f" (node {node.id})"
                raise BrokerError(
                    f"port {port}{owner} is taken by another process; set SAGA_KAFKA_PORT"
                )


def _named(nodes: Sequence[Node]) -> str:
    """'the broker' for the single broker, else 'node 2' or 'nodes 1, 3'."""
    if [node.files for node in nodes] == [paths().single]:
        return "the broker"
    ids = ", ".join(str(node.id) for node in nodes)
    return f"node {ids}" if len(nodes) == 1 else f"nodes {ids}"


def _wait_until_answering(
    nodes: Sequence[Node], launched: dict[int, subprocess.Popen[bytes]], timeout: float
) -> None:
    """Wait until every node answers as a live broker; fail at once if one exits."""
    deadline = time.monotonic() + timeout
    waiting = list(nodes)
    while True:
        for node in waiting:
            process = launched.get(node.id)
            exited = process.poll() is not None if process else node_pid(node) is None
            if exited:
                raise BrokerError(
                    f"{_named([node])} exited during start-up; see {node.files.log}\n"
                    + tail_log(node, 30)
                )
        waiting = [node for node in waiting if not node_answers(node)]
        if not waiting:
            return
        if time.monotonic() > deadline:
            logs = ", ".join(str(node.files.log) for node in waiting)
            raise BrokerError(f"{_named(waiting)} did not answer within {timeout:.0f}s; see {logs}")
        time.sleep(0.5)


def _brokers_to_start(requested: int | None) -> int:
    """How many brokers to run: as asked, else the cluster while it is started, else one.
    The single broker and the cluster never run together (node 1 takes the same ports)."""
    started = cluster_started()
    if requested is None:
        return len(cluster_nodes()) if started else 1
    check_broker_count(requested)
    if requested == 1 and started:
        raise BrokerError(
            f"a local cluster of {len(cluster_nodes())} brokers is started here: stop it "
            "first with `saga kafka stop` (its data is kept), or run `saga kafka start` "
            "without --brokers to keep using it"
        )
    single_pid = node_pid(layout(1)[0])
    if requested > 1 and single_pid is not None:
        raise BrokerError(
            f"the local single broker runs (pid {single_pid}): stop it first with "
            f"`saga kafka stop` (its data is kept), then `saga kafka start --brokers {requested}`"
        )
    return requested


def _nodes_to_start(brokers: int) -> list[Node]:
    if brokers == 1:
        return layout(1)
    nodes = layout(brokers)
    quorum = read_quorum()
    if quorum is None:
        return nodes
    if quorum.base_port != nodes[0].port or len(quorum.directory_ids) != brokers:
        raise BrokerError(
            f"the local cluster was created with {len(quorum.directory_ids)} brokers from "
            f"port {quorum.base_port} (SAGA_KAFKA_PORT={quorum.base_port}), and its nodes "
            f"cannot move: set SAGA_KAFKA_PORT={quorum.base_port}, or delete "
            f"{paths().cluster} to create a new cluster (its topics are lost)"
        )
    return nodes


def start(brokers: int | None = None, timeout: float = 120.0, log: _Log = print) -> str:
    """Start the local Kafka (one broker, or `brokers` nodes) unless it runs; return its
    bootstrap list. Without `brokers`: the cluster if one is started here, else one broker."""
    external = settings.external_bootstrap()
    if external:
        if brokers is not None:
            raise BrokerError(
                f"KAFKA_BOOTSTRAP_SERVERS={external} names an external cluster: "
                "--brokers is for the local Kafka (unset KAFKA_BOOTSTRAP_SERVERS to run it)"
            )
        if not answers(external, timeout=10):
            raise BrokerError(f"KAFKA_BOOTSTRAP_SERVERS={external} does not answer")
        log(f"using the existing cluster at {external} (KAFKA_BOOTSTRAP_SERVERS)")
        return external
    nodes = _nodes_to_start(_brokers_to_start(brokers))
    bootstrap = bootstrap_of(nodes)
    name = describe(nodes)
    running = {node.id: pid for node in nodes if (pid := node_pid(node)) is not None}
    if len(running) == len(nodes) and all(node_answers(node) for node in nodes):
        pids = ", ".join(str(pid) for pid in running.values())
        log(f"{name} already running (pid{'s' if len(nodes) > 1 else ''} {pids}) at {bootstrap}")
        return bootstrap
    began = time.monotonic()
    missing = [node for node in nodes if node.id not in running]
    launched = {}
    if missing:
        _check_ports_free(missing)
        ensure_jars(log)
        for node in missing:
            node.files.root.mkdir(parents=True, exist_ok=True)
            node.files.properties.write_text(render_properties(node, nodes))
        format_storage(nodes)
        if len(nodes) > 1:  # from now on every client is given every node
            settings.local_cluster_file().write_text(bootstrap + "\n")
        for node in missing:
            launched[node.id] = _launch(node, nodes)
        if len(nodes) == 1:
            log(f"starting {name} (pid {launched[1].pid}), data in {nodes[0].files.data}")
        else:
            pids = ", ".join(f"node {n.id}: pid {launched[n.id].pid}" for n in missing)
            log(f"starting {name} ({pids}), data in {paths().cluster}")
    _wait_until_answering(nodes, launched, timeout)
    took = f" ({time.monotonic() - began:.1f} s)" if len(nodes) > 1 else ""
    log(f"{name} is up at {bootstrap}{took}")
    return bootstrap


def _terminate(running: dict[Node, int], timeout: float, log: _Log) -> None:
    """SIGTERM every node at once, SIGKILL those still running after `timeout` seconds."""
    for pid in running.values():
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = dict(running)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = {node: pid for node, pid in alive.items() if node_pid(node) is not None}
    for node, pid in alive.items():
        log(f"node {node.id} (pid {pid}) did not stop in {timeout:.0f}s; killing it")
        os.kill(pid, signal.SIGKILL)
        while node_pid(node) is not None:
            time.sleep(0.1)


def stop(timeout: float = 60.0, log: _Log = print) -> bool:
    """Stop the local Kafka cleanly (SIGTERM, then SIGKILL after `timeout`); data is kept.

    A cluster's nodes get SIGTERM together: stopped one after another, the last one
    waits for a quorum that is gone and hangs.
    """
    nodes = current_nodes()
    running = {node: pid for node in nodes if (pid := node_pid(node)) is not None}
    began = time.monotonic()
    if running:
        _terminate(running, timeout, log)
    for node in nodes:
        node.files.pid.unlink(missing_ok=True)
    settings.local_cluster_file().unlink(missing_ok=True)
    if not running:
        log(f"{describe(nodes)} is not running")
        return False
    listed = ", ".join(str(pid) for pid in running.values())
    if len(nodes) == 1:
        log(f"local Kafka stopped (pid {listed})")
    else:
        took = time.monotonic() - began
        log(f"{describe(nodes)} stopped (pids {listed}) in {took:.1f} s; data kept")
    return True


# ---- one node of the cluster (failure tests) ----


def _node(node_id: int) -> Node:
    nodes = current_nodes()
    for node in nodes:
        if node.id == node_id:
            return node
    raise BrokerError(f"no node {node_id}: the {describe(nodes)} has nodes 1-{len(nodes)}")


def kill_node(node_id: int) -> int:
    """SIGKILL one node (a crash); returns its pid."""
    node = _node(node_id)
    pid = node_pid(node)
    if pid is None:
        raise BrokerError(f"node {node_id} is not running")
    os.kill(pid, signal.SIGKILL)
    while node_pid(node) is not None:
        time.sleep(0.05)
    return pid


def restart_node(node_id: int, timeout: float = 90.0) -> float:
    """Start one node again (stopping it first if it runs); returns the seconds from its
    start until it answers as a live broker."""
    node, nodes = _node(node_id), current_nodes()
    pid = node_pid(node)
    if pid is not None:
        _terminate({node: pid}, timeout=30.0, log=lambda _line: None)
    _check_ports_free([node])
    began = time.monotonic()
    launched = {node.id: _launch(node, nodes)}
    _wait_until_answering([node], launched, timeout)
    return time.monotonic() - began


def active_controller(timeout: float = 30.0) -> int | None:
    """Node id of the active controller (the metadata quorum's leader), or None if the
    quorum does not say in time. Asked through Kafka's metadata quorum tool: in KRaft a
    broker names a random live broker as "controller" in metadata and DescribeCluster."""
    command = _tool_java_command(
        TOOLS["kafka-metadata-quorum"],
        ["--bootstrap-server", settings.bootstrap_servers(), "describe", "--status"],
    )
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return quorum_leader(result.stdout) if result.returncode == 0 else None


def quorum_leader(status: str) -> int | None:
    """The LeaderId of `kafka-metadata-quorum describe --status` output (None: no leader)."""
    found = re.search(r"^LeaderId:\s*(-?\d+)\s*$", status, re.MULTILINE)
    leader = int(found.group(1)) if found else -1
    return leader if leader >= 0 else None


def leader_counts(topic: str, timeout: float = 10.0) -> Counter[int]:
    """How many partitions of `topic` each node leads."""
    metadata = _admin(settings.bootstrap_servers()).list_topics(topic, timeout=timeout)
    partitions = metadata.topics[topic].partitions.values()
    return Counter(p.leader for p in partitions if p.leader >= 0)


def busiest_leader(topic: str, excluding: int | None = None) -> int:
    """The node that leads the most partitions of `topic` (the lowest id on a tie), of the
    nodes other than `excluding` (which may lead none)."""
    counts = leader_counts(topic)
    if not counts:
        raise BrokerError(f"no partition of {topic} has a leader")
    candidates = ({node.id for node in current_nodes()} | set(counts)) - {excluding}
    if not candidates:
        raise BrokerError(f"no node but {excluding} to choose among")
    return min(candidates, key=lambda node_id: (-counts[node_id], node_id))


def missing_from_isr(node_id: int, timeout: float = 10.0) -> list[str]:
    """Partitions (of every topic, Kafka's own included) that `node_id` replicates but
    whose in-sync replicas it is not among, as 'topic[partition]'."""
    metadata = _admin(settings.bootstrap_servers()).list_topics(timeout=timeout)
    return sorted(
        f"{name}[{p.id}]"
        for name, topic in metadata.topics.items()
        for p in topic.partitions.values()
        if node_id in p.replicas and node_id not in p.isrs
    )


def wait_until_in_every_isr(node_id: int, timeout: float = 60.0) -> float:
    """Wait until `node_id` is back in the ISR of every partition it replicates; returns
    the seconds waited."""
    began = time.monotonic()
    while True:
        try:
            missing = missing_from_isr(node_id)
        except Exception as exc:  # a cluster in the middle of an election may not answer
            missing = [f"(metadata: {exc})"]
        if not missing:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            shown = ", ".join(missing[:10])
            raise BrokerError(
                f"node {node_id} not in sync after {timeout:.0f}s: {len(missing)} "
                f"partition(s), e.g. {shown}"
            )
        time.sleep(0.25)


# ---- logs and tools ----


def tail_log(node: Node, lines: int = 50) -> str:
    log_file = node.files.log
    if not log_file.exists():
        return ""
    with log_file.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 256 * 1024))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def check_tool(name: str) -> None:
    if name not in TOOLS:
        known = ", ".join(sorted(TOOLS))
        raise BrokerError(f"unknown Kafka tool {name!r}; known tools: {known}")


def tool_uses_configured_cluster(name: str, args: Sequence[str]) -> bool:
    """Whether the tool gets the configured --bootstrap-server (none given, not kafka-storage)."""
    return name != "kafka-storage" and not any(
        a.startswith(("--bootstrap-server", "--bootstrap-controller")) for a in args
    )


def tool_command(name: str, args: Sequence[str]) -> list[str]:
    """The java command line of a Kafka console tool, with --bootstrap-server filled in."""
    check_tool(name)
    ensure_jars()
    args = list(args)
    if tool_uses_configured_cluster(name, args):
        args = ["--bootstrap-server", settings.bootstrap_servers(), *args]
    return _tool_java_command(TOOLS[name], args)
