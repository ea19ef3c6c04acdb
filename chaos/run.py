"""The chaos run: orders placed while workers crash, the broker restarts and bad or
duplicate records arrive; then every invariant is checked (`saga chaos`, `make chaos`).

It runs on its own broker and workers (SAGA_HOME / SAGA_KAFKA_PORT set by the CLI, web
ports of its own), never on the ones other people use. Phases:

  setup    fresh broker data and worker state, topics, a catalog unique to the run, workers
           (with --brokers 3: a three-broker cluster, topics of topics.yaml's `cluster`)
  chaos    orders at a steady rate, cancels of some of them; meanwhile SIGKILL + restart
           of every worker several times, SIGTERM + restart once each, one broker stop +
           start (with --brokers 3 instead: SIGKILL + restart of the node leading most
           saga.replies partitions, later of the active controller; chaos.brokers),
           duplicates of real commands and replies, bad records on every input topic;
           with --scale-to, more workers of every service, then fewer (by SIGTERM, then
           SIGKILL); with --watch-views, key lookups on the web views all along
           (chaos.view_watch)
  settle   wait until every saga is terminal and every worker has caught up
  stop     SIGTERM every worker: each must exit 0 in time
  check    read the final tables, saga.events and saga.dead-letters; chaos.invariants;
           what each broker kill cost the sagas (chaos.brokers)
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from confluent_kafka import KafkaException

from chaos import brokers, invariants, kafka_io, view_watch
from chaos.plan import (
    DEFAULT_CANCEL_SHARE,
    INPUT_TOPICS,
    WAIT_FOR_END,
    BadRecord,
    CancelIntent,
    Intent,
    NodeKill,
    Plan,
    Send,
    make_plan,
)
from chaos.workers import STOP_TIMEOUT, Scheduler, Supervisor, WorkerFaults
from messaging import catalog, client, local_broker, settings, topics
from messaging.dead_letters import DEAD_LETTER_TOPIC
from messaging.faust_app import utc_now
from messaging.local_workers import SERVICE_NAMES, Workers
from orchestrator.sagas.cancel_order import CANCEL_REJECTED, ORDER_CANCELLED
from orchestrator.sagas.create_order import ORDER_APPROVED, ORDER_REJECTED
from schemas import codec

Log = Callable[[str], None]

CHANGELOGS = {
    "sagas": "saga-orchestrator-sagas-changelog",
    "orders": "saga-order-orders-changelog",
    "stock": "saga-product-stock-changelog",
    "accounts": "saga-payment-accounts-changelog",
}
TICK = 0.05
CATCH_UP_TIMEOUT = 180.0
OVERTIME = 180.0  # a scheduled fault may wait that long for its worker to be up


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
    scale_to: int = 1  # workers per service at the peak (see Chaos.plan_scaling)
    watch_views: bool = False  # look up keys that exist on the web views all along
    cancel_share: float = DEFAULT_CANCEL_SHARE  # cancel requests per unique order
    brokers: int = 1  # the local Kafka: one broker, or a cluster of three


@dataclass
class Faults:
    """What was done to the system, for the report."""

    workers: WorkerFaults = field(default_factory=WorkerFaults)
    broker_restarts: int = 0
    broker_note: str = ""
    duplicates: Counter[str] = field(default_factory=Counter)
    bad_sent: int = 0
    undelivered: int = 0  # records our producer could not deliver
    behind: dict[str, int] = field(default_factory=dict)  # uncommitted records at the end
    node_kills: list[brokers.KillRecord] = field(default_factory=list)  # --brokers 3


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
    views: view_watch.ViewFindings | None = None

    def summary(self) -> dict[str, object]:
        """The result as JSON-able data (`saga chaos --json`), for tests and tooling."""
        f = self.findings
        return {
            "passed": self.passed,
            "seed": self.options.seed,
            "sagas": len(self.plan.orders),
            "approved": f.count(ORDER_APPROVED),
            "rejected": f.count(ORDER_REJECTED),
            "approvable": self.approvable,
            "deadline_rejections": f.deadline_rejections,
            "deadline_rejected_percent": self.deadline_rejected_percent,
            "cancels": {
                "requested": len(self.plan.cancels),
                "by_intent": dict(Counter(str(c.intent) for c in self.plan.cancels)),
                "cancelled": f.count(ORDER_CANCELLED),
                "rejected": f.count(CANCEL_REJECTED),
                "rejected_because": dict(f.cancel_reasons),
            },
            "brokers": self.options.brokers,
            "broker_kills": [kill.summary() for kill in self.faults.node_kills],
            "violations": [str(v) for v in f.violations],
            "dead_letters": {
                "injected": len(self.plan.bad_records),
                "matched": f.dead_letters_matched,
                "unexpected": f.dead_letters_unexpected,
                "missing": f.dead_letters_missing,
            },
            "kills": dict(self.faults.workers.kills),
            "stops": [asdict(stop) for stop in self.faults.workers.stops],
            "final_stop": {"codes": self.stop_codes, "seconds": self.stop_seconds},
            "broker_restarts": self.faults.broker_restarts,
            "hangs": self.faults.workers.hangs,
            "scaled_out": self.faults.workers.added,
            "scaled_in": [asdict(stop) for stop in self.faults.workers.retired],
            "views": None if self.views is None else self.views.summary(),
            "unplanned_exits": self.faults.workers.unplanned_exits,
            "startup_failures_node_down": self.faults.workers.startup_failures_node_down,
            "behind": self.faults.behind,
            "phases": self.phases,
        }

    @property
    def approvable(self) -> int:
        """Orders the catalog lets through when nothing goes wrong."""
        return sum(1 for order in self.plan.orders if order.intent is Intent.APPROVE)

    def cancels_by_intent(self) -> dict[CancelIntent, Counter[str]]:
        """Per cancel intent, how many cancels ended in each terminal state."""
        outcomes: dict[CancelIntent, Counter[str]] = {}
        for cancel in self.plan.cancels:
            outcome = self.findings.outcomes.get(cancel.request.cancel_id, "not terminal")
            outcomes.setdefault(cancel.intent, Counter())[outcome] += 1
        return outcomes

    @property
    def deadline_rejected_percent(self) -> float:
        """Of the approvable orders, the share a deadline rejected (faults cost them)."""
        return 100 * self.findings.deadline_rejections / self.approvable if self.approvable else 0.0

    @property
    def passed(self) -> bool:
        graceful = all(code == 0 for code in self.stop_codes.values())
        return (
            self.findings.passed
            and graceful
            and not self.faults.workers.hangs
            and not self.faults.workers.unplanned_exits
            and not self.faults.behind
            and not self.faults.undelivered
            and not any(kill.error for kill in self.faults.node_kills)
            and (self.views is None or not self.views.failures)
        )


# ---- setup ----


def check_isolated() -> None:
    """Refuse to run on the default home: the run wipes its broker data and worker state."""
    default = (settings.PROJECT_ROOT / ".local").resolve()
    if settings.local_home() == default:
        raise RuntimeError(
            f"the chaos run needs its own SAGA_HOME (not {default}): it wipes its broker data"
        )


def fresh_cluster(log: Log, brokers: int = 1) -> bool:
    """Wipe and start the run's local Kafka (one broker, or a cluster of `brokers`), or
    use KAFKA_BOOTSTRAP_SERVERS (returns True then); worker state is wiped either way.
    Topics come from topics.yaml, with the replication of the environment that fits the
    local Kafka (`single`, `cluster`), which the workers are given too."""
    check_isolated()
    home = settings.local_home()
    external = settings.external_bootstrap() is not None
    if external and brokers != 1:
        raise local_broker.BrokerError(
            f"--brokers {brokers} is for the run's own local Kafka; "
            "KAFKA_BOOTSTRAP_SERVERS names an external cluster"
        )
    if not external:
        local_broker.check_broker_count(brokers)
        local_broker.stop(log=log)
        shutil.rmtree(local_broker.paths().single.data, ignore_errors=True)
        shutil.rmtree(local_broker.paths().cluster, ignore_errors=True)
        os.environ[topics.ENVIRONMENT_VARIABLE] = topics.CLUSTER if brokers > 1 else topics.SINGLE
    shutil.rmtree(home / "workers", ignore_errors=True)
    local_broker.start(brokers=None if external else brokers, log=log)
    report = topics.apply(topics.load())
    if not report.ok:
        raise RuntimeError("topic drift: " + "; ".join(report.drift))
    return external


def seed_catalog(plan: Plan) -> None:
    producer = client.producer(**kafka_io.QUIET)
    for restock in plan.catalog.restocks:
        client.send(producer, catalog.STOCK_TOPIC, restock.product_id, restock)
    for top_up in plan.catalog.top_ups:
        client.send(producer, catalog.PAYMENT_TOPIC, top_up.customer_id, top_up)
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
    try:
        workers.start()
        workers.wait_ready(timeout=180)
    except BaseException:  # one did not start: none is left running behind the run
        workers.stop(timeout=STOP_TIMEOUT)
        raise
    return workers


# ---- the chaos phase ----


class Chaos:
    """Places the orders and injects the faults on a schedule while the supervisor
    looks after the workers."""

    def __init__(
        self,
        plan: Plan,
        options: Options,
        workers: Workers,
        watch: kafka_io.TerminalWatch,
        log: Log,
    ) -> None:
        self.plan = plan
        self.watch = watch  # which sagas ended: requests may wait for one (Send.after)
        self.waiting: list[Send] = []  # due, but the saga they wait for has not ended
        self.placed = 0  # of the plan's sends, how many are due (sent or waiting)
        self.sent = 0
        self.placed_at: dict[str, float] = {}  # saga id -> first request sent (wall clock)
        self.options = options
        self.log = log
        self.rng = random.Random(f"{options.seed}-chaos")
        self.scheduler = Scheduler()
        self.supervisor = Supervisor(workers, self.scheduler, self.rng, log)
        self.faults = Faults(workers=self.supervisor.faults)
        self.producer = client.producer(**{"message.timeout.ms": 600_000, **kafka_io.QUIET})
        self.broker_thread: threading.Thread | None = None
        self.node_killer = brokers.NodeKiller(
            log, self.supervisor.node_going_down, self.supervisor.node_back
        )
        self.faults.node_kills = self.node_killer.records
        self.scaling_steps_done = 0

    @property
    def seconds(self) -> float:
        return chaos_seconds(self.options)

    def plan_faults(self, duplicator: kafka_io.Duplicator) -> None:
        at, supervisor = self.scheduler.at, self.supervisor
        for name, times in self.plan.kill_times.items():
            for moment in times:
                at(moment, partial(supervisor.kill, name))
            for _ in range(self.options.terms):
                at(self.rng.uniform(0.15, 0.85) * self.seconds, partial(supervisor.terminate, name))
        if self.plan.broker_restart_at is not None:
            at(self.plan.broker_restart_at, self.restart_broker)
        for kill in self.plan.node_kills:
            at(kill.at, partial(self.kill_node, kill))
        bad = self.plan.bad_records
        for i, record in enumerate(bad):
            at(self.seconds * (i + self.rng.random()) / len(bad), partial(self.inject_bad, record))
        count = self.options.duplicates or max(20, len(self.plan.sends) // 20)
        for _ in range(count):
            at(self.rng.uniform(0.05, 1.0) * self.seconds, partial(self.duplicate, duplicator))
        if self.options.scale_to > 1:
            self.plan_scaling()

    # -- scaling out and in --

    def plan_scaling(self) -> None:
        """Every service out to `scale_to` workers, one more of each per step, in the
        first part of the run; then back in to one, newest first, in the middle: the first
        step in SIGTERMs the extra workers, the next SIGKILLs them, and so on. A step
        waits until the one before is done and every running worker is ready."""
        extra = self.options.scale_to - 1
        steps: list[Callable[[], None]] = [self.scale_out] * extra
        steps += [
            partial(self.scale_in, signal.SIGKILL if n % 2 else signal.SIGTERM)
            for n in range(extra)
        ]
        moments = [0.05 + 0.25 * n / extra for n in range(extra)]
        moments += [0.5 + 0.25 * n / extra for n in range(extra)]
        for number, (moment, step) in enumerate(zip(moments, steps, strict=True)):
            self.scheduler.at(moment * self.seconds, partial(self.scaling_step, number, step))

    def scaling_step(self, number: int, step: Callable[[], None]) -> None:
        if self.scaling_steps_done < number or not self.supervisor.all_ready():
            self.scheduler.later(1.0, partial(self.scaling_step, number, step))
            return
        step()
        self.scaling_steps_done += 1

    def scale_out(self) -> None:
        for service in SERVICE_NAMES:
            self.supervisor.add(service)

    def scale_in(self, how: signal.Signals) -> None:
        for service in SERVICE_NAMES:
            newest = self.supervisor.newest_extra(service)
            if newest is not None:
                self.supervisor.retire(newest, how)

    # -- faults outside the workers --

    def restart_broker(self) -> None:
        if settings.external_bootstrap():
            self.faults.broker_note = "skipped: external cluster (KAFKA_BOOTSTRAP_SERVERS)"
            return

        def bounce() -> None:
            self.supervisor.broker_going_down()
            self.log("  broker: stopping")
            local_broker.stop(log=lambda _line: None)
            time.sleep(self.rng.uniform(1.0, 5.0))
            local_broker.start(log=lambda _line: None)
            self.faults.broker_restarts += 1
            self.supervisor.broker_back()
            self.log("  broker: up again")

        self.broker_thread = threading.Thread(target=bounce, name="broker-restart")
        self.broker_thread.start()

    def kill_node(self, kill: NodeKill) -> None:
        if settings.external_bootstrap():
            self.faults.broker_note = "skipped: external cluster (KAFKA_BOOTSTRAP_SERVERS)"
            return
        self.node_killer.start(kill)

    def inject_bad(self, record: BadRecord) -> None:
        self.producer.produce(
            record.topic, key=record.key, value=record.value, on_delivery=self._delivered
        )
        self.faults.bad_sent += 1

    def duplicate(self, duplicator: kafka_io.Duplicator) -> None:
        if duplicator.inject(self.producer):
            self.faults.duplicates = duplicator.sent

    def _delivered(self, error: object, _message: object) -> None:
        if error is not None:
            self.faults.undelivered += 1

    # -- the loop --

    def tick(self) -> None:
        """Everything due now: requests, scheduled actions, then the supervisor's round.
        (Also while the run settles: a request may still wait for its saga's end.)"""
        self.place_due()
        self.scheduler.run_due()
        self.supervisor.tick()
        self.producer.poll(0)

    def place_due(self) -> None:
        """Send the requests due by now (the plan's moments) whose awaited saga ended,
        or that waited for it long enough."""
        sends, now = self.plan.sends, self.scheduler.now()
        while self.placed < len(sends) and sends[self.placed].at <= now:
            self.waiting.append(sends[self.placed])
            self.placed += 1
        waiting, self.waiting = self.waiting, []
        for send in waiting:
            ended = send.after is None or send.after.encode() in self.watch.terminal
            if ended or now > send.at + WAIT_FOR_END:
                self.send(send)
            else:
                self.waiting.append(send)

    def send(self, send: Send) -> None:
        stamped = replace(send.request, requested_at=utc_now())
        self.producer.produce(
            client.REQUEST_TOPIC,
            key=send.saga_id.encode(),
            value=codec.encode(stamped),
            on_delivery=self._delivered,
        )
        self.sent += 1
        self.placed_at.setdefault(send.saga_id, time.time())

    def run(self) -> None:
        duplicator = kafka_io.Duplicator(
            kafka_io.end_offsets(kafka_io.DUPLICATED_TOPICS),
            f"chaos-{self.plan.run}-",
            {b.key for b in self.plan.bad_records},
            self.rng,
        )
        self.scheduler.begin()
        self.plan_faults(duplicator)
        last_report = 0.0
        try:
            while (
                self.placed < len(self.plan.sends)
                or self.waiting
                or self.scheduler
                or self.supervisor.busy
                or self.node_killer.busy
            ):
                now = self.scheduler.now()
                if now > self.seconds + OVERTIME:
                    self.log(
                        f"  giving up on {len(self.scheduler)} scheduled action(s); "
                        f"{len(self.waiting)} request(s) waiting for their saga's end are "
                        "placed while the run settles"
                    )
                    break
                duplicator.poll()
                self.tick()
                if now - last_report >= 5:
                    last_report = now
                    kills = sum(self.faults.workers.kills.values())
                    self.log(
                        f"  {now:5.0f}s placed {self.sent}/{len(self.plan.sends)}, "
                        f"open sagas {self.watch.open_count}, kills {kills}"
                    )
                time.sleep(TICK)
        finally:
            duplicator.close()
            if self.broker_thread is not None:
                self.broker_thread.join()
            self.node_killer.join()
        self.faults.undelivered += self.producer.flush(120)


def chaos_seconds(options: Options) -> float:
    """How long faults go on: while orders are placed, and a little after."""
    return max(30.0, options.orders / options.rate * 1.2)


# ---- settle, stop, check ----


def wait_terminal(watch: kafka_io.TerminalWatch, chaos: Chaos, timeout: float, log: Log) -> None:
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

    Approvals turn holds into sales after the terminal event, so the tables are final
    only then. A commit that never advances also means endless re-processing
    after the next restart.
    """
    deadline = time.monotonic() + timeout
    zero_in_a_row = 0
    behind: dict[str, int] = {"?": 1}
    while zero_in_a_row < 2 and time.monotonic() < deadline:
        chaos.tick()
        try:
            behind = kafka_io.lag()
        except KafkaException:  # the broker is busy: ask again
            behind = {"?": 1}
        zero_in_a_row = zero_in_a_row + 1 if not behind else 0
        time.sleep(3)
    if behind:
        log(f"  workers still behind after {timeout:.0f}s: {behind}")
    return behind


def observe(plan: Plan, start: kafka_io.Offsets) -> invariants.Observed:
    prefix = f"chaos-{plan.run}-"
    stock, holds = invariants.split_rows(kafka_io.table(CHANGELOGS["stock"], prefix))
    accounts, payments = invariants.split_rows(kafka_io.table(CHANGELOGS["accounts"], prefix))
    orders, cancels = invariants.split_rows(kafka_io.table(CHANGELOGS["orders"], prefix))
    return invariants.Observed(
        sagas=kafka_io.table(CHANGELOGS["sagas"], prefix),
        orders=orders,  # type: ignore[arg-type]
        cancels=cancels.get("cancel", {}),  # type: ignore[arg-type]
        stock=stock,  # type: ignore[arg-type]
        accounts=accounts,  # type: ignore[arg-type]
        events=kafka_io.saga_events(start["saga.events"], prefix),
        dead_letters=kafka_io.dead_letters(start[DEAD_LETTER_TOPIC]),
        holds=holds.get("hold", {}),  # type: ignore[arg-type]
        payments=payments.get("payment", {}),  # type: ignore[arg-type]
    )


def run(options: Options, log: Log = print) -> Result:
    seed = options.seed if options.seed is not None else random.randrange(1_000_000)
    options = replace(options, seed=seed)
    phases: dict[str, float] = {}
    began = time.monotonic()
    run_id = uuid.uuid4().hex[:8]
    log(
        f"chaos run {run_id}: seed {seed}, {options.orders} orders at {options.rate:.0f}/s, "
        f"cancels for {options.cancel_share:.0%} of them, "
        + ("1 broker" if options.brokers == 1 else f"{options.brokers} brokers")
    )
    external = fresh_cluster(log, options.brokers)
    try:
        result = _run(options, run_id, external, phases, began, log)
    finally:  # whatever happened, the run's own Kafka is not left running
        if not options.keep_broker and not external:
            local_broker.stop(log=lambda _line: None)
    phases["total"] = time.monotonic() - began
    return result


def _run(
    options: Options,
    run_id: str,
    external: bool,
    phases: dict[str, float],
    began: float,
    log: Log,
) -> Result:
    """The run on its fresh Kafka: plan, workers, chaos, settle, stop, check."""
    seed = options.seed
    assert seed is not None
    plan = make_plan(
        run_id,
        options.orders,
        seed=seed,
        workers=list(SERVICE_NAMES),
        kills=options.kills,
        chaos_seconds=chaos_seconds(options),
        broker_restart=options.broker_restart,
        bad=options.bad,
        rate=options.rate,
        cancel_share=options.cancel_share,
        brokers=options.brokers,
    )
    start = kafka_io.end_offsets(["saga.events", DEAD_LETTER_TOPIC, *INPUT_TOPICS])
    seed_catalog(plan)
    log_file = settings.local_home() / "workers.log"
    workers = start_workers(log_file, options.web_port_base, options.loglevel)
    phases["setup"] = time.monotonic() - began

    watch = kafka_io.TerminalWatch(plan.saga_ids(), start["saga.events"])
    watch.start()
    chaos = Chaos(plan, options, workers, watch, log)
    views = None
    if options.watch_views:
        wait_seeded(log)
        views = view_watch.ViewWatch(
            existing_keys(plan, watch), chaos.supervisor.endpoints, random.Random(f"{seed}-views")
        )
        views.start()
    stop_codes: dict[str, int | None] = {}
    stop_seconds = 0.0
    try:
        mark = time.monotonic()
        chaos.run()
        phases["chaos"] = time.monotonic() - mark
        mark = time.monotonic()
        wait_terminal(watch, chaos, options.settle_timeout, log)
        chaos.faults.undelivered += chaos.producer.flush(30)  # requests placed meanwhile
        chaos.faults.behind = wait_caught_up(chaos, CATCH_UP_TIMEOUT, log)
        phases["settle"] = time.monotonic() - mark
    finally:
        watch.stop()
        view_findings = None if views is None else views.stop()
        mark = time.monotonic()
        stop_codes = workers.stop(timeout=STOP_TIMEOUT)
        stop_seconds = time.monotonic() - mark
    mark = time.monotonic()
    observed = observe(plan, start)
    findings = invariants.check(plan, observed)
    chaos.supervisor.close_downtime()
    brokers.charge(
        chaos.faults.node_kills, observed.events, chaos.placed_at, chaos.faults.workers.down
    )
    phases["check"] = time.monotonic() - mark
    return Result(
        plan,
        options,
        chaos.faults,
        findings,
        stop_codes,
        stop_seconds,
        phases,
        external,
        view_findings,
    )


def wait_seeded(log: Log) -> None:
    """Until the workers have processed the seed: its products and customers exist."""
    for service, topic in (("product", catalog.STOCK_TOPIC), ("payment", catalog.PAYMENT_TOPIC)):
        if not client.wait_until_processed(settings.APP_IDS[service], topic, timeout=120):
            log(f"  the {service} workers are still behind on {topic}")


def existing_keys(plan: Plan, watch: kafka_io.TerminalWatch) -> view_watch.Keys:
    """The keys a view must answer for, by service: every product and customer of the
    seed; a saga once its first event is seen (its request was processed), an order
    once its saga's OrderCreated transition is (the Order Service stored it)."""
    keys: dict[str, list[str]] = {
        "orchestrator": watch.started,
        "order": watch.orders_created,
        "product": [restock.product_id for restock in plan.catalog.restocks],
        "payment": [top_up.customer_id for top_up in plan.catalog.top_ups],
    }
    return keys.__getitem__
