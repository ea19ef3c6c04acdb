"""docker-compose.yml: valid for Docker Compose and in step with the local broker and CLI."""

from __future__ import annotations

import base64
import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from cli.worker_cmd import SERVICES
from tests.conftest import kafka_container_spec, start_kafka_container

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


CLUSTER_FILES = ("docker-compose.yml", "docker-compose.cluster.yml")


def docker_compose_config(*files: str, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` of `files` merged, as Docker Compose reads them."""
    tool = shutil.which("docker-compose")
    assert tool, (
        "docker-compose is missing: `make test` installs it (apt-get install docker-compose)"
    )
    arguments = [a for f in files for a in ("-f", str(ROOT / f))]
    return subprocess.run(
        [tool, *arguments, "config", *(["-q"] if quiet else [])],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("files", [("docker-compose.yml",), CLUSTER_FILES])
def test_docker_compose_config_validates(files: tuple[str, ...]) -> None:
    result = docker_compose_config(*files, quiet=True)
    assert result.returncode == 0, result.stderr


CLIENTS = ("topics", "seed", *SERVICES)


def test_workers_take_operator_and_tracing_settings_from_the_host_off_by_default() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_OPERATOR", "OTEL_"))}
    for given, want in (
        ({}, {"SAGA_OPERATOR_TOKEN": "", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}),
        (
            {"SAGA_OPERATOR_TOKEN": "t" * 32, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"},
            {"SAGA_OPERATOR_TOKEN": "t" * 32, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"},
        ),
    ):
        tool = shutil.which("docker-compose")
        assert tool, "docker-compose is missing: `make test` installs it"
        result = subprocess.run(
            [tool, "-f", str(ROOT / "docker-compose.yml"), "config"],
            capture_output=True, text=True, timeout=60, env={**env, **given},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        services = yaml.safe_load(result.stdout)["services"]
        for name in SERVICES:
            environment = services[name]["environment"]
            for key, value in want.items():
                assert (environment.get(key) or "") == value, (name, key)
            assert "http://127.0.0.1:6066" in environment["SAGA_OPERATOR_ORIGINS"].split()


def test_every_client_of_the_single_broker_applies_single_replication() -> None:
    services = compose()["services"]
    for name in CLIENTS:
        assert services[name]["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:19092"
        assert services[name]["environment"]["SAGA_ENV"] == "single", name


def test_the_cluster_file_runs_three_replicating_brokers_for_every_client() -> None:
    merged = docker_compose_config(*CLUSTER_FILES)
    assert merged.returncode == 0, merged.stderr
    services = yaml.safe_load(merged.stdout)["services"]
    brokers = ("kafka", "kafka-2", "kafka-3")
    envs = [{k: str(v) for k, v in services[b]["environment"].items()} for b in brokers]
    assert [env["KAFKA_NODE_ID"] for env in envs] == ["1", "2", "3"]
    for broker, env in zip(brokers, envs, strict=True):
        assert services[broker]["image"] == compose()["services"]["kafka"]["image"]
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == (
            "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093"
        )
        assert env["KAFKA_ADVERTISED_LISTENERS"].startswith(f"INTERNAL://{broker}:19092,")
        assert f"--bootstrap-server {broker}:19092" in services[broker]["healthcheck"]["test"][1]
        replicated = {
            "KAFKA_DEFAULT_REPLICATION_FACTOR": "3", "KAFKA_MIN_INSYNC_REPLICAS": "2",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "3",
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "2",
            "KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE": "false",
            "KAFKA_BROKER_SESSION_TIMEOUT_MS": "2000",
            "KAFKA_BROKER_HEARTBEAT_INTERVAL_MS": "500",
            "KAFKA_CONTROLLER_QUORUM_FETCH_TIMEOUT_MS": "1000",
        }  # fmt: skip
        assert {k: env[k] for k in replicated} == replicated
    assert len({env["CLUSTER_ID"] for env in envs}) == 1
    # One volume each, none of them the single broker's (formatted for another quorum).
    volumes = [services[b]["volumes"][0].split(":")[0] for b in brokers]
    assert len(set(volumes)) == 3 and "kafka-data" not in volumes
    host_ports = [p.split(":")[1] for b in brokers for p in services[b]["ports"]]
    assert host_ports == ["9092", "9094", "9096"]
    for name in CLIENTS:
        environment = services[name]["environment"]
        assert {k: environment[k] for k in ("KAFKA_BOOTSTRAP_SERVERS", "SAGA_ENV")} == {
            "KAFKA_BOOTSTRAP_SERVERS": "kafka:19092,kafka-2:19092,kafka-3:19092",
            "SAGA_ENV": "cluster",
        }, name
    assert set(services["topics"]["depends_on"]) == set(brokers)


def test_broker_image_is_the_local_kafka_version() -> None:
    pom = (ROOT / "dev" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version is not None
    assert compose()["services"]["kafka"]["image"] == f"apache/kafka:{version.group(1)}"


def test_one_service_per_worker_plus_topics_and_seed_init() -> None:
    services = compose()["services"]
    for name in SERVICES:
        assert services[name]["command"][:2] == ["worker", name]
    assert services["topics"]["command"] == ["topics", "apply"]
    assert services["seed"]["command"] == ["seed"]  # the image's examples/catalog.yaml


def test_prometheus_scrapes_every_worker_of_each_service_on_its_port() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    source, target, *_ = prometheus["volumes"][0].split(":")
    assert target == "/etc/prometheus/prometheus.yml"  # what the image's command reads
    config = yaml.safe_load((ROOT / source).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for name in SERVICES:
        port = int(services[name]["command"][-1])  # worker NAME --web-port PORT
        assert jobs[name]["dns_sd_configs"] == [{"names": [name], "type": "A", "port": port}]
    assert set(prometheus["depends_on"]) == set(SERVICES)
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]


def fake_bin(tmp_path: Path, uid: int, *present: str, lists: bool = True) -> Path:
    """A PATH of stubs: `id -u` says `uid`; sudo, apt-get and dpkg-deb record their calls.

    `apt-get download` leaves a .deb in the current folder (fails while there are no
    package lists, until `apt-get update`: `lists=False`); `dpkg-deb -x` unpacks a
    prometheus binary from it.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    updated = tmp_path / "lists-updated"
    if lists:
        updated.touch()
    stubs = {
        "id": f"echo {uid}",
        "sudo": f'echo "sudo $*" >> {calls}; exec "$@"',
        "apt-get": (
            f'echo "apt-get $*" >> {calls}\n'
            f'case "$1" in update) : > {updated};; download)\n'
            f"  test -e {updated} || exit 100\n"
            "  : > prometheus_2.42.0+ds-5_amd64.deb;;\nesac"
        ),
        "dpkg-deb": (
            f'echo "dpkg-deb $*" >> {calls}\n'
            '/bin/mkdir -p "$3/usr/bin" && printf "#!/bin/sh\\n" > "$3/usr/bin/prometheus"\n'
            '/bin/chmod +x "$3/usr/bin/prometheus"'
        ),
        "mkdir": 'exec /bin/mkdir "$@"',
        "rm": 'exec /bin/rm "$@"',
        **{name: "true" for name in present},
    }
    for name, body in stubs.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    return bin_dir


def run_make_tools(bin_dir: Path) -> list[str]:
    """`make tools` with the stubs of `bin_dir`, unpacking Prometheus beside them."""
    make = shutil.which("make")
    assert make
    prometheus_dir = bin_dir.parent / "prometheus"
    result = subprocess.run(
        [make, "-s", "-C", str(ROOT), "tools", f"PROMETHEUS_DIR={prometheus_dir}"],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = bin_dir.parent / "calls"
    return calls.read_text().splitlines() if calls.exists() else []


def test_make_tools_uses_sudo_when_not_root(tmp_path: Path) -> None:
    calls = run_make_tools(fake_bin(tmp_path, uid=1000))
    assert calls[0] == "sudo apt-get update -qq"
    assert "sudo apt-get install -y -qq chromium docker-compose" in calls


def test_make_tools_runs_apt_get_directly_as_root(tmp_path: Path) -> None:
    calls = run_make_tools(fake_bin(tmp_path, uid=0))
    assert calls[0] == "apt-get update -qq"
    assert not any(call.startswith("sudo") for call in calls)


def test_make_tools_unpacks_prometheus_without_installing_it(tmp_path: Path) -> None:
    calls = run_make_tools(fake_bin(tmp_path, 1000, "chromium", "docker-compose"))
    assert calls == [
        "apt-get download -qq prometheus",
        "dpkg-deb -x prometheus_2.42.0+ds-5_amd64.deb .",
    ]
    unpacked = tmp_path / "prometheus"
    assert os.access(unpacked / "usr" / "bin" / "prometheus", os.X_OK)
    assert not list(unpacked.glob("*.deb"))  # the package file is not kept


def test_make_tools_fetches_package_lists_when_there_are_none(tmp_path: Path) -> None:
    calls = run_make_tools(fake_bin(tmp_path, 1000, "chromium", "docker-compose", lists=False))
    assert calls[:3] == [
        "apt-get download -qq prometheus",
        "sudo apt-get update -qq",
        "apt-get update -qq",
    ]
    assert calls[3] == "apt-get download -qq prometheus"
    assert (tmp_path / "prometheus" / "usr" / "bin" / "prometheus").exists()


def test_make_tools_does_nothing_when_every_tool_exists(tmp_path: Path) -> None:
    binary = tmp_path / "prometheus" / "usr" / "bin" / "prometheus"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert run_make_tools(fake_bin(tmp_path, 1000, "chromium", "docker-compose")) == []


# ---- the image: does the code find its files when it runs in the container? ----


def dockerfile_instructions() -> list[tuple[str, list[str]]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.split()))
    return instructions


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `relative` (or a folder above it) out of the context."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(prefix.rsplit("/", 1)[-1], bare)
            ):
                return True
    return False


def build_app_dir(target: Path) -> Path:
    """Lay out what the image's COPY lines put under WORKDIR."""
    patterns = dockerignore_patterns()
    assert not any(p.startswith("!") for p in patterns), "exceptions are not simulated here"
    context = []  # the build context Docker sends: every file .dockerignore lets through
    for folder, dirs, files in os.walk(ROOT):
        prefix = "" if Path(folder) == ROOT else Path(folder).relative_to(ROOT).as_posix() + "/"
        dirs[:] = [d for d in dirs if not dockerignored(prefix + d, patterns)]
        context += [prefix + f for f in files if not dockerignored(prefix + f, patterns)]
    workdir = None
    for keyword, args in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = args[0]
        if keyword != "COPY":
            continue
        assert workdir, "COPY before WORKDIR"
        assert not any(a.startswith("--") for a in args), f"COPY flags not simulated: {args}"
        *sources, dest = args
        into_dir = dest.endswith("/") or len(sources) > 1
        dest_path = target / dest.removeprefix(workdir).lstrip("/")
        for source in sources:
            source = source.rstrip("/")
            files = [f for f in context if f == source or f.startswith(source + "/")]
            assert files, f"COPY {source}: nothing of it is in the build context"
            for f in files:
                if f == source:  # a file: into the folder, or as the named file
                    out = dest_path / Path(f).name if into_dir else dest_path
                else:  # a folder: Docker copies its contents, not the folder itself
                    out = dest_path / f[len(source) + 1 :]
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, out)
    assert workdir == "/app"
    return target


def test_image_installs_the_project_editable_after_copying_it() -> None:
    # A plain `pip install .` puts the packages in site-packages, where PROJECT_ROOT
    # (the parent of `messaging`) has no topics.yaml: the containers could not start.
    instructions = dockerfile_instructions()
    installs = [
        i for i, (keyword, args) in enumerate(instructions)
        if keyword == "RUN" and "pip" in args and "install" in args
    ]  # fmt: skip
    assert len(installs) == 1, instructions
    args = instructions[installs[0]][1]
    assert {"-e", "--editable"} & set(args) and args[-1] == ".", args
    last_copy = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "COPY")
    assert installs[0] > last_copy, "packages copied after the install are not importable"


def test_the_code_finds_its_files_in_the_image_layout(tmp_path: Path) -> None:
    """What the containers read at run time, read from the image's /app as laid out."""
    app = build_app_dir(tmp_path / "app")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    script = """
import sys
from pathlib import Path
from messaging import catalog, local_broker, settings, topics
assert settings.PROJECT_ROOT == Path(sys.argv[1]).resolve(), settings.PROJECT_ROOT
topics.load()                                   # saga topics apply, every worker
catalog.load(catalog.EXAMPLE_CATALOG)           # saga seed / saga up
from schemas import codec                       # every schema, current and released
assert codec.SCHEMA_DIR.is_relative_to(settings.PROJECT_ROOT)
for name in ("pom.xml", "server.properties", "log4j2.properties", "tools-log4j2.properties"):
    (local_broker.DEV_KAFKA / name).read_text()   # saga kafka ...
from bench import report
report.README.read_text()                       # saga bench updates it
import cli.main, orchestrator.app, participants.order.app, participants.product.app
import participants.payment.app
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(app)],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(app), "SAGA_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "ok", result.stderr[-3000:]


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    ignored = [
        ".local/kafka/lib/x.jar", ".venv/bin/python", ".git/HEAD", "kafka_saga.egg-info/PKG-INFO",
        "messaging/__pycache__/topics.cpython-311.pyc", "bench/results/latest.png",
    ]  # fmt: skip
    kept = [
        "topics.yaml", "examples/catalog.yaml", "dev/kafka/pom.xml",
        "schemas/history/OrderRequested.v1.avsc", "bench/results/latest.json",
    ]  # fmt: skip
    assert [p for p in ignored if not dockerignored(p, patterns)] == []
    assert [p for p in kept if dockerignored(p, patterns)] == []


# ---- the test fixture's apache/kafka container (no Docker engine needed to check it) ----


def listener_ports(listeners: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' as {NAME: (host, port)}."""
    parsed = {}
    for listener in listeners.split(","):
        name, _, address = listener.partition("://")
        host, _, port = address.rpartition(":")
        parsed[name] = (host, int(port))
    return parsed


def test_fixture_container_advertises_the_fixed_host_port() -> None:
    spec = kafka_container_spec("docker-host.example", 41234)
    env = spec.env
    listeners = listener_ports(env["KAFKA_LISTENERS"])
    advertised = listener_ports(env["KAFKA_ADVERTISED_LISTENERS"])
    # Clients reach host:41234, published from the container's own 41234, which the
    # broker advertises under the same name: every metadata answer points back there.
    assert spec.bootstrap == "docker-host.example:41234"
    assert spec.ports == {41234: 41234}
    host_listener = next(n for n, (_h, p) in listeners.items() if p == 41234)
    assert advertised[host_listener] == ("docker-host.example", 41234)
    # KRaft wiring: the controller is a listener of its own, never advertised, and the
    # quorum voter is this node on that port; every name has a security protocol.
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@localhost:{listeners[controller][1]}"
    assert env["KAFKA_NODE_ID"] == "1" and env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    protocol_map = env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    assert {item.split(":")[0] for item in protocol_map} == set(listeners)
    assert len({port for _host, port in listeners.values()}) == len(listeners)
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16  # a Kafka UUID


def test_fixture_container_is_configured_like_the_compose_broker() -> None:
    """Same image and, beyond addresses and ids, the same settings as docker-compose's."""
    compose_kafka = compose()["services"]["kafka"]
    spec = kafka_container_spec("localhost", 41234)
    assert spec.image == compose_kafka["image"]
    compose_env = {k: str(v) for k, v in compose_kafka["environment"].items()}
    assert set(spec.env) == set(compose_env)
    per_setup = {
        "CLUSTER_ID", "KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_INTER_BROKER_LISTENER_NAME",
        "KAFKA_CONTROLLER_QUORUM_VOTERS", "KAFKA_LOG_DIRS",
    }  # fmt: skip
    same = {k: v for k, v in compose_env.items() if k not in per_setup}
    assert {k: spec.env[k] for k in same} == same
    assert spec.env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_fixture_container_refuses_a_port_its_other_listeners_use() -> None:
    with pytest.raises(ValueError, match="taken inside the container"):
        kafka_container_spec("localhost", 9093)


class FakeContainer:
    """Records what start_kafka_container asks of testcontainers' DockerContainer."""

    instances: ClassVar[list[FakeContainer]] = []

    def __init__(self, image: str) -> None:
        self.image = image
        self.env: dict[str, str] = {}
        self.ports: dict[int, int] = {}
        self.strategy: object = None
        self.started = self.stopped = False
        FakeContainer.instances.append(self)

    def with_env(self, key: str, value: str) -> FakeContainer:
        self.env[key] = value
        return self

    def with_bind_ports(self, container: int, host: int) -> FakeContainer:
        self.ports[container] = host
        return self

    def waiting_for(self, strategy: object) -> FakeContainer:
        self.strategy = strategy
        return self

    def start(self) -> FakeContainer:
        self.started = True
        return self

    def stop(self) -> None:
        self.stopped = True


def test_fixture_container_starts_with_the_spec_and_waits_for_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    FakeContainer.instances.clear()
    monkeypatch.setattr("testcontainers.core.container.DockerContainer", FakeContainer)
    probes: list[str] = []

    def answers(bootstrap: str, timeout: float) -> bool:
        probes.append(bootstrap)
        return True

    monkeypatch.setattr("messaging.local_broker.answers", answers)
    spec = kafka_container_spec("localhost", 41234)
    container = start_kafka_container(spec)
    assert container is FakeContainer.instances[0] and container.started
    assert (container.image, container.env, container.ports) == (spec.image, spec.env, spec.ports)
    assert isinstance(container.strategy, LogMessageWaitStrategy)
    assert container.strategy._message.search("[KafkaRaftServer nodeId=1] Kafka Server started")
    assert probes == ["localhost:41234"]


def test_fixture_container_is_removed_when_it_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    FakeContainer.instances.clear()
    monkeypatch.setattr("testcontainers.core.container.DockerContainer", FakeContainer)
    monkeypatch.setattr("messaging.local_broker.answers", lambda bootstrap, timeout: False)
    monkeypatch.setattr("tests.conftest.time.monotonic", iter(range(0, 10_000, 30)).__next__)
    monkeypatch.setattr("tests.conftest.time.sleep", lambda _s: None)
    with pytest.raises(RuntimeError, match="does not answer at localhost:41234"):
        start_kafka_container(kafka_container_spec("localhost", 41234))
    assert FakeContainer.instances[0].stopped
