"""Headless Chromium driven over its DevTools protocol, for tests that click.

`--dump-dom` shows a page; filling a form and clicking its button needs the browser's
remote debugging: Chromium listens on a port of its choosing (written to
DevToolsActivePort in its profile), and each page answers commands on a websocket
(aiohttp's client). Clicks are real mouse events at the element's place, typing is text
inserted into the focused field: the page's own form posts what the browser would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
STEP_TIMEOUT = 30.0


class Page:
    """One browser tab: navigate, type, click, read."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.socket:
            data = json.loads(message.data)
            if "id" in data:
                self.replies.pop(data["id"]).set_result(data)
            else:
                await self.events.put(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[number] = reply
        await self.socket.send_json({"id": number, "method": method, "params": params})
        answer = await asyncio.wait_for(reply, STEP_TIMEOUT)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def loaded(self) -> None:
        """Wait for the next page load to finish."""
        while True:
            event = await asyncio.wait_for(self.events.get(), STEP_TIMEOUT)
            if event.get("method") == "Page.loadEventFired":
                return

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.loaded()

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the field and type `text` into it (as inserted by a keyboard)."""
        assert await self.evaluate(f"!!document.querySelector({json.dumps(selector)})"), selector
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)

    async def click(self, selector: str) -> None:
        """A mouse click in the middle of the element, and the page it loads."""
        box = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()"
        )
        assert box is not None, f"no {selector} on {await self.evaluate('location.href')}"
        for kind in ("mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                type=kind,
                x=box["x"],
                y=box["y"],
                button="left",
                clickCount=1,
            )
        await self.loaded()

    async def html(self) -> str:
        return str(await self.evaluate("document.documentElement.outerHTML"))


@asynccontextmanager
async def chromium(profile: Path, allowed_port: int) -> AsyncIterator[Page]:
    """A headless Chromium with one page, stopped afterwards."""
    profile.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
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
            "--window-size=1200,1600",
            f"--user-data-dir={profile}",
            f"--explicitly-allowed-ports={allowed_port}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port = await _devtools_port(profile / "DevToolsActivePort", process)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as reply:
                targets = await reply.json()
            (target,) = [t for t in targets if t["type"] == "page"]
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
                page = Page(socket)
                try:
                    await page.send("Page.enable")
                    yield page
                finally:
                    page.reader.cancel()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def _devtools_port(active_port: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + STEP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}")
        if active_port.exists():
            first = active_port.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        await asyncio.sleep(0.1)
    raise TimeoutError(f"chromium wrote no {active_port} in {STEP_TIMEOUT:.0f}s")
