"""What the chaos run does to its worker processes: SIGKILL, SIGTERM, restarts, and the
supervision a deployment would give them (restart a worker that exits by itself).

Nothing here blocks: actions are scheduled on a `Scheduler` and `Supervisor.tick` looks
at the processes once per loop of the run.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import signal
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from messaging import exit_codes, local_broker, settings
from messaging.local_workers import Workers

Log = Callable[[str], None]

STOP_TIMEOUT = 30.0  # a worker still running that long after SIGTERM hangs (watchdog: 25 s)
BROKER_SETTLE = 15.0  # after the broker is back, a start-up may still trip on its leaders
REBALANCE_GRACE = 5.0  # a worker counts as down this long after it is ready again
RETIRED_DOWN = 30.0  # a worker stopped for good: its partitions move for about this long


class Scheduler:
    """Actions due at moments of the run (seconds since `begin`)."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self._pending: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # equal times: first scheduled, first run

    def begin(self) -> None:
        self.began = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.began

    def at(self, moment: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._pending, (moment, next(self._order), action))

    def later(self, seconds: float, action: Callable[[], None]) -> None:
        self.at(self.now() + seconds, action)

    def run_due(self) -> None:
        while self._pending and self._pending[0][0] <= self.now():
            _moment, _n, action = heapq.heappop(self._pending)
            action()

    def __len__(self) -> int:
        return len(self._pending)


@dataclass(frozen=True)
class Stop:
    """A SIGTERM during the run: the worker's exit code (None: it hung) and its time."""

    worker: str
    code: int | None
    seconds: float


@dataclass
class WorkerFaults:
    """What happened to the workers, for the report."""

    kills: Counter[str] = field(default_factory=Counter)
    stops: list[Stop] = field(default_factory=list)
    added: list[str] = field(default_factory=list)  # workers started to scale out
    retired: list[Stop] = field(default_factory=list)  # stopped for good to scale in
    hangs: list[str] = field(default_factory=list)  # ignored SIGTERM, or exited non-zero
    forced_stops: int = 0  # stops that stuck (the watchdog ended them) or could not flush
    unplanned_exits: list[str] = field(default_factory=list)  # crashes of running workers
    startup_failures: int = 0  # exits at start-up: the broker went away meanwhile
    # exits at start-up while a broker node of the cluster was down (their last line)
    startup_failures_node_down: list[str] = field(default_factory=list)
    # service -> (from, to) wall clock (time.time()) when one of its workers was down: from
    # its kill, stop or exit until REBALANCE_GRACE after it was ready again
    down: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


