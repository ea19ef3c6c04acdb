"""`saga up` end to end on a broker of its own: set-up, sample orders, Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import broker_port

pytestmark = pytest.mark.integration


def run_until(process: subprocess.Popen[str], marker: str, timeout: float = 300) -> str:
    """Read the output of `process` until a line containing `marker` (or its end)."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if marker in line or time.monotonic() > deadline:
            break
    return "".join(lines)


ALL_STOPPED = "stopped: orchestrator (exit 0), order (exit 0), product (exit 0), payment (exit 0)"


def test_up_runs_the_demo_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # Its own broker and consumer groups: the session's workers are not disturbed.
    env = {**os.environ, "SAGA_HOME": str(tmp_path), "SAGA_KAFKA_PORT": str(broker_port())}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    saga = [sys.executable, "-m", "cli.main"]

    def start_up(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*saga, "up", "--web-port-base", "6566", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    up = start_up("--demo")
    try:
        output = run_until(up, "Ctrl-C stops every worker")
        assert "example catalog seeded" in output, output[-3000:]
        assert "http://127.0.0.1:6566/sagas" in output
        assert "outcomes:" in output, output[-3000:]
        outcomes = output[output.index("outcomes:") :]
        assert re.search(r"approved +\S+ +ORDER_APPROVED", outcomes), outcomes
        assert "products unavailable: rare-gem" in outcomes
        assert "payment failed: insufficient funds" in outcomes
        assert "NOT FINISHED" not in outcomes

        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=120)
        assert up.returncode == 0, rest[-3000:]
        assert ALL_STOPPED in rest

        # Again on the same broker: the catalog is there, --exit ends after the demo.
        up = start_up("--demo", "--exit")
        output, _ = up.communicate(timeout=300)
        assert up.returncode == 0, output[-3000:]
        assert "stock exists: example catalog not seeded" in output
        assert "NOT FINISHED" not in output and ALL_STOPPED in output

        # Ctrl-C while the workers are still starting stops them at once.
        up = start_up()
        run_until(up, "waiting until each is ready")
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=90)
        assert up.returncode == 0, rest[-3000:]
        assert "workers ready" not in rest and "stopped: orchestrator" in rest, rest[-3000:]

        # Ctrl-C before any worker started: nothing to stop, still a clean exit.
        up = start_up()
        run_until(up, "stock exists")
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=90)
        assert up.returncode == 0, rest[-3000:]
        assert "Traceback" not in rest and "Aborted" not in rest, rest[-3000:]
    finally:
        if up.poll() is None:
            up.kill()
        subprocess.run([*saga, "kafka", "stop"], env=env, capture_output=True, timeout=120)
