"""dev/grafana's dashboard and dev/prometheus' scrape config agree with what the workers
export: every panel's PromQL names only metrics some worker's registry has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.up_cmd import SERVICE_NAMES
from cli.worker_cmd import SERVICES
from messaging import metrics
from orchestrator.app import OrchestratorService
from participants.order.app import OrderService
from participants.payment.app import PaymentService
from participants.product.app import ProductService

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dev" / "grafana" / "saga-dashboard.json"
SCRAPE_CONFIG = ROOT / "dev" / "prometheus" / "prometheus.yml"
# What the dashboard must show (issue 20): one panel at least names each.
SHOWN = {
    "saga_started_total",
    "saga_ended_total",
    "saga_duration_seconds_bucket",
    "saga_step_reply_seconds_bucket",
    "saga_deadlines_fired_total",
    "saga_resends_total",
    "saga_dead_letters_total",
    "saga_consumer_lag",
    "saga_table_rows",
}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name the four workers' registries can export."""
    services: list[Any] = [
        OrchestratorService(web_port=6980, store="memory://"),
        OrderService(6981, store="memory://"),
        ProductService(6982, store="memory://"),
        PaymentService(6983, store="memory://"),
    ]
    names: set[str] = set()
    for service in services:
        worker = metrics.metrics_of(service.app)
        assert worker is not None, "SAGA_METRICS=0 in the environment?"
        names |= metrics.exported_names(worker.registry)
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions
    (followed by a parenthesis), label lists, matchers, ranges or strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = {"and", "or", "unless", "offset", "bool"}
    found = re.findall(r"\b[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", expr)
    return set(found) - words


def test_metric_names_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, job) (rate(x_bucket{job="a", le!="+Inf"}[5m])))'
        " / ignoring (job) sum without (instance) (y_total offset 5m) and on(job) up"
    )
    assert metric_names(expr) == {"x_bucket", "y_total", "up"}


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        found += [panel, *panel.get("panels", [])]  # rows may hold panels
    return found


def test_every_panel_queries_only_metrics_the_workers_export(exported: set[str]) -> None:
    shown: set[str] = set()
    for panel in panels():
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, (panel["title"], target["expr"])
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries {sorted(unknown)}"
            shown |= names
    assert shown >= SHOWN, sorted(SHOWN - shown)


def test_the_dashboard_uses_the_datasource_it_asks_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    [variable] = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{variable['name']}}}"}
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))


def test_the_scrape_config_lists_each_worker_of_saga_up_on_its_default_port() -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    assert set(jobs) == set(SERVICES)
    for offset, name in enumerate(SERVICE_NAMES):  # saga up: --web-port-base 6066
        assert jobs[name] == [{"targets": [f"127.0.0.1:{6066 + offset}"]}]
