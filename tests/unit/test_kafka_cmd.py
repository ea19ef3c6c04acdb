"""`saga kafka tool` without a broker: a clear one-line error, never a hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import kafka_cmd
from cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_java_tool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail instead of starting the Java tool (it would retry the missing broker forever)."""

    def started(command: list[str]) -> int:
        pytest.fail(f"the tool was started without a broker: {command[-3:]}")

    monkeypatch.setattr(kafka_cmd.subprocess, "call", started)


@pytest.mark.usefixtures("no_java_tool")
def test_tool_with_an_unreachable_external_cluster_fails_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{closed_port()}")
    result = CliRunner().invoke(cli, ["kafka", "tool", "kafka-topics", "--list"])
    assert result.exit_code == 1, result.output
    assert "cannot reach Kafka at 127.0.0.1:" in result.output
    assert result.output.count("\n") == 1, result.output  # one line, no WARN flood


@pytest.mark.usefixtures("no_java_tool")
def test_tool_without_the_local_broker_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    port = closed_port()
    monkeypatch.setattr("messaging.settings.LOCAL_BROKER_PORT", port)
    result = CliRunner().invoke(cli, ["kafka", "tool", "kafka-consumer-groups", "--list"])
    assert result.exit_code == 1, result.output
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in result.output


@pytest.mark.usefixtures("no_java_tool")
def test_unknown_tool_is_named_before_any_broker_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("messaging.client.require_broker", lambda: pytest.fail("probed"))
    result = CliRunner().invoke(cli, ["kafka", "tool", "kafka-nope"])
    assert result.exit_code == 1
    assert "unknown Kafka tool 'kafka-nope'" in result.output


def test_status_of_a_stopped_local_broker_says_stopped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("SAGA_HOME", str(tmp_path))  # no broker.pid there
    monkeypatch.setattr("messaging.settings.LOCAL_BROKER_PORT", closed_port())
    result = CliRunner().invoke(cli, ["kafka", "status"])
    assert result.exit_code == 1
    assert result.output.startswith("local Kafka stopped"), result.output


def test_status_of_an_unreachable_external_cluster_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{closed_port()}")
    result = CliRunner().invoke(cli, ["kafka", "status"])
    assert result.exit_code == 1
    assert result.output.startswith("external cluster (KAFKA_BOOTSTRAP_SERVERS): NOT answering")
    assert "rdkafka" not in capfd.readouterr().err  # librdkafka writes to the real stderr


@pytest.mark.parametrize(
    ("name", "args", "probed"),
    [
        ("kafka-topics", ("--list",), True),
        ("kafka-storage", ("random-uuid",), False),
        ("kafka-topics", ("--help",), False),
        ("kafka-topics", ("--bootstrap-server", "elsewhere:9092", "--list"), False),
        ("kafka-topics", ("--bootstrap-server=elsewhere:9092", "--list"), False),
    ],
)
def test_which_invocations_probe_the_broker(name: str, args: tuple[str, ...], probed: bool) -> None:
    assert kafka_cmd._tool_needs_our_broker(name, args) is probed


def test_the_installed_command_exits_instead_of_hanging() -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed_port()}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "kafka", "tool", "kafka-topics", "--list"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a hanging Java tool can be killed with it
    )
    try:
        # Without the probe the Java tool prints WARN lines forever.
        _stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("`saga kafka tool` hung on an unreachable broker")
    assert process.returncode == 1, stderr[-2000:]
    assert stderr.startswith("Error: cannot reach Kafka at 127.0.0.1:"), stderr
    assert "WARN" not in stderr
