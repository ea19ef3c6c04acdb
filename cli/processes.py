"""Run the service workers as child processes with prefixed logs (saga up, tests, chaos, bench)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO

SERVICE_NAMES = ("orchestrator", "order", "product", "payment")
DEFAULT_PORTS = {"orchestrator": 6066, "order": 6067, "product": 6068, "payment": 6069}


@dataclass
class Worker:
    name: str
    web_port: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    lines: list[str] = field(default_factory=list)  # recent output, for failure reports


class Workers:
    """Start, watch, kill and stop the four workers as separate processes."""

    def __init__(
        self,
        names: Iterable[str] = SERVICE_NAMES,
        *,
        ports: dict[str, int] | None = None,
        echo: Callable[[str], object] | None = None,
        loglevel: str = "info",
        env: dict[str, str] | None = None,
    ) -> None:
        ports = {**DEFAULT_PORTS, **(ports or {})}
        self.workers = {name: Worker(name, ports[name]) for name in names}
        self.echo = echo
        self.loglevel = loglevel
        self.env = {**os.environ, **(env or {})}

    def start(self, name: str | None = None) -> None:
        for worker in self._selected(name):
            command = [
                sys.executable, "-m", "cli.main", "worker", worker.name,
                "--web-port", str(worker.web_port), "--loglevel", self.loglevel,
            ]  # fmt: skip
            worker.process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # Ctrl-C reaches only the supervisor, which stops us
            )
            assert worker.process.stdout is not None
            threading.Thread(
                target=self._pump, args=(worker, worker.process.stdout), daemon=True
            ).start()

    def _pump(self, worker: Worker, stream: IO[bytes]) -> None:
        width = max(len(n) for n in self.workers)
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            worker.lines = [*worker.lines[-199:], line]
            if self.echo:
                self.echo(f"{worker.name:>{width}} | {line}")

    def _selected(self, name: str | None) -> list[Worker]:
        return [self.workers[name]] if name else list(self.workers.values())

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until every worker answers /ready: tables recovered, partitions assigned."""
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            while True:
                self.check_alive()
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{worker.web_port}/ready", timeout=1
                    ):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"worker {worker.name} not ready in {timeout:.0f}s"
                        ) from None
                    time.sleep(0.3)

    def dead(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.process and w.process.poll() is not None]

    def check_alive(self) -> None:
        for worker in self.dead():
            tail = "\n".join(worker.lines[-30:])
            code = worker.process.returncode if worker.process else None
            raise RuntimeError(f"worker {worker.name} exited with code {code}:\n{tail}")

    def kill(self, name: str) -> None:
        """SIGKILL a worker (crash simulation)."""
        worker = self.workers[name]
        if worker.process and worker.process.poll() is None:
            os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait()

    def restart(self, name: str) -> None:
        self.kill(name)
        self.workers[name].restarts += 1
        self.start(name)

    def stop(self, timeout: float = 60.0) -> dict[str, int | None]:
        """SIGTERM every worker, wait for a graceful exit, SIGKILL stragglers; return codes."""
        running = [w for w in self.workers.values() if w.process and w.process.poll() is None]
        for worker in running:
            assert worker.process is not None
            os.killpg(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in running:
            assert worker.process is not None
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                if self.echo:
                    self.echo(f"{worker.name} did not stop in {timeout:.0f}s; killing it")
                os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait()
        return {
            w.name: (w.process.returncode if w.process else None) for w in self.workers.values()
        }
