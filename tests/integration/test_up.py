"""`saga up` end to end on a broker of its own: set-up, sample orders, Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_up_runs_the_demo_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    # Its own broker and consumer groups: the session's workers are not disturbed.
    env = {**os.environ, "SAGA_HOME": str(tmp_path), "SAGA_KAFKA_PORT": str(free_port())}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    saga = [sys.executable, "-m", "cli.main"]
    up = subprocess.Popen(
        [*saga, "up", "--demo", "--web-port-base", "6566"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 300
        for line in up.stdout:
            lines.append(line)
            if "Ctrl-C stops every worker" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "outcomes:" in output, output[-3000:]
        outcomes = output[output.index("outcomes:") :]
        assert "approved" in outcomes and "ORDER_APPROVED" in outcomes
        assert "products unavailable: rare-gem" in outcomes
        assert "payment failed: insufficient funds" in outcomes
        assert "NOT FINISHED" not in outcomes

        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=120)
        assert up.returncode == 0, rest[-3000:]
        assert (
            "stopped: orchestrator (exit 0), order (exit 0), product (exit 0), payment (exit 0)"
            in rest
        )
    finally:
        if up.poll() is None:
            up.kill()
        subprocess.run([*saga, "kafka", "stop"], env=env, capture_output=True, timeout=120)
