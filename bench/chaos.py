"""The chaos run: orders placed while workers crash, the broker restarts and bad or
duplicate records arrive; then every invariant is checked (`saga chaos`, `make chaos`).

It runs on its own broker and workers (SAGA_HOME / SAGA_KAFKA_PORT set by the CLI, web
ports of its own), never on the ones other people use. Phases:

  setup    fresh broker data and worker state, topics, a catalog unique to the run, workers
  chaos    orders at a steady rate; meanwhile SIGKILL + restart of every worker several
           times, SIGTERM + restart once each, one broker stop + start, duplicates of
           real commands and replies, bad records on every input topic
  settle   wait until every saga is terminal and every worker has caught up
  stop     SIGTERM every worker: each must exit 0 in time
  check    read the final tables, saga.events and saga.dead-letters; bench.invariants
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from confluent_kafka import KafkaException

from bench import chaos_io, invariants
from bench.chaos_plan import INPUT_TOPICS, BadRecord, Plan, make_plan
from cli.processes import SERVICE_NAMES, Workers
from messaging import client, local_broker, settings, topics
from messaging.dead_letters import DEAD_LETTER_TOPIC
from messaging.faust_app import STOP_HUNG_EXIT_CODE, utc_now
from schemas import codec

Log = Callable[[str], None]

CHANGELOGS = {
    "sagas": "saga-orchestrator-sagas-changelog",
    "orders": "saga-order-orders-changelog",
    "stock": "saga-product-stock-changelog",
    "reservations": "saga-product-reservations-changelog",
    "accounts": "saga-payment-accounts-changelog",
}
STOP_TIMEOUT = 30.0  # a worker still running that long after SIGTERM hangs (watchdog: 25 s)
TICK = 0.05
CATCH_UP_TIMEOUT = 180.0
OVERTIME = 180.0  # a scheduled fault may wait that long for its worker to be up
BROKER_SETTLE = 15.0  # after the broker is back, start-up may still trip on its leaders


@dataclass
class Options:
    orders: int = 2000
    seed: int | None = None
    kills: int = 3  # SIGKILL + restart per worker
    terms: int = 1  # SIGTERM + restart per worker
    broker_restart: bool = True
    rate: float = 40.0  # orders per second
    bad: int | None = None  # bad records (default: scaled with orders)
    duplicates: int | None = None  # re-produced real records (default: scaled)
    web_port_base: int = 7066
    settle_timeout: float = 600.0
    keep_broker: bool = False
    loglevel: str = "warning"  # of the workers, whose output goes to HOME/workers.log


@dataclass
class Faults:
    """What was done to the system, for the report."""

    kills: Counter[str] = field(default_factory=Counter)
    terms: Counter[str] = field(default_factory=Counter)
    term_seconds: list[float] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)  # workers that ignored SIGTERM
    forced_stops: int = 0  # stops that stuck and were ended by the worker's watchdog
    unplanned_exits: list[str] = field(default_factory=list)  # crashes of running workers
    startup_failures: int = 0  # exits at start-up: the broker went away meanwhile
    broker_restarts: int = 0
    broker_note: str = ""
    duplicates: Counter[str] = field(default_factory=Counter)
    bad_sent: int = 0
    undelivered: int = 0  # records our producer could not deliver
    behind: dict[str, int] = field(default_factory=dict)  # uncommitted records at the end


@dataclass
class Result:
    plan: Plan
    options: Options
    faults: Faults
    findings: invariants.Findings
    stop_codes: dict[str, int | None]
    stop_seconds: float
    phases: dict[str, float]
    external: bool

    @property
    def passed(self) -> bool:
        graceful = all(code == 0 for code in self.stop_codes.values())
        return (
            self.findings.passed
            and graceful
            and not self.faults.hangs
            and not self.faults.unplanned_exits
            and not self.faults.behind
            and not self.faults.undelivered
        )


# ---- setup ----


def check_isolated() -> None:
    """Refuse to run on the default home: the run wipes its broker data and worker state."""
    default = (settings.PROJECT_ROOT / ".local").resolve()
    if settings.local_home() == default:
        raise RuntimeError(
            f"the chaos run needs its own SAGA_HOME (not {default}): it wipes its broker data"
        )


def fresh_cluster(log: Log) -> bool:
    """Wipe and start the run's local broker, or use KAFKA_BOOTSTRAP_SERVERS (returns True
    then); worker state is wiped either way. Topics come from topics.yaml."""
    check_isolated()
    home = settings.local_home()
    external = settings.external_bootstrap() is not None
    if not external:
        local_broker.stop(log=log)
        shutil.rmtree(local_broker.paths().data, ignore_errors=True)
    shutil.rmtree(home / "workers", ignore_errors=True)
    local_broker.start(log=log)
    report = topics.apply(topics.load())
    if not report.ok:
        raise RuntimeError("topic drift: " + "; ".join(report.drift))
    return external


def seed_catalog(plan: Plan) -> None:
    producer = client.producer(**chaos_io.QUIET)
    for restock in plan.catalog.restocks:
        client.send(producer, "product.stock", restock.product_id, restock)
    for top_up in plan.catalog.top_ups:
        client.send(producer, "payment.commands", top_up.customer_id, top_up)
    client.flush(producer, timeout=60)


def start_workers(log_file: Path, port_base: int, loglevel: str) -> Workers:
    """The four workers, their output in `log_file`, web ports from `port_base` on."""
    out = log_file.open("w", buffering=1)
    lock = threading.Lock()

    def echo(line: str) -> None:
        with lock:
            out.write(line + "\n")

    ports = {name: port_base + i for i, name in enumerate(SERVICE_NAMES)}
    env = {
        "SAGA_HOME": str(settings.local_home()),
        "SAGA_KAFKA_PORT": str(settings.LOCAL_BROKER_PORT),
    }
    workers = Workers(ports=ports, echo=echo, loglevel=loglevel, env=env)
    workers.start()
    workers.wait_ready(timeout=180)
    return workers


# ---- the chaos phase ----


class Chaos:
    """Places the orders and injects the faults on a schedule; supervises the workers."""

    def __init__(self, plan: Plan, options: Options, workers: Workers, log: Log) -> None:
        self.plan = plan
        self.options = options
        self.workers = workers
        self.log = log
        self.faults = Faults()
        self.rng = random.Random(f"{options.seed}-chaos")
        self.producer = client.producer(**{"message.timeout.ms": 600_000, **chaos_io.QUIET})
        self.pending: list[tuple[float, str, Callable[[], None]]] = []
        self.broker_thread: threading.Thread | None = None
        self.broker_bouncing = threading.Event()
        self.stopped: set[str] = set()  # workers down on purpose, not restarted yet
        self.terminating: dict[str, float] = {}  # SIGTERM sent at (monotonic)
        self.launched: dict[str, float] = {}  # when each worker was last started
        self.readied: set[str] = set(workers.workers)  # ready since their last start
        self.last_ready_poll = 0.0
        self.broker_down = (float("inf"), float("inf"))  # (since, until) of the restart
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return chaos_seconds(self.options)

    def schedule(self, at: float, label: str, action: Callable[[], None]) -> None:
        self.pending.append((at, label, action))
        self.pending.sort(key=lambda item: item[0])

    def plan_faults(self, duplicator: chaos_io.Duplicator) -> None:
        for name, times in self.plan.kill_times.items():
            for at in times:
                self.schedule(at, f"kill {name}", partial(self.kill, name))
            for _ in range(self.options.terms):
                at = self.rng.uniform(0.15, 0.85) * self.seconds
                self.schedule(at, f"stop {name}", partial(self.terminate, name))
        if self.plan.broker_restart_at is not None:
            self.schedule(self.plan.broker_restart_at, "broker restart", self.restart_broker)
        bad = self.plan.bad_records
        for i, record in enumerate(bad):
            at = self.seconds * (i + self.rng.random()) / len(bad)
            self.schedule(at, "bad record", partial(self.inject_bad, record))
        count = self.options.duplicates or max(20, len(self.plan.sends) // 20)
        for _ in range(count):
            at = self.rng.uniform(0.05, 1.0) * self.seconds
            self.schedule(at, "duplicate", partial(self.duplicate, duplicator))

    # -- faults --

    def alive(self, name: str) -> bool:
        process = self.workers.workers[name].process
        return process is not None and process.poll() is None

    def ready(self, name: str) -> bool:
        """Has the worker recovered its tables and is it consuming (its /ready says 200)?"""
        port = self.workers.workers[name].web_port
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=0.5):
                return True
        except OSError:
            return False

    def later(self, seconds: float, label: str, action: Callable[[], None]) -> None:
        self.schedule(self.now() + seconds, label, action)

    def kill(self, name: str) -> None:
        if name in self.stopped or not self.alive(name):  # down already: a bit later
            self.later(2.0, f"kill {name}", partial(self.kill, name))
            return
        self.workers.kill(name)
        self.faults.kills[name] += 1
        self.stopped.add(name)
        self.log(f"  SIGKILL {name}")
        self.later(self.rng.uniform(0.2, 3.0), f"start {name}", partial(self.start, name))

    def terminate(self, name: str) -> None:
        """SIGTERM a running worker; `check_terminating` sees it exit (or hang)."""
        process = self.workers.workers[name].process
        if name in self.stopped or process is None or not self.ready(name):
            self.later(2.0, f"stop {name}", partial(self.terminate, name))
            return
        os.killpg(process.pid, signal.SIGTERM)
        self.stopped.add(name)
        self.terminating[name] = time.monotonic()

    def check_terminating(self) -> None:
        for name, began in list(self.terminating.items()):
            process = self.workers.workers[name].process
            assert process is not None
            code, took = process.poll(), time.monotonic() - began
            if code is None and took < STOP_TIMEOUT:
                continue
            if code is None:
                self.faults.hangs.append(f"{name} ignored SIGTERM for {STOP_TIMEOUT:.0f}s")
                self.workers.kill(name)
            elif code == STOP_HUNG_EXIT_CODE:  # its watchdog ended a stuck stop
                self.faults.forced_stops += 1
            elif code != 0:
                self.faults.hangs.append(f"{name} exited {code} on SIGTERM")
            del self.terminating[name]
            self.faults.terms[name] += 1
            self.faults.term_seconds.append(took)
            self.log(f"  SIGTERM {name}: exit {code} after {took:.1f}s")
            self.later(0.5, f"start {name}", partial(self.start, name))

    def broker_up(self) -> bool:
        if settings.external_bootstrap():
            return True
        port_open = local_broker.port_open("127.0.0.1", settings.LOCAL_BROKER_PORT)
        return port_open and not self.broker_bouncing.is_set()

    def start(self, name: str) -> None:
        """Start a stopped worker once the broker is there (a worker exits at start-up
        when it cannot reach the cluster; its supervisor would wait like this)."""
        if not self.broker_up():
            self.later(1.0, f"start {name}", partial(self.start, name))
            return
        self.stopped.discard(name)
        if not self.alive(name):
            self.workers.start(name)
            self.launched[name] = time.monotonic()
            self.readied.discard(name)

    def restart_broker(self) -> None:
        if settings.external_bootstrap():
            self.faults.broker_note = "skipped: external cluster (KAFKA_BOOTSTRAP_SERVERS)"
            return

        def bounce() -> None:
            self.broker_bouncing.set()
            self.broker_down = (time.monotonic(), float("inf"))
            self.log("  broker: stopping")
            local_broker.stop(log=lambda _line: None)
            time.sleep(self.rng.uniform(1.0, 5.0))
            local_broker.start(log=lambda _line: None)
            self.faults.broker_restarts += 1
            self.broker_down = (self.broker_down[0], time.monotonic())
            self.broker_bouncing.clear()
            self.log("  broker: up again")

        self.broker_thread = threading.Thread(target=bounce, name="broker-restart")
        self.broker_thread.start()

    def inject_bad(self, record: BadRecord) -> None:
        self.producer.produce(
            record.topic, key=record.key, value=record.value, on_delivery=self._delivered
        )
        self.faults.bad_sent += 1

    def duplicate(self, duplicator: chaos_io.Duplicator) -> None:
        if duplicator.inject(self.producer):
            self.faults.duplicates = duplicator.sent

    def _delivered(self, error: object, _message: object) -> None:
        if error is not None:
            self.faults.undelivered += 1

    # -- the loop --

    def now(self) -> float:
        return time.monotonic() - self.started

    def supervise(self) -> None:
        """Restart a worker that died on its own (a supervisor's job); note why."""
        for worker in self.workers.dead():
            if worker.name in self.stopped:
                continue
            code = worker.process.returncode if worker.process else None
            if self.died_starting_without_broker(worker.name):
                self.faults.startup_failures += 1
            else:
                last = worker.lines[-1] if worker.lines else ""
                self.faults.unplanned_exits.append(f"{worker.name} exit {code}: {last}")
            self.log(f"  {worker.name} exited by itself (code {code}); restarting")
            self.stopped.add(worker.name)
            self.later(1.0, f"start {worker.name}", partial(self.start, worker.name))

    def died_starting_without_broker(self, name: str) -> bool:
        """Did it exit before ever being ready, while the broker was away? (A worker
        exits when it cannot reach the cluster at start-up; that is no crash.)"""
        if name in self.readied:
            return False
        down_from, down_until = self.broker_down
        launched = self.launched.get(name, 0.0)
        return launched <= down_until + BROKER_SETTLE and time.monotonic() >= down_from

    def note_ready(self) -> None:
        """Which started workers are ready by now (asked once a second)."""
        if time.monotonic() - self.last_ready_poll < 1.0:
            return
        self.last_ready_poll = time.monotonic()
        for name in self.workers.workers:
            if name not in self.readied and self.alive(name) and self.ready(name):
                self.readied.add(name)

    def tick(self) -> None:
        """Everything due now: scheduled actions, stopping workers, supervision."""
        while self.pending and self.pending[0][0] <= self.now():
            _at, _label, action = self.pending.pop(0)
            action()
        self.check_terminating()
        self.note_ready()
        self.supervise()
        self.producer.poll(0)

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.terminating)

    def run(self, watch: chaos_io.TerminalWatch) -> None:
        sends = self.plan.sends
        duplicator = chaos_io.Duplicator(
            chaos_io.end_offsets(chaos_io.DUPLICATED_TOPICS),
            f"chaos-{self.plan.run}-",
            {b.key for b in self.plan.bad_records},
            self.rng,
        )
        self.started = time.monotonic()
        self.plan_faults(duplicator)
        placed = 0
        last_report = 0.0
        try:
            while placed < len(sends) or self.busy:
                now = self.now()
                if now > self.seconds + OVERTIME:
                    self.log(f"  giving up on {len(self.pending)} scheduled action(s)")
                    break
                due = min(len(sends), int(now * self.options.rate) + 1)
                for request in sends[placed:due]:
                    stamped = replace(request, requested_at=utc_now())
                    self.producer.produce(
                        client.REQUEST_TOPIC,
                        key=request.order_id.encode(),
                        value=codec.encode(stamped),
                        on_delivery=self._delivered,
                    )
                placed = max(placed, due)
                duplicator.poll()
                self.tick()
                if now - last_report >= 5:
                    last_report = now
                    self.log(
                        f"  {now:5.0f}s placed {placed}/{len(sends)}, open sagas "
                        f"{watch.open_count}, kills {sum(self.faults.kills.values())}"
                    )
                time.sleep(TICK)
        finally:
            duplicator.close()
            if self.broker_thread is not None:
                self.broker_thread.join()
        remaining = self.producer.flush(120)
        self.faults.undelivered += remaining


