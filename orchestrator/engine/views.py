"""The engine's web views: `/sagas` and `/sagas/{saga_id}` (JSON or HTML), for every saga
type a runner runs.

- `/sagas?state=ORDER_REJECTED&limit=50`: counts by state and the latest sagas (by
  `updated_at`) over the whole table: each orchestrator worker owning partitions gives
  its part, merged here (`?scope=local`: only this worker's partitions).
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
    "updated_at", "url",
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
    by_row = {saga.row: saga for saga in saga_types}

    class SagaList(w.NegotiatedView):
        service_name = SERVICE

        async def get(self, request: Request) -> Response:
            w.wants_html(request)  # a bad ?format= is a 400 before any work
            state_filter = w.choice_param(request, "state", states)
            limit = w.int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)

            async def local() -> dict[str, Any]:
                scan = await w.scan_table(sagas, SCAN_CAP)
                counts = Counter(row.state for _key, row in scan.rows)
                chosen = (
                    row
                    for _key, row in scan.rows
                    if state_filter is None or row.state == state_filter
                )
                latest = heapq.nlargest(limit, chosen, key=lambda row: row.updated_at)
                return {
                    "total": len(scan.rows),
                    "complete": scan.complete,
                    "counts": {state: counts.get(state, 0) for state in states},
                    "filter": {"state": state_filter},
                    "limit": limit,
                    "sagas": [saga_summary(by_row[type(row)], row) for row in latest],
                }

            payload = await w.whole_table(app, sagas, request, local, merge_lists)
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
