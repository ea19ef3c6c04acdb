"""A local three-broker cluster of its own for a test module (`saga kafka start --brokers 3`).

It lives in a temporary SAGA_HOME on free ports below the ephemeral range (tests.ports:
never the shared broker's, nor `saga chaos`'s), with the Kafka jars of the usual home
hard-linked in. The commands run against it find it by its home alone, as a user's do.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.chaos_cmd import share_jars
from messaging import local_broker, settings
from tests.ports import cluster_port


@dataclass(frozen=True)
class Cluster:
    home: Path
    bootstrap: str
    env: dict[str, str]  # for the commands and workers run against it


def saga(cluster: Cluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def started_cluster(home: Path, report: Callable[[str], None] = print) -> Iterator[Cluster]:
    """Start a cluster in `home` (its start line given to `report`); this process and the
    commands it runs use it until the block ends, which stops it."""
    share_jars(home)
    port = cluster_port(3)
    env = {
        **os.environ,
        "SAGA_HOME": str(home),
        "SAGA_KAFKA_PORT": str(port),
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "SAGA_ENV": "",
    }
    with pytest.MonkeyPatch.context() as patch:  # and so does this process
        patch.setenv("SAGA_HOME", str(home))
        patch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
        patch.delenv("SAGA_ENV", raising=False)
        patch.setattr(settings, "LOCAL_BROKER_PORT", port)
        bootstrap = ",".join(f"127.0.0.1:{port + 2 * n}" for n in range(3))
        running = Cluster(home, bootstrap, env)
        started = saga(running, "kafka", "start", "--brokers", "3")
        try:
            assert started.returncode == 0, started.stdout + started.stderr
            assert f"local Kafka cluster of 3 brokers is up at {bootstrap}" in started.stdout
            report(started.stdout.splitlines()[-1])
            yield running
        finally:
            local_broker.stop(timeout=30, log=report)