def chaos_seconds(options: Options) -> float:
    """How long faults go on: while orders are placed, and a little after."""
    return max(30.0, options.orders / options.rate * 1.2)


# ---- settle, stop, check ----


def wait_terminal(watch: chaos_io.TerminalWatch, chaos: Chaos, timeout: float, log: Log) -> None:
    deadline = time.monotonic() + timeout
    last = 0.0
    while watch.open_count and time.monotonic() < deadline:
        chaos.tick()
        if time.monotonic() - last >= 10:
            last = time.monotonic()
            log(f"  waiting: {watch.open_count} saga(s) not terminal yet")
        time.sleep(0.5)


def wait_caught_up(chaos: Chaos, timeout: float, log: Log) -> dict[str, int]:
    """Until every worker has committed everything (twice in a row); what is still behind.

    Approvals turn reservations into sales after the terminal event, so the tables are
    final only then. A commit that never advances also means endless re-processing
    after the next restart.
    """
    deadline = time.monotonic() + timeout
    zero_in_a_row = 0
    behind: dict[str, int] = {"?": 1}
    while zero_in_a_row < 2 and time.monotonic() < deadline:
        chaos.tick()
        try:
            behind = chaos_io.lag()
        except KafkaException:  # the broker is busy: ask again
            behind = {"?": 1}
        zero_in_a_row = zero_in_a_row + 1 if not behind else 0
        time.sleep(3)
    if behind:
        log(f"  workers still behind after {timeout:.0f}s: {behind}")
    return behind