class Supervisor:
    """Kills, stops and restarts the workers; restarts those that exit by themselves."""

    def __init__(self, workers: Workers, scheduler: Scheduler, rng: random.Random, log: Log):
        self.workers = workers
        self.scheduler = scheduler
        self.rng = rng
        self.log = log
        self.faults = WorkerFaults()
        self.stopped: set[str] = set()  # down on purpose, not restarted yet
        self.terminating: dict[str, float] = {}  # SIGTERM sent at (monotonic)
        self.launched: dict[str, float] = {}  # when each worker was last started
        self.readied: set[str] = set(workers.workers)  # ready since their last start
        self.last_ready_poll = 0.0
        self.broker_down = (float("inf"), float("inf"))  # (since, until) of its restart
        self.node_down = (float("inf"), float("inf"))  # (since, until) of a node kill
        self.retiring: dict[str, str] = {}  # worker -> the signal stopping it for good
        self.in_service: dict[str, tuple[str, ...]] = {}  # service -> URLs (see endpoints)
        self.down_since: dict[str, float] = {}  # worker -> when it went down (wall clock)
        self._update_service()

    # -- the processes --

    def alive(self, name: str) -> bool:
        process = self.workers.workers[name].process
        return process is not None and process.poll() is None

    def ready(self, name: str) -> bool:
        """Has the worker recovered its tables and is it consuming (its /ready says 200)?"""
        url = self.workers.workers[name].url
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def busy(self) -> bool:
        return bool(self.terminating)

    def all_ready(self) -> bool:
        """Has every running worker been ready since its start?"""
        return all(
            name in self.readied for name in self.workers.workers if name not in self.stopped
        )

    def endpoints(self, service: str) -> tuple[str, ...]:
        """URLs of the service's workers in service: ready since their start and not
        being stopped. Read by other threads: the mapping is replaced, never changed."""
        return self.in_service.get(service, ())

    def _update_service(self) -> None:
        in_service: dict[str, tuple[str, ...]] = {}
        for worker in self.workers.workers.values():
            if worker.name in self.readied and worker.name not in self.stopped:
                in_service[worker.service] = (*in_service.get(worker.service, ()), worker.url)
        self.in_service = in_service

    # -- faults --

    def kill(self, name: str) -> None:
        if name in self.stopped or not self.alive(name):  # down already: a bit later
            self.scheduler.later(2.0, partial(self.kill, name))
            return
        self.stopped.add(name)
        self._update_service()  # out of service before the signal
        self._went_down(name)
        self.workers.kill(name)
        self.faults.kills[name] += 1
        self.log(f"  SIGKILL {name}")
        self.scheduler.later(self.rng.uniform(0.2, 3.0), partial(self.start, name))

    def terminate(self, name: str) -> None:
        """SIGTERM a worker once it consumes; `tick` sees it exit (or hang)."""
        process = self.workers.workers[name].process
        if name in self.stopped or process is None or not self.ready(name):
            self.scheduler.later(2.0, partial(self.terminate, name))
            return
        self.stopped.add(name)
        self._update_service()  # out of service before the signal
        self._went_down(name)
        os.killpg(process.pid, signal.SIGTERM)
        self.terminating[name] = time.monotonic()

    # -- scaling --

    def add(self, service: str) -> str:
        """Start one more worker of `service` (scale out); its name."""
        worker = self.workers.add(service)
        self.faults.added.append(worker.name)
        self.log(f"  scale out: {worker.name}")
        self.readied.discard(worker.name)
        self.stopped.add(worker.name)  # until start() runs it
        self._went_down(worker.name)  # its service rebalances until it is ready
        self.start(worker.name)
        return worker.name

    def retire(self, name: str, how: signal.Signals) -> None:
        """Stop a worker for good (scale in) by SIGTERM or SIGKILL; it is not restarted."""
        if name in self.stopped or not self.alive(name):
            self.scheduler.later(2.0, partial(self.retire, name, how))
            return
        self.retiring[name] = how.name
        if how is signal.SIGTERM:
            self.terminate(name)  # `tick` sees it exit, then forgets it
            return
        self.stopped.add(name)
        self._update_service()
        self.workers.kill(name)
        process = self.workers.workers[name].process
        self.log(f"  scale in: SIGKILL {name}")
        self._forget(name, Stop(name, process.returncode if process else None, 0.0))

    def newest_extra(self, service: str) -> str | None:
        """The service's most recently added worker still running, never its first."""
        running = [w.name for w in self.workers.of(service)[1:] if w.name not in self.stopped]
        return running[-1] if running else None

    def _forget(self, name: str, stop: Stop) -> None:
        since = self.down_since.pop(name, time.time())
        service = self.workers.workers[name].service
        self.faults.down.setdefault(service, []).append((since, since + RETIRED_DOWN))
        self.faults.retired.append(stop)
        del self.retiring[name]
        self.stopped.discard(name)
        self.readied.discard(name)
        self.workers.remove(name)

    def start(self, name: str) -> None:
        """Start a stopped worker once the broker is there (a worker exits at start-up
        when it cannot reach the cluster; its supervisor would wait like this)."""
        if not self.broker_up():
            self.scheduler.later(1.0, partial(self.start, name))
            return
        self.stopped.discard(name)
        if not self.alive(name):
            self.workers.start(name)
            self.launched[name] = time.monotonic()
            self.readied.discard(name)

    # -- the broker, restarted by the run --

    def broker_going_down(self) -> None:
        self.broker_down = (time.monotonic(), float("inf"))

    def broker_back(self) -> None:
        self.broker_down = (self.broker_down[0], time.monotonic())

    def node_going_down(self) -> None:
        """A node of the cluster is about to be killed (the cluster stays up)."""
        self.node_down = (time.monotonic(), float("inf"))

    def node_back(self) -> None:
        self.node_down = (self.node_down[0], time.monotonic())

    def broker_up(self) -> bool:
        """Is the local Kafka there for a worker to start: not being restarted, and one
        of its nodes listening (a cluster with a node down is up)?"""
        if settings.external_bootstrap():
            return True
        restarting = self.broker_down[1] == float("inf") and self.broker_down[0] != float("inf")
        nodes = settings.bootstrap_servers().split(",")
        listening = any(
            local_broker.port_open(host, int(port))
            for host, _, port in (node.strip().rpartition(":") for node in nodes)
        )
        return listening and not restarting

    # -- watching --

    def tick(self) -> None:
        self._check_terminating()
        self._note_ready()
        self._supervise()
        self._update_service()

    def _check_terminating(self) -> None:
        for name, began in list(self.terminating.items()):
            process = self.workers.workers[name].process
            assert process is not None
            code, took = process.poll(), time.monotonic() - began
            if code is None and took < STOP_TIMEOUT:
                continue
            if code is None:
                self.faults.hangs.append(f"{name} ignored SIGTERM for {STOP_TIMEOUT:.0f}s")
                self.workers.kill(name)
            elif code == exit_codes.UNCLEAN_STOP:  # a stuck stop, or one that could not flush
                self.faults.forced_stops += 1
            elif code != 0:
                self.faults.hangs.append(f"{name} exited {code} on SIGTERM")
            del self.terminating[name]
            if name in self.retiring:
                self.log(f"  scale in: SIGTERM {name}: exit {code} after {took:.1f}s")
                self._forget(name, Stop(name, code, took))
                continue
            self.faults.stops.append(Stop(name, code, took))
            self.log(f"  SIGTERM {name}: exit {code} after {took:.1f}s")
            self.scheduler.later(0.5, partial(self.start, name))

    def _note_ready(self) -> None:
        """Which started workers are ready by now (asked once a second)."""
        if time.monotonic() - self.last_ready_poll < 1.0:
            return
        self.last_ready_poll = time.monotonic()
        for name in self.workers.workers:
            if name not in self.readied and self.alive(name) and self.ready(name):
                self.readied.add(name)
                self._back_up(name)

    # -- downtime, for what the broker faults cost (chaos.brokers) --

    def _went_down(self, name: str) -> None:
        self.down_since.setdefault(name, time.time())

    def _back_up(self, name: str) -> None:
        since = self.down_since.pop(name, None)
        if since is not None:
            service = self.workers.workers[name].service
            self.faults.down.setdefault(service, []).append((since, time.time() + REBALANCE_GRACE))

    def close_downtime(self) -> None:
        """Workers still down at the end were down until the end."""
        for name in list(self.down_since):
            self._back_up(name)

    def _supervise(self) -> None:
        """Restart a worker that died on its own (a supervisor's job); note why."""
        for worker in self.workers.dead():
            if worker.name in self.stopped:
                continue
            self._went_down(worker.name)
            code = worker.process.returncode if worker.process else None
            last = worker.lines[-1] if worker.lines else ""
            if self._died_starting_in(worker.name, self.broker_down):
                self.faults.startup_failures += 1
            elif self._died_starting_in(worker.name, self.node_down):
                self.faults.startup_failures_node_down.append(f"{worker.name} exit {code}: {last}")
            else:
                self.faults.unplanned_exits.append(f"{worker.name} exit {code}: {last}")
            self.log(f"  {worker.name} exited by itself (code {code}); restarting")
            self.stopped.add(worker.name)
            self.scheduler.later(1.0, partial(self.start, worker.name))

    def _died_starting_in(self, name: str, down: tuple[float, float]) -> bool:
        """Did it exit before ever being ready, while the broker was away (or a node of
        the cluster, `down`)? A worker exits when it cannot reach the cluster at start-up,
        and a Faust worker started while a node is down can too (see chaos.brokers): its
        supervisor restarts it; that is no crash of a running worker."""
        if name in self.readied:
            return False
        down_from, down_until = down
        launched = self.launched.get(name, 0.0)
        return launched <= down_until + BROKER_SETTLE and time.monotonic() >= down_from
