"""The engine's web views: `/sagas` and `/sagas/{saga_id}` (JSON or HTML), for every saga
type a runner runs.

- `/sagas?state=ORDER_REJECTED&limit=50`: counts by state and the latest sagas (by
  `updated_at`) over the whole table: each orchestrator worker owning partitions gives
  its part, merged here (`?scope=local`: only this worker's partitions). Filters (all
  optional, combined): `state`, `saga` (its type's name), `waiting=true|false` (waiting
  for a step, or ended), `stuck_for=10m` (waiting in its state at least that long) or
  `entered_before=<ISO time>` (waiting in a state it entered before then). The worker
  that answers turns `stuck_for` into `entered_before` from its clock and asks the others
  with that, so every part uses one cut-off. `matched` counts the sagas the filters keep.
- `/sagas/{saga_id}`: the saga's row (type, state, current step, attempt, deadline,
  reason, and what its saga type describes of it: e.g. the order) and its timeline read
  from the events topic. Routed by Faust to the worker that owns the key (`table_route`),
  so any orchestrator worker answers for any saga.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import faust
from confluent_kafka import KafkaException, TopicPartition
from faust.web import Request, Response

from messaging import client, topics, tracing
from messaging import web as w
from messaging.durations import DurationError, parse_duration
from messaging.faust_app import utc_now
from messaging.operator_guard import Guard
from messaging.tables import RowTable
from orchestrator.engine.operator_views import page_actions, register_operator_views
from orchestrator.engine.saga import SagaType
from schemas import codec
from schemas import messages as m

SERVICE = "orchestrator"
EVENTS_TOPIC = "saga.events"
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
SCAN_CAP = 100_000  # rows of the sagas table one /sagas request reads at most
TIMELINE_TIMEOUT = 10.0
# The timeline is read from the saga's creation time on (minus clock skew between hosts),
# not from the start of a partition that keeps 30 days of events.
TIMELINE_MARGIN = timedelta(seconds=60)


# ---- the timeline, from saga.events ----


@dataclass(frozen=True)
class Timeline:
    events: list[m.SagaEvent]
    complete: bool  # read up to the end of the partition as it was when asked
    error: str | None = None


def read_timeline(saga_id: str, since: datetime, timeout: float = TIMELINE_TIMEOUT) -> Timeline:
    """The SagaEvents of one saga (blocking: run it in an executor).

    Reads the saga's partition of saga.events from `since` up to the end offset it had
    when called. A re-sent event (same sequence) is listed once.
    """
    key = saga_id.encode()
    partition = client.partition_for(key, topics.partitions(EVENTS_TOPIC))
    found: dict[int, m.SagaEvent] = {}
    consumer = client.consumer()
    try:
        _low, high = consumer.get_watermark_offsets(
            TopicPartition(EVENTS_TOPIC, partition), timeout=timeout
        )
        millis = int(since.timestamp() * 1000)
        (start,) = consumer.offsets_for_times(
            [TopicPartition(EVENTS_TOPIC, partition, millis)], timeout=timeout
        )
        position = start.offset if start.offset >= 0 else high  # -1: nothing that recent
        if position < high:
            consumer.assign([TopicPartition(EVENTS_TOPIC, partition, position)])
        deadline = time.monotonic() + timeout
        while position < high:
            if time.monotonic() > deadline:
                return Timeline(_ordered(found), complete=False, error="timed out")
            record = consumer.poll(0.2)
            if record is None or record.error() is not None:
                continue
            position = (record.offset() or 0) + 1
            if record.key() != key:
                continue
            try:
                event = codec.decode_as(record.value() or b"", m.SagaEvent)
            except codec.MessageDecodeError:
                continue
            found.setdefault(event.sequence, event)
    except KafkaException as exc:
        return Timeline(_ordered(found), complete=False, error=str(exc.args[0]))
    finally:
        consumer.close()
    return Timeline(_ordered(found), complete=True)


def _ordered(found: Mapping[int, m.SagaEvent]) -> list[m.SagaEvent]:
    return [found[sequence] for sequence in sorted(found)]


# ---- filters of /sagas ----


@dataclass(frozen=True)
class SagaFilter:
    """What `/sagas` keeps of the table: every given condition holds."""

    state: str | None = None
    saga: str | None = None  # a saga type's name
    waiting: bool | None = None  # True: waits for a step; False: ended
    entered_before: datetime | None = None  # waits in a state it entered before then
    stuck_for: str | None = None  # as asked (already turned into entered_before)

    def keeps(self, saga_name: str, row: Any) -> bool:
        if self.state is not None and row.state != self.state:
            return False
        if self.saga is not None and saga_name != self.saga:
            return False
        waits = row.step is not None
        if self.waiting is not None and waits != self.waiting:
            return False
        if self.entered_before is not None:
            return waits and entered(row) < self.entered_before
        return True

    def as_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "saga": self.saga,
            "waiting": self.waiting,
            "stuck_for": self.stuck_for,
            "entered_before": w.timestamp(self.entered_before),
        }

    def forwarded(self) -> dict[str, str]:
        """The query the other workers get for their parts: the same filters, with the
        cut-off fixed here (`stuck_for` resolved to `entered_before`)."""
        query = {"state": self.state, "saga": self.saga}
        if self.waiting is not None:
            query["waiting"] = "true" if self.waiting else "false"
        if self.entered_before is not None:
            query["entered_before"] = w.timestamp(self.entered_before)
        return {"stuck_for": "", **{k: v for k, v in query.items() if v is not None}}


def entered(row: Any) -> datetime:
    """When the saga entered its current state; rows written before that was recorded
    give their last update (a later time: such a saga looks as stuck as it surely is)."""
    return row.entered_at or row.updated_at


WAITING = {"true": True, "false": False}


def saga_filter(
    query: Mapping[str, str], states: Sequence[str], saga_names: Sequence[str], now: datetime
) -> SagaFilter:
    """The filters of a `/sagas` query; a bad one is a 400 naming it."""
    waiting = query.get("waiting") or None
    if waiting is not None and waiting not in WAITING:
        raise w.bad_request(f"waiting must be true or false, got {waiting!r}", parameter="waiting")
    stuck_for = query.get("stuck_for") or None
    before_text = query.get("entered_before") or None
    if stuck_for is not None and before_text is not None:
        raise w.bad_request("give stuck_for or entered_before, not both", parameter="stuck_for")
    entered_before = None
    if stuck_for is not None:
        try:
            entered_before = now - parse_duration(stuck_for, "stuck_for")
        except DurationError as exc:
            raise w.bad_request(str(exc), parameter="stuck_for") from None
    elif before_text is not None:
        entered_before = _instant(before_text)
    return SagaFilter(
        state=_choice(query, "state", states),
        saga=_choice(query, "saga", saga_names),
        waiting=None if waiting is None else WAITING[waiting],
        entered_before=entered_before,
        stuck_for=stuck_for,
    )


def _choice(query: Mapping[str, str], name: str, choices: Sequence[str]) -> str | None:
    raw = query.get(name) or None
    if raw is not None and raw not in choices:
        raise w.bad_request(
            f"unknown {name} {raw!r}; use one of: {', '.join(choices)}",
            parameter=name,
            allowed=list(choices),
        )
    return raw


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise w.bad_request(
            f"entered_before {text!r} is not an ISO 8601 time with its offset "
            "(e.g. 2026-12-03T10:00:00+00:00)",
            parameter="entered_before",
        )
    return moment


# ---- JSON ----


def states_of(sagas: Sequence[SagaType]) -> tuple[str, ...]:
    """Every state of every deployed definition, in declaration order."""
    found: dict[str, None] = {}
    for saga in sagas:
        for definition in saga.definitions:
            found.update((state.name, None) for state in definition.states)
    return tuple(found)


def jsonable(value: Any) -> Any:
    """A row's value as JSON: money as {amount, currency}, times in ISO 8601, records
    as objects."""
    if isinstance(value, m.Money):
        return w.money(value)
    if isinstance(value, datetime):
        return w.timestamp(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    return value


def saga_summary(saga: SagaType, row: Any) -> dict[str, Any]:
    return {
        "saga_id": row.saga_id,
        "saga": saga.name,
        "state": row.state,
        "terminal": row.step is None,  # it waits for nothing
        "step": row.step,
        "attempt": row.attempt,
        **jsonable(saga.summary(row)),
        "reason": row.reason,
        "created_at": w.timestamp(row.created_at),
        "updated_at": w.timestamp(row.updated_at),
        "entered_at": w.timestamp(entered(row)),
        "url": w.path("sagas", row.saga_id),
    }


def event_json(event: m.SagaEvent) -> dict[str, Any]:
    return {
        "sequence": event.sequence,
        "at": w.timestamp(event.at),
        "from_state": event.from_state,
        "to_state": event.to_state,
        "trigger": event.trigger,
        "step": event.step,
        "attempt": event.attempt,
        "commands": list(event.commands),
        "reason": event.reason,
        "operator": event.operator,  # whose action caused it, if an operator's
        "terminal": event.terminal,
    }


def saga_detail(saga: SagaType, row: Any, timeline: Timeline, worker: str) -> dict[str, Any]:
    return {
        "saga_id": row.saga_id,
        "saga": saga.name,
        "version": row.version,
        "state": row.state,
        "terminal": row.step is None,  # it waits for nothing
        "step": row.step,
        "attempt": row.attempt,
        "deadline": w.timestamp(row.deadline),
        "reason": row.reason,
        **jsonable(saga.describe(row)),
        "sequence": row.sequence,
        "created_at": w.timestamp(row.created_at),
        "updated_at": w.timestamp(row.updated_at),
        # The saga's trace (messaging/tracing.py), when its row remembers one.
        "trace_id": tracing.trace_id(tracing.valid(getattr(row, "traceparent", None))),
        "entered_at": w.timestamp(entered(row)),
        "timeline": [event_json(e) for e in timeline.events],
        "timeline_complete": timeline.complete,
        "timeline_error": timeline.error,
        "worker": worker,  # the worker owning the saga's partition (requests are routed)
    }


# ---- the whole table: the workers' parts merged ----


def merge_lists(parts: Sequence[Mapping[str, Any]], limit: int) -> dict[str, Any]:
    """The /sagas rows of several workers' parts: counts summed, the latest `limit` kept."""
    counts: Counter[str] = Counter()
    for part in parts:
        counts.update(part["counts"])
    return {
        "total": sum(part["total"] for part in parts),
        "matched": sum(part["matched"] for part in parts),
        "counts": {state: counts[state] for state in parts[0]["counts"]} if parts else {},
        # The saga id breaks ties: the same order whichever worker merges.
        "sagas": w.top_rows(parts, "sagas", limit, key=_latest, largest=True),
    }


