"""The service workers run as child processes on this machine, with prefixed logs: what
`saga up`, the tests, the chaos run and the benchmark start and stop (each worker is a
`saga worker SERVICE` process, cli/worker_cmd.py). The counterpart of local_broker.py,
which runs the brokers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO

SERVICE_NAMES = ("orchestrator", "order", "product", "payment")
DEFAULT_PORTS = {"orchestrator": 6066, "order": 6067, "product": 6068, "payment": 6069}
LOCALHOST = "127.0.0.1"


def parse_worker_counts(values: Iterable[str]) -> dict[str, int]:
    """Workers per service from `N` (every service) and `SERVICE=N` (one service) values:
    ["2", "product=3"] runs 3 product workers and 2 of each other service. A service
    named keeps its count whatever the order; unnamed services get N, else 1.

    Raises ValueError naming the bad value: not a whole number, below 1, an unknown
    service, or a count given twice.
    """
    every: int | None = None
    named: dict[str, int] = {}
    for value in values:
        service, equals, number = value.strip().rpartition("=")
        service = service.strip()
        if equals and service not in SERVICE_NAMES:
            raise ValueError(
                f"{value!r}: unknown service {service!r}; one of: {', '.join(SERVICE_NAMES)}"
            )
        try:
            count = int(number)
        except ValueError:
            raise ValueError(f"{value!r}: expected N or SERVICE=N with a whole number N") from None
        if count < 1:
            raise ValueError(f"{value!r}: a service needs at least 1 worker")
        if not equals:
            if every is not None:
                raise ValueError(f"{value!r}: a count for every service was given already")
            every = count
        elif service in named:
            raise ValueError(f"{value!r}: a count for {service} was given already")
        else:
            named[service] = count
    return {service: named.get(service, every or 1) for service in SERVICE_NAMES}


def worker_name(service: str, number: int) -> str:
    """The first worker of a service is named like it, the next ones product-2, product-3..."""
    return service if number == 1 else f"{service}-{number}"


@dataclass
class Worker:
    name: str
    service: str
    web_port: int
    web_host: str = LOCALHOST  # the address its web views listen on and are reached at
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    lines: list[str] = field(default_factory=list)  # recent output, for failure reports

    @property
    def url(self) -> str:
        return f"http://{self.web_host}:{self.web_port}"


class Workers:
    """Start, watch, kill and stop service workers as separate processes.

    `counts` runs that many workers of a service (default one each of `names`). The n-th
    worker of a service listens on its first worker's port (`ports`, default 6066-6069)
    plus 4 x (n - 1): with the defaults the second workers take 6070-6073, the third
    6074-6077. Each runs `saga worker`, whose data folder is named after its address and
    port, so workers on one machine never share one.
    """

    def __init__(
        self,
        names: Iterable[str] = SERVICE_NAMES,
        *,
        counts: Mapping[str, int] | None = None,
        ports: Mapping[str, int] | None = None,
        echo: Callable[[str], object] | None = None,
        loglevel: str = "info",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.first_ports = {**DEFAULT_PORTS, **(ports or {})}
        self.workers: dict[str, Worker] = {}
        self.name_width = 0
        self.echo = echo
        self.loglevel = loglevel
        self.env = {**os.environ, **(env or {})}
        for service in names:
            for _ in range((counts or {}).get(service, 1)):
                self.add(service)

    def add(
        self, service: str, *, web_host: str = LOCALHOST, web_port: int | None = None
    ) -> Worker:
        """One more worker of `service` (not started): the lowest free number, and by
        default that number's port (see the class)."""
        if service not in SERVICE_NAMES:
            raise ValueError(f"unknown service {service!r}; one of: {', '.join(SERVICE_NAMES)}")
        number = 1
        while worker_name(service, number) in self.workers:
            number += 1
        if web_port is None:
            web_port = self.first_ports[service] + len(SERVICE_NAMES) * (number - 1)
        taken = [
            w.name
            for w in self.workers.values()
            if (w.web_host, w.web_port) == (web_host, web_port)
        ]
        if taken:
            raise ValueError(f"{web_host}:{web_port} is already the address of worker {taken[0]}")
        worker = Worker(worker_name(service, number), service, web_port, web_host)
        self.workers[worker.name] = worker
        self.name_width = max(self.name_width, len(worker.name))  # of the log prefixes
        return worker

    def remove(self, name: str) -> None:
        """Forget a worker that is no longer running (scaled in)."""
        worker = self.workers[name]
        if worker.process is not None and worker.process.poll() is None:
            raise RuntimeError(f"worker {name} still runs: stop it first")
        del self.workers[name]

    def of(self, service: str) -> list[Worker]:
        """The workers of one service, first one first."""
        return [w for w in self.workers.values() if w.service == service]

    def start(self, name: str | None = None) -> None:
        for worker in self._selected(name):
            command = [
                sys.executable, "-m", "cli.main", "worker", worker.service,
                "--web-port", str(worker.web_port), "--web-bind", worker.web_host,
                "--loglevel", self.loglevel,
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
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            worker.lines = [*worker.lines[-199:], line]
            if self.echo:
                self.echo(f"{worker.name:>{self.name_width}} | {line}")

    def _selected(self, name: str | None) -> list[Worker]:
        return [self.workers[name]] if name else list(self.workers.values())

    def wait_ready(self, timeout: float = 120.0, names: Iterable[str] | None = None) -> None:
        """Wait until every worker (of `names`) answers /ready: tables recovered,
        partitions assigned."""
        deadline = time.monotonic() + timeout
        selected = self.workers.values() if names is None else [self.workers[n] for n in names]
        for worker in selected:
            while True:
                self.check_alive()
                try:
                    with urllib.request.urlopen(f"{worker.url}/ready", timeout=1):
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

    def stop(
        self, timeout: float = 60.0, names: Iterable[str] | None = None
    ) -> dict[str, int | None]:
        """SIGTERM every worker (of `names`), wait for a graceful exit, SIGKILL stragglers;
        return their exit codes."""
        selected = (
            list(self.workers.values()) if names is None else [self.workers[n] for n in names]
        )
        running = [w for w in selected if w.process and w.process.poll() is None]
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
        return {w.name: (w.process.returncode if w.process else None) for w in selected}
