"""`saga up` end to end on a broker of its own: set-up, sample orders, Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import pytest

from messaging.local_workers import Workers
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
EXIT_TIMED_OUT, EXIT_NO_ORCHESTRATOR = 4, 5
# What a user (or the test suite) did to the local system before the demo.
OTHER_PRODUCTS = """\
products:
  - {id: suite-widget, stock: 5, price: "1.00"}
customers:
  - {id: suite-customer, balance: "10.00"}
"""
USER_CHANGES = """\
products:
  - {id: rare-gem, stock: 5, price: "999.00"}
customers:
  - {id: carol, balance: "100.00"}
"""


def outcomes_of(output: str) -> str:
    assert "outcomes:" in output, output[-3000:]
    return output[output.index("outcomes:") :]


def assert_labelled_outcomes(output: str) -> None:
    outcomes = outcomes_of(output)
    assert re.search(r"approved +\S+ +ORDER_APPROVED", outcomes), outcomes
    assert re.search(
        r"out of stock +\S+ +ORDER_REJECTED \(products unavailable: rare-gem", outcomes
    )
    assert re.search(
        r"insufficient funds +\S+ +ORDER_REJECTED \(payment failed: insufficient funds", outcomes
    ), outcomes
    assert "NOT FINISHED" not in outcomes


def stock_of(product_id: str) -> dict[str, Any]:
    """The product worker's view of one product (the demo's workers use ports 6566-6569)."""
    with urllib.request.urlopen(f"http://127.0.0.1:6568/stock/{product_id}?format=json") as page:
        return cast(dict[str, Any], json.load(page))


def test_up_runs_the_demo_on_any_state_and_stops_cleanly_on_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own broker and consumer groups: the session's workers are not disturbed. Workers
    # take this process's environment too: no external cluster there either.
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    env = {**os.environ, "SAGA_HOME": str(tmp_path), "SAGA_KAFKA_PORT": str(broker_port())}
    saga = [sys.executable, "-m", "cli.main"]

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*saga, *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    def start_up(*args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*saga, "up", "--web-port-base", "6566", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def seed(content: str, name: str) -> None:
        (tmp_path / name).write_text(content)
        result = run("seed", str(tmp_path / name))
        assert result.returncode == 0, result.stderr

    up = None
    try:
        # A broker that already holds other products, as after the test suite.
        assert run("kafka", "start").returncode == 0
        assert run("topics", "apply").returncode == 0
        seed(OTHER_PRODUCTS, "other.yaml")

        # No worker runs: `saga order --wait` says so at once instead of waiting 120 s.
        result = run("order", "--customer", "alice", "--item", "widget:1", "--wait")
        assert result.returncode == EXIT_NO_ORCHESTRATOR, result.stdout + result.stderr
        assert "no orchestrator is running: start the workers with `saga up`" in result.stderr
        pending = re.search(r"order (\S+) requested", result.stdout)
        assert pending, result.stdout
        result = run("status", pending.group(1))
        assert result.returncode == 1
        assert "no orchestrator is running" in result.stderr, result.stderr

        # Only the orchestrator: the saga waits for the order service, and both say so.
        orchestrator_only = Workers(["orchestrator"], ports={"orchestrator": 6570}, env=env)
        orchestrator_only.start()
        try:
            orchestrator_only.wait_ready()
            result = run("order", "--customer", "bob", "--item", "widget:1", "--wait",
                         "--timeout", "5")  # fmt: skip
            assert result.returncode == EXIT_TIMED_OUT, result.stdout + result.stderr
            assert "no order worker is running" in result.stderr, result.stderr
            waiting = re.search(r"order (\S+) requested", result.stdout)
            assert waiting, result.stdout
        finally:
            orchestrator_only.stop()
        result = run("status", waiting.group(1))
        assert result.returncode == 0, result.stderr
        assert "waiting for create_order" in result.stdout, result.stdout
        assert "no orchestrator and no order worker is running" in result.stdout, result.stdout

        up = start_up("--demo")
        output = run_until(up, "Ctrl-C stops every worker")
        # The demo's products and customers were missing: seeded, the others untouched.
        assert "example catalog seeded (widget, gadget, gizmo, rare-gem, alice, bob, carol)" in (
            output
        ), output[-3000:]
        assert "http://127.0.0.1:6566/sagas" in output
        assert_labelled_outcomes(output)
        assert stock_of("suite-widget")["available"] == 5

        # Meanwhile a user buys all gizmos, restocks rare-gems and tops carol up.
        gizmos = stock_of("gizmo")["available"]
        result = run("order", "--customer", "alice", "--item", f"gizmo:{gizmos}",
                     "--wait")  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        seed(USER_CHANGES, "user.yaml")
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=120)
        assert up.returncode == 0, rest[-3000:]
        assert ALL_STOPPED in rest

        # Without seeding the demo cannot restock gizmos: the approved sample is rejected,
        # and --exit says so and fails. The failing samples adapt to the user's changes.
        up = start_up("--demo", "--exit", "--no-seed")
        output, _ = up.communicate(timeout=300)
        assert up.returncode == 1, output[-3000:]
        assert "demo: the 'approved' sample ended ORDER_REJECTED (products unavailable: gizmo" in (
            output
        ), output[-3000:]
        assert "out-of-stock sample orders 7" in output and "orders 11 widgets" in output
        assert ALL_STOPPED in output

        # By default it restocks what the approved sample needs; the user's stock stays.
        up = start_up("--demo", "--exit")
        output, _ = up.communicate(timeout=300)
        assert up.returncode == 0, output[-3000:]
        assert "example catalog present" in output
        assert "gizmo restocked with 200 for the approved sample" in output
        assert_labelled_outcomes(output)
        assert ALL_STOPPED in output

        # Ctrl-C while the workers are still starting stops them at once.
        up = start_up()
        run_until(up, "waiting until each is ready")
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=90)
        assert up.returncode == 0, rest[-3000:]
        assert "workers ready" not in rest and "stopped: orchestrator" in rest, rest[-3000:]

        # Ctrl-C before any worker started: nothing to stop, still a clean exit.
        up = start_up()
        run_until(up, "local Kafka already running")
        up.send_signal(signal.SIGINT)
        rest, _ = up.communicate(timeout=90)
        assert up.returncode == 0, rest[-3000:]
        assert "Traceback" not in rest and "Aborted" not in rest, rest[-3000:]
    finally:
        if up is not None and up.poll() is None:
            up.kill()
        run("kafka", "stop", timeout=120)
