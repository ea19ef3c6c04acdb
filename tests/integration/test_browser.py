"""The HTML saga page in a real headless Chromium: the timeline is there, in order; and an
operator retries a waiting saga from it, through the confirmation step, and the timeline
then shows the retry with the operator.

Chromium is Debian's `chromium` package (installed by `.ci/run`). Missing, the test fails:
the page is part of what the project delivers, so not checking it is not an option.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from messaging.catalog import Catalog
from messaging.local_workers import Workers
from tests.conftest import TEST_OPERATOR_TOKEN
from tests.integration import cdp
from tests.integration.operator_helpers import stopped, wait_state
from tests.integration.order_helpers import customer, place_orders, product, wait_terminal

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
APPROVED_STATES = [
    "CREATING_ORDER",
    "VERIFYING_PRODUCTS",
    "AUTHORIZING_PAYMENT",
    "APPROVING_ORDER",
    "ORDER_APPROVED",
]


def chromium(
    profile: Path, url: str, *args: str, timeout: float = 90.0
) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on `url` with `args` (e.g. --dump-dom)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(`apt-get install -y chromium`; .ci/run does it) to check the HTML saga page"
        )
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            # Chromium refuses some ports (e.g. 6566, 6665-6669); allow the worker's.
            f"--explicitly-allowed-ports={urlsplit(url).port}",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def diagnostics(result: subprocess.CompletedProcess[str]) -> str:
    """Chromium's exit code, output and stderr without its D-Bus noise (no bus in CI)."""
    errors = [line for line in result.stderr.splitlines() if "dbus" not in line]
    return f"exit {result.returncode}; stdout: {result.stdout[:1500]!r}\n" + "\n".join(errors[-30:])


class TimelineRows(HTMLParser):
    """Collects the rows of the element with id="timeline", as rendered in the DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.found = False
        self.depth = 0  # > 0 while inside the timeline element
        self.rows: list[dict[str, str | None]] = []
        self.cells: list[str] = []
        self.in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if self.depth == 0 and attributes.get("id") == "timeline":
            self.found = True
            self.depth = 1
            return
        if self.depth == 0:
            return
        self.depth += 1
        if tag == "tr" and "data-to-state" in attributes:
            self.rows.append(attributes)
            self.cells = []
        elif tag == "td":
            self.in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if self.depth == 0:
            return
        self.depth -= 1
        if tag == "td":
            self.in_cell = False

    def handle_data(self, data: str) -> None:
        if self.depth and self.in_cell and self.rows:
            text = self.rows[-1].get("text") or ""
            self.rows[-1]["text"] = f"{text} {data.strip()}".strip()


@pytest.fixture(scope="module")
def approved_saga(workers: Workers, test_catalog: Catalog) -> str:
    (request,) = place_orders(
        (customer(test_catalog, "rich"), [(product(test_catalog, "widget"), 1)])
    )
    finals = wait_terminal([request])
    assert finals[request.order_id].to_state == "ORDER_APPROVED", finals
    return request.order_id


def saga_page(workers: Workers, saga_id: str) -> str:
    port = workers.workers["orchestrator"].web_port
    return f"http://127.0.0.1:{port}/sagas/{saga_id}?format=html"


def test_chromium_shows_the_saga_timeline(
    workers: Workers, approved_saga: str, tmp_path: Path
) -> None:
    result = chromium(tmp_path / "profile", saga_page(workers, approved_saga), "--dump-dom")
    assert result.returncode == 0, diagnostics(result)
    dom = result.stdout
    assert approved_saga in dom, diagnostics(result)
    parser = TimelineRows()
    parser.feed(dom)
    assert parser.found, f'no element with id="timeline" in the DOM:\n{dom[:2000]}'
    assert [row["data-to-state"] for row in parser.rows] == APPROVED_STATES
    assert [row["data-from-state"] for row in parser.rows[1:]] == APPROVED_STATES[:-1]
    assert [row["data-sequence"] for row in parser.rows] == ["1", "2", "3", "4", "5"]
    # What a reader sees in each row: the transition and what triggered it.
    texts = [row.get("text") or "" for row in parser.rows]
    assert "CREATING_ORDER" in texts[0] and "OrderRequested" in texts[0], texts
    assert "ORDER_APPROVED" in texts[-1] and "OrderApproved" in texts[-1], texts


def test_chromium_renders_a_screenshot(
    workers: Workers, approved_saga: str, tmp_path: Path
) -> None:
    shot = tmp_path / "saga.png"
    result = chromium(
        tmp_path / "profile",
        saga_page(workers, approved_saga),
        f"--screenshot={shot}",
        "--window-size=1200,900",
        "--hide-scrollbars",
    )
    assert result.returncode == 0, diagnostics(result)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def timeline_rows(dom: str) -> list[dict[str, str | None]]:
    parser = TimelineRows()
    parser.feed(dom)
    assert parser.found, f'no element with id="timeline" in the DOM:\n{dom[:2000]}'
    return parser.rows


async def test_chromium_retries_a_waiting_saga_through_the_confirmation(
    workers: Workers, test_catalog: Catalog, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        chromium(tmp_path / "profile", "http://127.0.0.1:1/")  # fails saying what to install
    rich, widget = customer(test_catalog, "rich"), product(test_catalog, "widget")
    port = workers.workers["orchestrator"].web_port
    with stopped(workers, "order"):  # the saga waits in CREATING_ORDER, re-sending for ever
        (held,) = place_orders((rich, [(widget, 1)]))
        saga_id = held.order_id
        wait_state(saga_id, "CREATING_ORDER")
        async with cdp.chromium(tmp_path / "profile", port) as page:
            await page.open(saga_page(workers, saga_id))
            await page.type_into("#retry-reason", "the order service is back")
            await page.type_into("#retry-operator", "ops-chromium")
            await page.type_into("#retry-token", TEST_OPERATOR_TOKEN)
            await page.click("#retry-button")

            # The confirmation step: what will happen, and a button to confirm.
            assert await page.evaluate("document.title") == (
                f"Retry saga {saga_id}? · orchestrator · http://127.0.0.1:{port}"
            )
            assert "re-sends the command" in await page.evaluate(
                "document.getElementById('what-happens').innerText"
            )
            await page.click("#confirm-button")

            answer = await page.evaluate("document.getElementById('answer').innerText")
            assert answer.startswith("re-sent CreateOrder of create_order (attempt "), answer

            # The timeline shows the retry and who asked for it (its event may land a
            # moment after the answer: another partition).
            await page.click("#timeline-link")
            deadline = time.monotonic() + 30
            while True:
                rows = timeline_rows(await page.html())
                retried = [row for row in rows if "RetrySaga" in (row.get("text") or "")]
                if retried or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
                await page.open(saga_page(workers, saga_id))
            assert len(retried) == 1, rows
            assert retried[0]["data-from-state"] == retried[0]["data-to-state"] == "CREATING_ORDER"
            assert "ops-chromium" in (retried[0].get("text") or ""), retried
            assert "RetrySaga by ops-chromium: the order service is back" in (
                retried[0].get("text") or ""
            )
    finals = wait_terminal([held], timeout=180)  # the Order Service is back: it ends
    assert finals[saga_id].to_state == "ORDER_APPROVED", finals
