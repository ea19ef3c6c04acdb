"""Reliability: the reduced chaos run, SIGTERM under load, scaling out and in under load.
The reduced run mixes cancels into its orders; the other two place orders only (what
they test does not depend on the saga, and so they keep their duration).

All drive `saga chaos` (what `make chaos` runs with 2000 orders), which gets a broker
and workers of its own (a home under SAGA_HOME, free ports for the broker and the
workers' web views): it stops and wipes them, so it never touches the session's broker
and workers, nor another checkout's tests running beside. It needs Java for that
broker, like `saga kafka start`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from messaging import settings
from messaging.local_workers import SERVICE_NAMES
from tests.ports import broker_port, free_ports

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

STOP_WITHIN = 30.0


def isolated(home: str, workers: int, settle_timeout: int) -> list[str]:
    """Options giving the run a home, a broker port and web ports of its own, free for
    `workers` workers per service (the n-th of a service on the base + 4 (n - 1))."""
    broker = broker_port()
    web_ports = free_ports(len(SERVICE_NAMES) * workers)
    while broker - len(SERVICE_NAMES) * workers < web_ports <= broker + 1:  # not yet bound
        web_ports = free_ports(len(SERVICE_NAMES) * workers)
    return [
        "--home", str(settings.local_home() / home), "--port", str(broker),
        "--web-port-base", str(web_ports), "--settle-timeout", str(settle_timeout),
    ]  # fmt: skip


def chaos(tmp_path: Path, *args: str, own: list[str] | None = None) -> dict[str, Any]:
    """Run `saga chaos` with `args`; its JSON result (the printed table on failure)."""
    result_file = tmp_path / "chaos.json"
    own = own or isolated("chaos-test", 1, 180)
    command = [sys.executable, "-m", "cli.main", "chaos", *own, *args]
    command += ["--json", str(result_file)]
    # Always its own local broker: workers on a shared cluster (the session's testcontainer
    # or KAFKA_BOOTSTRAP_SERVERS) would share its consumer groups and take its records.
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    run = subprocess.run(command, capture_output=True, text=True, timeout=280, env=env)
    report = run.stdout[-6000:] + run.stderr[-3000:]
    assert result_file.exists(), report
    result: dict[str, Any] = json.loads(result_file.read_text())
    result["report"] = report
    return result


@pytest.mark.timeout(290)
def test_reduced_chaos_run_passes(tmp_path: Path) -> None:
    """A SIGKILL and a SIGTERM for every worker, a broker restart, duplicates and bad
    records while 150 orders and 28 cancels of some of them run: every invariant holds,
    the cancels' included (a cancelled order refunded and its stock returned, a refused
    cancel changing nothing)."""
    result = chaos(tmp_path, "--orders", "150", "--kills", "1", "--terms", "1", "--rate", "20")
    assert result["passed"], result["report"]
    assert result["approved"] and result["rejected"], result["report"]
    cancels = result["cancels"]
    assert cancels["requested"] == round(0.2 * result["sagas"]) > 0
    assert cancels["cancelled"] and cancels["rejected"], result["report"]
    assert cancels["cancelled"] + cancels["rejected"] == cancels["requested"]
    assert "unknown order" in cancels["rejected_because"], result["report"]
    assert 0 < result["approvable"] < 150
    share = 100 * result["deadline_rejections"] / result["approvable"]
    assert result["deadline_rejected_percent"] == pytest.approx(share)
    assert f"{share:.1f}% of {result['approvable']}" in result["report"]
    assert result["dead_letters"]["matched"] == result["dead_letters"]["injected"] > 0
    assert sum(result["kills"].values()) == 4


@pytest.mark.timeout(290)
def test_sigterm_under_load_lets_each_worker_finish_and_nothing_is_lost(tmp_path: Path) -> None:
    """Every worker SIGTERMed twice while orders flow: each exits 0 within 30 s, and
    afterwards every saga has ended with stock and money where they belong."""
    result = chaos(
        tmp_path,
        "--orders", "300", "--rate", "20", "--kills", "0", "--terms", "2",
        "--no-broker-restart", "--bad", "0", "--cancel-share", "0",
    )  # fmt: skip
    stops = [(s["worker"], s["code"], round(s["seconds"], 1)) for s in result["stops"]]
    assert len(stops) == 8, result["report"]
    assert all(code == 0 and took < STOP_WITHIN for _w, code, took in stops), stops
    assert all(code == 0 for code in result["final_stop"]["codes"].values())
    assert result["passed"], result["report"]  # nothing lost


@pytest.mark.timeout(290)
def test_scaling_out_and_in_under_load_moves_partitions_and_loses_nothing(
    tmp_path: Path,
) -> None:
    """One worker per service, then a second and a third of every service while orders
    flow, then the third ones stopped by SIGTERM and the second ones by SIGKILL. Every
    saga ends once, every invariant holds, the new workers own keys (their partitions
    and tables moved to them), and every lookup of a key that exists, through any worker
    in service, gets its row (a 503 while partitions move is retried; see
    chaos/view_watch.py)."""
    own = isolated("scale-test", 3, 120)
    result = chaos(
        tmp_path,
        "--orders", "600", "--rate", "10", "--kills", "0", "--terms", "0",
        "--no-broker-restart", "--bad", "0", "--scale-to", "3", "--watch-views",
        "--cancel-share", "0",
        own=own,
    )  # fmt: skip
    report = result["report"]
    assert result["passed"], report
    assert result["approved"] and result["rejected"], report
    assert sorted(result["scaled_out"]) == sorted(
        f"{service}-{n}" for service in SERVICE_NAMES for n in (2, 3)
    )
    stops = {stop["worker"]: stop["code"] for stop in result["scaled_in"]}
    assert stops == {
        **{f"{service}-3": 0 for service in SERVICE_NAMES},  # SIGTERM: a graceful stop
        **{f"{service}-2": -9 for service in SERVICE_NAMES},  # SIGKILL
    }, report
    views = result["views"]
    assert views["failures"] == [], report
    for service in SERVICE_NAMES:
        assert views["lookups"].get(service, 0) >= 20, report
    # Each worker owned keys it was asked for: all three of the services keyed by order
    # (hundreds of keys, on every partition). The catalog's 11 products and 21 customers
    # may leave a partition without a key (16 % of runs for the products), and a worker
    # holding only that one owns none: of those services, a scaled-out worker at least.
    for service in ("orchestrator", "order"):
        assert len(views["owners"][service]) == 3, report
    for service in ("product", "payment"):
        assert len(views["owners"][service]) >= 2, report