def _latest(summary: Mapping[str, Any]) -> tuple[datetime, str]:
    return datetime.fromisoformat(summary["updated_at"]), summary["saga_id"]


# ---- HTML ----


PAGES = w.pages("orchestrator.engine")


def render_list(payload: Mapping[str, Any]) -> str:
    chosen = payload["filter"]["state"]
    # The filter links keep a local scope; the whole table is the default.
    scope = "local" if payload["scope"] == w.LOCAL_SCOPE else None
    limit = payload["limit"]
    filters = [(f"all ({payload['total']})", w.path("sagas", limit=limit, scope=scope), not chosen)]
    filters += [
        (
            f"{state} ({count})",
            w.path("sagas", state=state, limit=limit, scope=scope),
            state == chosen,
        )
        for state, count in payload["counts"].items()
    ]
    return PAGES.render(
        "sagas.html.j2",
        service=f"{SERVICE} · {payload['worker']}",
        sagas=payload,
        filters=filters,
        rows=[(summary, about(summary)) for summary in payload["sagas"]],
        scan_cap=SCAN_CAP,
    )


# The keys of a saga's JSON that every saga has; the others are what its type describes.
SUMMARY_KEYS = frozenset({
    "saga_id", "saga", "state", "terminal", "step", "attempt", "reason", "created_at",
    "updated_at", "entered_at", "url",
})  # fmt: skip
DETAIL_KEYS = SUMMARY_KEYS | {
    "version", "deadline", "sequence", "timeline", "timeline_complete", "timeline_error",
    "worker", "trace_id",
}  # fmt: skip


