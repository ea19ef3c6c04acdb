"""A real single-node Apache Kafka (KRaft) run from Maven Central jars, for development.

Layout under `.local/kafka/` (git-ignored):
  lib/                 the broker + console tools classpath (fetched once by Maven)
  data/                log.dirs; formatted on first start, survives stop/start
  server.properties    rendered from dev/kafka/server.properties
  broker.log           the broker's log4j2 output
  broker.pid           pid of the running JVM
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from messaging import settings

DEV_KAFKA = settings.PROJECT_ROOT / "dev" / "kafka"
CONTROLLER_PORT_OFFSET = 1  # controller listens on broker port + 1

# Console tools by their usual script name (main classes of Kafka 4.x).
TOOLS = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-configs": "kafka.admin.ConfigCommand",
    "kafka-get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "kafka-log-dirs": "org.apache.kafka.tools.LogDirsCommand",
    "kafka-storage": "kafka.tools.StorageTool",
}


_Log = Callable[[str], None]


class BrokerError(RuntimeError):
    """The local broker could not be set up, started or reached."""


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def lib(self) -> Path:
        return self.home / "lib"

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def properties(self) -> Path:
        return self.home / "server.properties"

    @property
    def log(self) -> Path:
        return self.home / "broker.log"

    @property
    def stdout(self) -> Path:
        return self.home / "broker.out"

    @property
    def pid(self) -> Path:
        return self.home / "broker.pid"

    @property
    def lib_stamp(self) -> Path:
        return self.lib / ".pom-sha256"


def paths() -> Paths:
    return Paths(settings.local_home() / "kafka")


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


def _render_properties(port: int) -> Path:
    p = paths()
    template = (DEV_KAFKA / "server.properties").read_text()
    text = template.format(
        port=port, controller_port=port + CONTROLLER_PORT_OFFSET, data_dir=p.data
    )
    p.home.mkdir(parents=True, exist_ok=True)
    p.properties.write_text(text)
    return p.properties


def _java_command(main_class: str, args: Sequence[str], *, tool: bool) -> list[str]:
    log_config = "tools-log4j2.properties" if tool else "log4j2.properties"
    jvm = ["-Xms128m", "-Xmx256m", "-XX:TieredStopAtLevel=1"] if tool else ["-Xms256m", "-Xmx768m"]
    return [
        _java(), *jvm,
        f"-Dlog4j2.configurationFile={DEV_KAFKA / log_config}",
        f"-Dkafka.log.file={paths().log}",
        "-cp", _classpath(), main_class, *args,
    ]  # fmt: skip


def _format_storage(properties: Path) -> None:
    p = paths()
    if (p.data / "meta.properties").exists():
        return
    storage = TOOLS["kafka-storage"]
    cluster_id = subprocess.run(
        _java_command(storage, ["random-uuid"], tool=True),
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    result = subprocess.run(
        _java_command(
            storage, ["format", "-t", cluster_id, "-c", str(properties), "-g"], tool=True
        ),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BrokerError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")


def running_pid() -> int | None:
    """Pid of the local broker JVM if it is alive."""
    p = paths()
    try:
        pid = int(p.pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    try:  # a recycled pid must be ours: check the command line
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"kafka.Kafka" in cmdline else None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a metadata request to the cluster succeeds."""
    from confluent_kafka.admin import AdminClient

    from messaging.settings import confluent_config

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    local = bootstrap == settings.bootstrap_servers() and not settings.external_bootstrap()
    if local and not port_open(host, int(port)):  # fail fast: no client timeout
        return False
    try:
        # log_level 0: a refused connection is the answer, not librdkafka lines on stderr.
        admin = AdminClient(confluent_config(log_level=0, **{"bootstrap.servers": bootstrap}))
        metadata = admin.list_topics(timeout=timeout)
        return bool(metadata.brokers)
    except Exception:
        return False


def start(timeout: float = 90.0, log: _Log = print) -> str:
    """Start the local broker if it is not running; return its bootstrap address."""
    external = settings.external_bootstrap()
    if external:
        if not answers(external, timeout=10):
            raise BrokerError(f"KAFKA_BOOTSTRAP_SERVERS={external} does not answer")
        log(f"using the existing cluster at {external} (KAFKA_BOOTSTRAP_SERVERS)")
        return external
    bootstrap = settings.bootstrap_servers()
    port = settings.LOCAL_BROKER_PORT
    pid = running_pid()
    process: subprocess.Popen[bytes] | None = None
    if pid and answers(bootstrap):
        log(f"local Kafka already running (pid {pid}) at {bootstrap}")
        return bootstrap
    if not pid and port_open("127.0.0.1", port):
        raise BrokerError(f"port {port} is taken by another process; set SAGA_KAFKA_PORT")
    if not pid:
        ensure_jars(log)
        properties = _render_properties(port)
        _format_storage(properties)
        p = paths()
        with p.stdout.open("ab") as out:
            process = subprocess.Popen(
                _java_command("kafka.Kafka", [str(properties)], tool=False),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI that started it
            )
        p.pid.write_text(str(process.pid))
        pid = process.pid
        log(f"starting local Kafka (pid {pid}), data in {p.data}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = process.poll() is not None if process else running_pid() is None
        if exited:
            raise BrokerError(
                f"the broker exited during start-up; see {paths().log}\n{tail_log(30)}"
            )
        if answers(bootstrap, timeout=2):
            log(f"local Kafka is up at {bootstrap}")
            return bootstrap
        time.sleep(0.5)
    raise BrokerError(f"the broker did not answer within {timeout:.0f}s; see {paths().log}")


def stop(timeout: float = 60.0, log: _Log = print) -> bool:
    """Stop the local broker cleanly (SIGTERM, then SIGKILL after `timeout`)."""
    pid = running_pid()
    if pid is None:
        log("local Kafka is not running")
        paths().pid.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid() is not None:
        time.sleep(0.2)
    if running_pid() is not None:
        log(f"broker did not stop in {timeout:.0f}s; killing it")
        os.kill(pid, signal.SIGKILL)
        while running_pid() is not None:
            time.sleep(0.1)
    paths().pid.unlink(missing_ok=True)
    log(f"local Kafka stopped (pid {pid})")
    return True


def kill() -> None:
    """SIGKILL the broker (for failure tests)."""
    pid = running_pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
        while running_pid() is not None:
            time.sleep(0.1)


def tail_log(lines: int = 50) -> str:
    log_file = paths().log
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
    return name != "kafka-storage" and not any(a.startswith("--bootstrap-server") for a in args)


def tool_command(name: str, args: Sequence[str]) -> list[str]:
    """The java command line of a Kafka console tool, with --bootstrap-server filled in."""
    check_tool(name)
    ensure_jars()
    args = list(args)
    if tool_uses_configured_cluster(name, args):
        args = ["--bootstrap-server", settings.bootstrap_servers(), *args]
    return _java_command(TOOLS[name], args, tool=True)