def observe(plan: Plan, start: chaos_io.Offsets) -> invariants.Observed:
    prefix = f"chaos-{plan.run}-"
    return invariants.Observed(
        sagas=chaos_io.table(CHANGELOGS["sagas"], prefix),
        orders=chaos_io.table(CHANGELOGS["orders"], prefix),
        stock=chaos_io.table(CHANGELOGS["stock"], prefix),
        reservations=chaos_io.table(CHANGELOGS["reservations"], prefix),
        accounts=chaos_io.table(CHANGELOGS["accounts"], prefix),
        events=chaos_io.saga_events(start["saga.events"], prefix),
        dead_letters=chaos_io.dead_letters(start[DEAD_LETTER_TOPIC]),
    )


def run(options: Options, log: Log = print) -> Result:
    seed = options.seed if options.seed is not None else random.randrange(1_000_000)
    options = replace(options, seed=seed)
    phases: dict[str, float] = {}
    began = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    log(f"chaos run {run_id}: seed {seed}, {options.orders} orders at {options.rate:.0f}/s")
    external = fresh_cluster(log)
    plan = make_plan(
        run_id,
        options.orders,
        seed=seed,
        workers=list(SERVICE_NAMES),
        kills=options.kills,
        chaos_seconds=chaos_seconds(options),
        broker_restart=options.broker_restart,
        bad=options.bad,
    )
    start = chaos_io.end_offsets(["saga.events", DEAD_LETTER_TOPIC, *INPUT_TOPICS])
    seed_catalog(plan)
    log_file = settings.local_home() / "workers.log"
    workers = start_workers(log_file, options.web_port_base, options.loglevel)
    phases["setup"] = time.monotonic() - began

    watch = chaos_io.TerminalWatch([o.request.order_id for o in plan.orders], start["saga.events"])
    watch.start()
    chaos = Chaos(plan, options, workers, log)
    stop_codes: dict[str, int | None] = {}
    stop_seconds = 0.0
    try:
        mark = time.monotonic()
        chaos.run(watch)
        phases["chaos"] = time.monotonic() - mark
        mark = time.monotonic()
        wait_terminal(watch, chaos, options.settle_timeout, log)
        chaos.faults.behind = wait_caught_up(chaos, CATCH_UP_TIMEOUT, log)
        phases["settle"] = time.monotonic() - mark
    finally:
        watch.stop()
        mark = time.monotonic()
        stop_codes = workers.stop(timeout=STOP_TIMEOUT)
        stop_seconds = time.monotonic() - mark
    mark = time.monotonic()
    findings = invariants.check(plan, observe(plan, start))
    phases["check"] = time.monotonic() - mark
    if not options.keep_broker and not external:
        local_broker.stop(log=lambda _line: None)
    phases["total"] = time.monotonic() - began
    return Result(plan, options, chaos.faults, findings, stop_codes, stop_seconds, phases, external)