def text(value: Any) -> str:
    """A JSON value as words: money as "12.50 EUR"."""
    if isinstance(value, Mapping) and set(value) == {"amount", "currency"}:
        return w.money_text(value) or ""
    return "" if value is None else str(value)


def about(summary: Mapping[str, Any]) -> str:
    """What the saga's type says of it in a list: its summary values."""
    return " · ".join(text(v) for k, v in summary.items() if k not in SUMMARY_KEYS and v)


def described(title: str, value: Any) -> dict[str, Any]:
    """A section of what a saga's type describes: its plain values as fields, its lists of
    records as tables."""
    if not isinstance(value, Mapping):
        return {"title": title.capitalize(), "fields": [(title, text(value))], "tables": []}
    return {
        "title": title.capitalize(),
        "fields": [(k.replace("_", " "), text(v)) for k, v in value.items() if not _records(v)],
        "tables": [
            {
                "id": k,
                "headers": list(v[0]),
                "rows": [[text(cell) for cell in record.values()] for record in v],
            }
            for k, v in value.items()
            if _records(v) and v
        ],
    }


def _records(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, Mapping) for v in value)


def render_saga(payload: Mapping[str, Any], actions: Mapping[str, Any] | None = None) -> str:
    """The saga's page; `actions` (operator_views.page_actions) adds the operator's forms."""
    events = payload["timeline"]
    first_at = datetime.fromisoformat(events[0]["at"]) if events else None

    def offset(at: str) -> str:
        if first_at is None:
            return ""
        return f"+{(datetime.fromisoformat(at) - first_at).total_seconds():.3f}s"

    return PAGES.render(
        "saga.html.j2",
        service=f"{SERVICE} · {payload['worker']}",
        saga=payload,
        sections=[described(k, v) for k, v in payload.items() if k not in DETAIL_KEYS],
        events=[(event, offset(event["at"])) for event in events],
        actions=actions,
    )


