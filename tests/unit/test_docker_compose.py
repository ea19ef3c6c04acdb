"""docker-compose.yml: valid for Docker Compose and in step with the local broker and CLI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from cli.worker_cmd import SERVICES

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_docker_compose_config_validates() -> None:
    tool = shutil.which("docker-compose")
    assert tool, (
        "docker-compose is missing: `make test` installs it (apt-get install docker-compose)"
    )
    result = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_broker_image_is_the_local_kafka_version() -> None:
    pom = (ROOT / "dev" / "kafka" / "pom.xml").read_text()
    version = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert version is not None
    assert compose()["services"]["kafka"]["image"] == f"apache/kafka:{version.group(1)}"


def test_one_service_per_worker_plus_topics_init() -> None:
    services = compose()["services"]
    for name in SERVICES:
        assert services[name]["command"][:2] == ["worker", name]
    assert services["topics"]["command"] == ["topics", "apply"]


def fake_bin(tmp_path: Path, uid: int, *present: str) -> Path:
    """A PATH of stubs: `id -u` says `uid`; sudo and apt-get record their calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    stubs = {
        "id": f"echo {uid}",
        "sudo": f'echo "sudo $*" >> {calls}; exec "$@"',
        "apt-get": f'echo "apt-get $*" >> {calls}',
        **{name: "true" for name in present},
    }
    for name, body in stubs.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\n{body}\n")
        stub.chmod(0o755)
    return bin_dir


def run_make_tools(bin_dir: Path) -> list[str]:
    make = shutil.which("make")
    assert make
    result = subprocess.run(
        [make, "-s", "-C", str(ROOT), "tools"],
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


def test_make_tools_does_nothing_when_both_tools_exist(tmp_path: Path) -> None:
    assert run_make_tools(fake_bin(tmp_path, 1000, "chromium", "docker-compose")) == []
