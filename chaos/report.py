"""The table a chaos run prints: what was injected, what was found, PASS or FAIL."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from chaos.brokers import KillRecord
from chaos.run import Result
from messaging.local_workers import SERVICE_NAMES
from orchestrator.sagas.cancel_order import CANCEL_REJECTED, ORDER_CANCELLED
from orchestrator.sagas.create_order import ORDER_APPROVED, ORDER_REJECTED

LISTED_PER_CHECK = 8  # violations printed one by one per check; the rest are counted


def _counts(counter: Counter[str], names: Iterable[str]) -> str:
    return ", ".join(f"{name} {counter[name]}" for name in names)


def _row(label: str, value: object, note: str = "") -> str:
    return f"  {label:<30} {value!s:>8}  {note}".rstrip()


def injected(result: Result) -> list[str]:
    plan, faults = result.plan, result.faults
    intents = Counter(str(o.intent) for o in plan.orders)
    originals = plan.by_id()
    identical = sum(1 for d in plan.duplicates if d == originals[d.order_id].request)
    workers = faults.workers
    slowest = max((stop.seconds for stop in workers.stops), default=0.0)
    stopped = Counter(stop.worker for stop in workers.stops)
    bad_kinds = Counter(str(b.kind) for b in plan.bad_records)
    bad_topics = len({b.topic for b in plan.bad_records})
    duplicates = faults.duplicates
    cancels = Counter(str(c.intent) for c in plan.cancels)
    lines = [
        "INJECTED",
        _row(
            "order requests", len(plan.orders) + len(plan.duplicates), f"{len(plan.orders)} sagas"
        ),
        _row("  by intent", "", ", ".join(f"{k} {v}" for k, v in sorted(intents.items()))),
        _row(
            "  duplicate order ids",
            len(plan.duplicates),
            f"{identical} identical, {len(plan.duplicates) - identical} other content",
        ),
        _row("cancel requests", len(plan.cancels), "one CancelOrderSaga each"),
        _row("  by target", "", ", ".join(f"{k} {v}" for k, v in sorted(cancels.items()))),
        _row("SIGKILL + restart", workers.kills.total(), _counts(workers.kills, SERVICE_NAMES)),
        _row(
            "SIGTERM + restart",
            len(workers.stops),
            f"{_counts(stopped, SERVICE_NAMES)}; slowest stop {slowest:.1f}s",
        ),
        *_broker_faults(result),
        _row("workers added (scale out)", len(workers.added), ", ".join(workers.added)),
        _row(
            "workers stopped (scale in)",
            len(workers.retired),
            ", ".join(f"{stop.worker} exit {stop.code}" for stop in workers.retired),
        ),
        _row("duplicate records", sum(duplicates.values()), _counts(duplicates, duplicates)),
        _row("bad records", faults.bad_sent, f"on {bad_topics} topics"),
    ]
    lines += [_row(f"  {kind}", count) for kind, count in sorted(bad_kinds.items())]
    return lines


def _broker_faults(result: Result) -> list[str]:
    faults = result.faults
    if result.options.brokers == 1:
        broker = faults.broker_note or ("" if faults.broker_restarts else "not planned")
        return [_row("broker stop + start", faults.broker_restarts, broker)]
    kills = faults.node_kills
    note = faults.broker_note or ("" if kills else "not planned")
    lines = [_row("broker node SIGKILL + restart", len(kills), note)]
    return lines + [f"    {_kill_line(kill)}" for kill in kills]


def _kill_line(kill: KillRecord) -> str:
    """What one broker kill did and cost."""
    if kill.node is None:
        return f"{kill.target}: {kill.error or 'not done'}"
    down = ""
    if kill.restarted_at is not None and kill.killed_at is not None:
        down = f" down {kill.restarted_at - kill.killed_at:.1f}s,"
    back = ""
    if kill.answered_after is not None:
        back = f" answered {kill.answered_after:.1f}s after its restart,"
    if kill.in_sync_after is not None:
        back += f" in every ISR {kill.in_sync_after:.1f}s later;"
    return (
        f"node {kill.node} ({kill.led}):{down}{back} in its window: longest stall"
        f" {kill.longest_stall:.1f}s, deadlines {kill.deadlines} with no worker down"
        f" ({kill.deadlines_during_worker_faults} while one was down)"
        + (f"; FAILED: {kill.error}" if kill.error else "")
    )


def cancels(result: Result) -> list[str]:
    """How the cancels ended, per target."""
    f = result.findings
    reasons = ", ".join(f"{why} {n}" for why, n in f.cancel_reasons.most_common())
    lines = [
        _row("cancels: order cancelled", f.count(ORDER_CANCELLED)),
        _row("cancels: rejected", f.count(CANCEL_REJECTED), reasons[:300]),
    ]
    for intent, outcomes in sorted(result.cancels_by_intent().items()):
        ended = ", ".join(f"{state} {n}" for state, n in sorted(outcomes.items()))
        lines.append(_row(f"  {intent}", sum(outcomes.values()), ended))
    return lines


def found(result: Result) -> list[str]:
    f, faults, workers = result.findings, result.faults, result.faults.workers
    terminal = len(f.outcomes)
    codes = result.stop_codes
    graceful = sum(1 for code in codes.values() if code == 0)
    stop_note = f"exit 0 in {result.stop_seconds:.1f}s"
    if graceful < len(codes):
        stop_note += f"; exit codes {codes}"
    matched = f"{f.dead_letters_matched}/{len(result.plan.bad_records)}"
    return [
        "FOUND",
        _row("sagas approved", f.count(ORDER_APPROVED)),
        _row(
            "sagas rejected",
            f.count(ORDER_REJECTED),
            f"{f.deadline_rejections} approvable ones by a deadline: "
            f"{result.deadline_rejected_percent:.1f}% of {result.approvable}",
        ),
        *cancels(result),
        _row("sagas not terminal", len(result.plan.saga_ids()) - terminal),
        _row("events repeated (same seq)", f.repeated_events, "re-emitted after a crash"),
        _row("invariant violations", len(f.violations)),
        _row("dead letters matched", matched, f"{f.dead_letters_repeated} repeated on replay"),
        _row("dead letters unexpected", f.dead_letters_unexpected),
        _row("dead letters missing", f.dead_letters_missing),
        _row(
            "unplanned worker exits",
            len(workers.unplanned_exits),
            "; ".join(workers.unplanned_exits)[:300],
        ),
        _row("worker start-up failures", workers.startup_failures, "broker unreachable; restarted"),
        *_node_down_startups(workers.startup_failures_node_down),
        _row("workers hung / failed stop", len(workers.hangs), "; ".join(workers.hangs)),
        _row("stops not clean", workers.forced_stops, "stuck, or could not flush: exit 75"),
        _row("final SIGTERM stop", f"{graceful}/{len(codes)}", stop_note),
        _row("records the run lost", faults.undelivered, "(its own producer)"),
        _row("uncommitted at the end", sum(faults.behind.values()), _behind(faults.behind)),
        *views(result),
    ]


def _node_down_startups(exits: list[str]) -> list[str]:
    """Workers that exited at start-up while a node of the cluster was down."""
    if not exits:
        return []
    return [_row("  while a broker node was down", len(exits), "; ".join(exits)[:300])]


def views(result: Result) -> list[str]:
    """What the key lookups on the web views found (--watch-views)."""
    if result.views is None:
        return []
    v = result.views
    retried = ", ".join(f"{why} {n}" for why, n in v.retried.most_common())
    owners = sum(len(urls) for urls in v.owners.values())
    return [
        _row("view lookups answered", v.lookups.total(), _counts(v.lookups, SERVICE_NAMES)),
        _row("  answered by owners", owners, "workers that owned a key when asked"),
        _row("  requests retried", v.retried.total(), retried[:300]),
        _row("  longest wait for a row", f"{v.longest_wait:.1f}s"),
        _row("view lookups failed", len(v.failures), "; ".join(v.failures)[:300]),
    ]


def _behind(behind: dict[str, int]) -> str:
    return ", ".join(f"{where} {count}" for where, count in sorted(behind.items()))


def violations(result: Result) -> list[str]:
    found_ = result.findings.violations
    if not found_:
        return []
    by_check = Counter(v.check for v in found_)
    lines = ["VIOLATIONS " + ", ".join(f"{c} {n}" for c, n in by_check.most_common())]
    for check in by_check:  # a few of each kind: one kind must not hide the others
        lines += [f"  {v}" for v in found_ if v.check == check][:LISTED_PER_CHECK]
    return lines


def render(result: Result) -> str:
    phases = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in result.phases.items())
    options = result.options
    head = (
        f"chaos run {result.plan.run}: seed {options.seed}, {options.orders} orders"
        f" at {options.rate:.0f}/s, {len(result.plan.cancels)} cancels,"
        f" {options.kills} kill(s) per worker, "
        + ("1 broker" if options.brokers == 1 else f"{options.brokers} brokers")
        + (f", up to {options.scale_to} workers per service" if options.scale_to > 1 else "")
    )
    verdict = "PASS" if result.passed else "FAIL"
    return "\n".join(
        [head, *injected(result), *found(result), *violations(result), f"TIME  {phases}", verdict]
    )