# ---- registration ----


def register_views(app: faust.App, sagas: RowTable, saga_types: Sequence[SagaType]) -> None:
    """Add the saga views of `saga_types`, whose rows are in `sagas`, to `app`'s web server,
    with the operator actions when the worker's SAGA_OPERATOR_TOKEN is set (a token too
    short or a bad SAGA_OPERATOR_ORIGINS raises ValueError: the worker does not start)."""
    guard = Guard.from_env(w.worker_url(app))
    states = states_of(saga_types)
    saga_names = [saga.name for saga in saga_types]
    by_row = {saga.row: saga for saga in saga_types}

    class SagaList(w.NegotiatedView):
        service_name = SERVICE

        async def get(self, request: Request) -> Response:
            w.wants_html(request)  # a bad ?format= is a 400 before any work
            chosen = saga_filter(request.query, states, saga_names, utc_now())
            limit = w.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)

            async def local() -> dict[str, Any]:
                scan = await w.scan_table(sagas, SCAN_CAP)
                counts = Counter(row.state for _key, row in scan.rows)
                kept = [row for _key, row in scan.rows if chosen.keeps(by_row[type(row)].name, row)]
                latest = heapq.nlargest(limit, kept, key=lambda row: row.updated_at)
                return {
                    "total": len(scan.rows),
                    "matched": len(kept),
                    "complete": scan.complete,
                    "counts": {state: counts.get(state, 0) for state in states},
                    "filter": chosen.as_json(),
                    "limit": limit,
                    "sagas": [saga_summary(by_row[type(row)], row) for row in latest],
                }

            payload = await w.whole_table(
                app, sagas, request, local, merge_lists, query=chosen.forwarded()
            )
            payload["filter"] = chosen.as_json()  # as asked here (the parts got the cut-off)
            return self.respond(request, payload, render_list)

    class SagaDetail(w.NegotiatedView):
        service_name = SERVICE

        @w.table_route(app, sagas, "saga_id")
        async def get(self, request: Request, saga_id: str) -> Response:
            w.wants_html(request)  # a bad ?format= is a 400 before any work
            row = sagas.get(saga_id.encode())
            if row is None:
                raise w.missing(app, sagas, saga_id, f"no saga {saga_id!r}", saga_id=saga_id)
            loop = asyncio.get_running_loop()
            timeline = await loop.run_in_executor(
                None, read_timeline, saga_id, row.created_at - TIMELINE_MARGIN
            )
            payload = saga_detail(by_row[type(row)], row, timeline, w.worker_url(app))
            actions = page_actions(guard, saga_id, time.time())
            return self.respond(request, payload, partial(render_saga, actions=actions))

    w.add_page(app, "/sagas", SagaList)
    w.add_page(app, "/sagas/{saga_id}", SagaDetail)
    register_operator_views(app, guard)
    w.add_readiness(app, SERVICE)
