"""A real Prometheus (Debian's, unpacked by `make tools`) scrapes the four test workers.

It runs on 127.0.0.1 with a free port and the scrape config of dev/prometheus/prometheus.yml
pointed at the test workers, scraping every second. Sagas run; then Prometheus' HTTP query
API must show the approved count and the duration histogram moved, and the scrape-time
metrics (lag, table rows) present.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from messaging import settings
from messaging.catalog import Catalog
from messaging.local_workers import Workers
from tests.conftest import TEST_WORKER_PORTS
from tests.integration.order_helpers import (
    customer,
    http_get,
    place_orders,
    poll,
    product,
    wait_terminal,
)
from tests.ports import free_ports

pytestmark = pytest.mark.integration

DEV_CONFIG = settings.PROJECT_ROOT / "dev" / "prometheus"
REPLIES_BY_JOB = "sum by (job) (saga_participant_replies_total)"
APPROVED = 'sum(saga_ended_total{saga="CreateOrderSaga", outcome="ORDER_APPROVED"})'
DURATIONS = 'sum(saga_duration_seconds_count{saga="CreateOrderSaga", outcome="ORDER_APPROVED"})'
SAGAS = 3


def tool(name: str) -> Path:
    """Debian's prometheus or promtool: where `make tools` unpacks it, else on PATH."""
    unpacked = settings.PROJECT_ROOT / ".local" / "prometheus" / "usr" / "bin" / name
    if os.access(unpacked, os.X_OK):
        return unpacked
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is missing: `make tools` unpacks Debian's prometheus package into "
            f"{unpacked.parent.parent.parent} (apt-get download prometheus; no service)"
        )
    return Path(found)


def scrape_config(ports: dict[str, int]) -> dict[str, Any]:
    """dev/prometheus/prometheus.yml with the workers on `ports`, scraped every second."""
    config = yaml.safe_load((DEV_CONFIG / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    assert {job["job_name"] for job in config["scrape_configs"]} == set(ports)
    return config


@pytest.fixture
def prometheus(workers: Workers, tmp_path: Path) -> Iterator[str]:
    """The URL of a Prometheus scraping the test workers (stopped after the test)."""
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(TEST_WORKER_PORTS)))
    port = free_ports(1)
    log = tmp_path / "prometheus.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                str(tool("prometheus")),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Prometheus did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ready(url: str) -> bool:
    try:
        return http_get(f"{url}/-/ready", timeout=2).status == 200
    except OSError:
        return False


def api(url: str, path: str, **params: str) -> Any:
    reply = http_get(f"{url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
    body = json.loads(reply.body)
    assert reply.status == 200 and body["status"] == "success", body
    return body["data"]


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector of `promql` now: [{"metric": labels, "value": [time, "v"]}]."""
    data = api(url, "query", query=promql)
    assert data["resultType"] == "vector", data
    result: list[dict[str, Any]] = data["result"]
    return result


def scalar(url: str, promql: str) -> float:
    """The single value of `promql` (0 when no series has it yet)."""
    result = query(url, promql)
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else 0.0


def test_prometheus_scrapes_every_worker_and_sees_the_sagas_move(
    prometheus: str, test_catalog: Catalog
) -> None:
    def health() -> dict[str, str]:
        targets = api(prometheus, "targets")["activeTargets"]
        return {t["labels"]["job"]: t["health"] for t in targets}

    poll(health, lambda h: h == dict.fromkeys(TEST_WORKER_PORTS, "up"), "every worker scraped")
    poll(lambda: query(prometheus, "saga_producer_records_sent_total"),
         lambda series: len(series) == 4, "a sample of every worker")  # fmt: skip
    approved, durations = scalar(prometheus, APPROVED), scalar(prometheus, DURATIONS)

    rich, widget = customer(test_catalog, "rich"), product(test_catalog, "widget")
    finals = wait_terminal(place_orders(*[(rich, [(widget, 1)])] * SAGAS))
    assert {event.to_state for event in finals.values()} == {"ORDER_APPROVED"}

    poll(lambda: scalar(prometheus, APPROVED), lambda v: v >= approved + SAGAS,
         f"the approved count past {approved} + {SAGAS}")  # fmt: skip
    poll(lambda: scalar(prometheus, DURATIONS), lambda v: v >= durations + SAGAS,
         f"the duration histogram's count past {durations} + {SAGAS}")  # fmt: skip
    median = scalar(prometheus, "histogram_quantile(0.5, sum by (le) "
                    '(saga_duration_seconds_bucket{outcome="ORDER_APPROVED"}))')  # fmt: skip
    assert 0 < median < 60 and not math.isnan(median)
    steps = query(prometheus, "sum by (step) (saga_step_reply_seconds_count)")
    assert {s["metric"]["step"] for s in steps} >= {"create_order", "approve_order"}
    # Each job is scraped on its own tick: the product's may come after the approval's.
    jobs = lambda: {s["metric"]["job"] for s in query(prometheus, REPLIES_BY_JOB)}  # noqa: E731
    poll(jobs, lambda j: j == {"order", "product", "payment"}, "every participant's replies")

    # Computed at scrape time: lag of every input partition, rows of the saga table.
    lag = query(prometheus, 'saga_consumer_lag{job="orchestrator"}')
    assert {s["metric"]["topic"] for s in lag} == {
        "orders.requested",
        "saga.replies",
        "saga.operations",
    }
    # Rows reach the store (and its estimate) at the next offset commit.
    rows = 'sum(saga_table_rows{job="orchestrator", table="sagas"})'
    poll(lambda: scalar(prometheus, rows), lambda v: v >= SAGAS, "the saga table's rows")


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus.compose.yml"])
def test_the_shipped_scrape_configs_pass_promtool(name: str) -> None:
    result = subprocess.run(
        [str(tool("promtool")), "check", "config", str(DEV_CONFIG / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
