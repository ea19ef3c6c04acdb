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
