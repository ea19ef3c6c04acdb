"""What the workers' web views share: content negotiation, errors, HTML from templates.

Every view answers JSON (for programs) or a plain HTML page (for people) at the same URL:
`?format=json|html` wins; otherwise an Accept header naming text/html gets HTML, and
everything else gets JSON. Errors follow the same rule (404 unknown key, 400 bad query
parameter, 503 while partitions move).

HTML pages are Jinja2 templates (`Pages`): each view package keeps its own in its
`templates/` folder, over the shared base layout and macros of messaging/templates.
Autoescaping is on, so every value a page shows is escaped; a view hands its template
the same payload it answers as JSON (or values computed from it), never HTML.

Whole-table scans (`scan_table`) give the event loop back every few hundred rows and stop
at a cap, so a request never stalls the worker's agents for long.

List views answer for the whole table (`whole_table`): the worker asks every other worker
owning partitions of the table for its part (`?scope=local`) and merges the parts; a
worker that does not answer makes the view a 503, never a silently partial list.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlencode

import aiohttp
import faust
import jinja2
from faust.web import Request, Response, View
from faust.web.exceptions import WebError
from yarl import URL

from messaging import takeover
from messaging.client import partition_for
from messaging.faust_app import row_in_flight
from schemas import messages as m

log = logging.getLogger(__name__)

FORMATS = ("json", "html")
LOCAL_SCOPE = "partitions owned by this worker"
ALL_SCOPE = "all partitions, from every worker owning some"
SCOPES = ("all", "local")  # values of ?scope= on list views
# A peer's part of a list view: long enough for a capped scan, short enough that a hung
# worker costs the user a few seconds, not the client's own timeout.
PEER_TIMEOUT = 5.0
SCAN_CHUNK = 500  # rows between two yields to the event loop


# ---- errors ----


class Problem(WebError):
    """An error answered in the negotiated format: {"error": detail, "status": code, ...}."""

    def __init__(self, code: int, detail: str, **extra: Any) -> None:
        super().__init__(detail, code=code, **extra)


def not_found(detail: str, **extra: Any) -> Problem:
    return Problem(404, detail, **extra)


def bad_request(detail: str, **extra: Any) -> Problem:
    return Problem(400, detail, **extra)


MOVING = "partitions are moving: this worker may not hold the rows yet; retry"
WRITING = "the row is being written; retry"
CATCHING_UP = (
    "this worker took over the key's partition and is still processing what its previous "
    "owner did not commit; retry"
)


def partitions_settled(app: faust.App) -> bool:
    """Whether the worker's tables hold what the group assigned it: no rebalance running,
    its partitions recovered from the changelogs, and it is not stopping. While they move,
    or the worker stops, a partition may be closed (given up) or still being restored: a
    row missing from it may exist."""
    tables: Any = app.tables  # TableManagerT does not declare actives_ready
    return not app.rebalancing and bool(tables.actives_ready) and not app.should_stop


def missing(app: faust.App, table: Any, key: str, detail: str, **extra: Any) -> Problem:
    """A key lookup found no row: 404 if the worker's partitions are settled, it has
    caught up with the key's partition since it took it over (messaging.takeover) and no
    row of the key waits to be written (WriteAfterSend), else 503 (retry: the row may be
    on its way)."""
    if not partitions_settled(app):
        return Problem(503, MOVING, **extra)
    if not takeover.caught_up(app, partition_for(key.encode(), table.partitions)):
        return Problem(503, CATCHING_UP, **extra)
    if row_in_flight(app, table, key.encode()):
        return Problem(503, WRITING, **extra)
    return not_found(detail, **extra)


# ---- query parameters ----


def wants_html(request: Request) -> bool:
    """`?format=` wins; else HTML when the Accept header names text/html; else JSON."""
    fmt = request.query.get("format")
    if fmt is not None:
        choice = fmt.strip().lower()
        if choice not in FORMATS:
            raise bad_request(
                f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}",
                parameter="format",
            )
        return choice == "html"
    return "text/html" in request.headers.get("Accept", "").lower()


def int_param(request: Request, name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be a whole number, got {raw!r}", parameter=name) from None
    if not minimum <= value <= maximum:
        raise bad_request(
            f"{name} must be between {minimum} and {maximum}, got {value}", parameter=name
        )
    return value


def choice_param(request: Request, name: str, choices: Sequence[str]) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise bad_request(
            f"unknown {name} {raw!r}; use one of: {', '.join(choices)}",
            parameter=name,
            allowed=list(choices),
        )
    return raw


# ---- JSON helpers ----


def money(value: m.Money | None) -> dict[str, str] | None:
    return None if value is None else {"amount": str(value.amount), "currency": value.currency}


def timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def items(order_items: Iterable[m.OrderItem]) -> list[dict[str, Any]]:
    return [{"product_id": i.product_id, "quantity": i.quantity} for i in order_items]


# ---- HTML ----


def path(*segments: str, **query: Any) -> str:
    """A URL path from raw segments (each percent-encoded) and optional query parameters."""
    url = "/" + "/".join(quote(s, safe="") for s in segments)
    params = {k: v for k, v in query.items() if v is not None}
    return f"{url}?{urlencode(params)}" if params else url


def money_text(value: Mapping[str, str] | None) -> str | None:
    """A money JSON value (see `money`) as "12.50 EUR"."""
    return None if value is None else f"{value['amount']} {value['currency']}"


def dash(value: Any) -> Any:
    """None (and the empty string) shown as a dash."""
    return "\u2013" if value is None or value == "" else value


def clock(value: str | None) -> str:
    """An ISO timestamp as `HH:MM:SS.mmm`."""
    if value is None:
        return dash(None)
    moment = datetime.fromisoformat(value)
    return f"{moment:%H:%M:%S}.{moment.microsecond // 1000:03d}"


TEMPLATES = "templates"  # the folder of a package's templates
SHARED_PACKAGE = "messaging"  # whose templates every package's pages build on


class Pages:
    """The HTML templates of one package: its `templates/*.html.j2`, over the shared ones of
    messaging/templates (the base layout `base.html.j2`, its macros and the error page).

    Autoescaping is on for every template and an undefined name is an error
    (StrictUndefined), not an empty string. Every template is read and compiled once,
    when the Pages is made (`pages`: once per package); rendering only runs
    the compiled code.
    """

    def __init__(self, package: str) -> None:
        loaders: list[jinja2.BaseLoader] = [jinja2.PackageLoader(package, TEMPLATES)]
        if package != SHARED_PACKAGE:
            loaders.append(jinja2.PackageLoader(SHARED_PACKAGE, TEMPLATES))
        self.environment = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            auto_reload=False,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.environment.globals["path"] = path
        self.environment.filters.update(dash=dash, clock=clock, money=money_text)
        self.templates = {
            name: self.environment.get_template(name)
            for name in self.environment.list_templates(extensions=["j2"])
        }

    def render(self, name: str, **context: Any) -> str:
        return self.templates[name].render(**context)


@functools.cache
def pages(package: str) -> Pages:
    """The templates of `package`, made once per process (modules of one package share them)."""
    return Pages(package)


PAGES = pages(SHARED_PACKAGE)


def render_problem(service: str, status: int, detail: str, extra: Mapping[str, Any]) -> str:
    """The HTML page of an error: the status, what went wrong and its details."""
    details = [
        (key, ", ".join(map(str, value)) if isinstance(value, list) else value)
        for key, value in extra.items()
    ]
    return PAGES.render(
        "problem.html.j2", service=service, status=status, detail=detail, details=details
    )


# ---- views ----


class NegotiatedView(View):
    """A Faust view answering JSON or HTML, and errors in the same format."""

    service_name: str = "saga worker"

    def respond(
        self,
        request: Request,
        payload: Mapping[str, Any],
        render: Callable[[Mapping[str, Any]], str],
        *,
        status: int = 200,
    ) -> Response:
        if wants_html(request):
            return self.html(render(payload), status=status)
        return self.json(payload, status=status)

    def problem(self, request: Request, status: int, detail: str, **extra: Any) -> Response:
        payload = {"error": detail, "status": status, **extra}
        try:
            as_html = wants_html(request)
        except Problem:  # a bad ?format= itself: answer as the Accept header asks
            as_html = "text/html" in request.headers.get("Accept", "").lower()
        if not as_html:
            return self.json(payload, status=status)
        return self.html(render_problem(self.service_name, status, detail, extra), status=status)

    async def on_request_error(self, request: Request, exc: WebError) -> Response:
        return self.problem(request, int(exc.code), exc.detail, **exc.extra_context)

    async def dispatch(self, request: Any) -> Any:
        try:
            return await super().dispatch(request)
        except aiohttp.ClientError as exc:  # table_route could not reach the key's owner
            log.warning("web view %s: owner of the key unreachable: %r", request.path, exc)
            return self.problem(request, 503, "the worker owning this key did not answer; retry")
        except Exception as exc:  # a page must answer, not drop the connection
            log.exception("web view %s failed", request.path)
            return self.problem(request, 500, f"internal error: {type(exc).__name__}")


def add_page(app: faust.App, route: str, view: type[View], *, slash: bool = True) -> None:
    """Serve `view` at `route` and (by default) at `route/` too.

    Faust registers a path exactly as given, so the trailing-slash form is a second route
    (a subclass, as `app.page` names the class it decorates).
    """
    base = route.rstrip("/")
    app.page(base, name=view.__name__)(view)
    if slash:
        twin = type(f"{view.__name__}Slash", (view,), {"__module__": view.__module__})
        app.page(base + "/", name=twin.__name__)(twin)


def add_readiness(app: faust.App, service_name: str) -> None:
    """`/ready`: 200 once the worker has recovered its tables and is not rebalancing.

    Faust's web server answers before that (while tables still replay their changelogs),
    so `/` is no sign that the worker consumes; this is.
    """

    def state() -> dict[str, Any]:
        tables: Any = app.tables  # TableManagerT does not declare `recovery`
        recovered = tables.recovery.completed.is_set()
        rebalancing = bool(app.rebalancing)
        in_recovery = bool(app.in_recovery)
        return {
            "ready": recovered and not rebalancing and not in_recovery,
            "recovered": recovered,
            "rebalancing": rebalancing,
            "in_recovery": in_recovery,
            "worker": worker_url(app),
        }

    def render(payload: Mapping[str, Any]) -> str:
        return PAGES.render("ready.html.j2", service=service_name, readiness=payload)

    class Readiness(NegotiatedView):
        async def get(self, request: Request) -> Response:
            payload = state()
            return self.respond(request, payload, render, status=200 if payload["ready"] else 503)

    Readiness.service_name = service_name
    add_page(app, "/ready", Readiness)


Handler = TypeVar("Handler", bound=Callable[..., Any])


def table_route(app: faust.App, table: Any, match_info: str) -> Callable[[Handler], Handler]:
    """`app.table_route`, typed for handlers taking path parameters.

    Faust hashes the path parameter (a str) with the table's raw key serializer, i.e. as
    its UTF-8 bytes: the same partition as the bytes key the agents write.
    """
    return cast(Callable[[Handler], Handler], app.table_route(table=table, match_info=match_info))


def owned_partitions(app: faust.App, table: Any) -> list[int]:
    """The partitions of a table's changelog this worker actively owns."""
    topic = table.changelog_topic.get_topic_name()
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic)


def worker_url(app: faust.App) -> str:
    return str(app.conf.canonical_url)


@dataclass(frozen=True)
class Scan:
    rows: list[tuple[bytes, Any]]
    complete: bool  # False when the cap stopped the scan


async def scan_table(table: Any, cap: int) -> Scan:
    """At most `cap` (key, row) pairs of the partitions this worker owns (RowTable.scan:
    rows that belong to another row, like a product's holds, are not listed).

    Hands the event loop back every SCAN_CHUNK rows. If the partitions change meanwhile
    (a rebalance), answers 503: the client may simply retry.
    """
    rows: list[tuple[bytes, Any]] = []
    try:
        for seen, (key, row) in enumerate(table.scan(), start=1):
            if len(rows) >= cap:
                return Scan(rows, complete=False)
            if row is not None:
                rows.append((key, row))
            if seen % SCAN_CHUNK == 0:
                await asyncio.sleep(0)
    except RuntimeError as exc:  # the store's partition map changed during the scan
        raise Problem(503, "partitions moved during the scan; retry", cause=str(exc)) from exc
    return Scan(rows, complete=True)


# ---- list views over the whole table: every owner's part, merged ----

Payload = dict[str, Any]
Part = Mapping[str, Any]
MergeRows = Callable[[Sequence[Part], int], Payload]


class PeerFailed(Exception):
    """A worker asked for its part of a list view did not give it."""

    def __init__(self, worker: str, reason: str) -> None:
        super().__init__(f"{worker}: {reason}")
        self.worker = worker
        self.reason = reason


def table_owners(
    metadata: Mapping[str, Mapping[str, Sequence[int]]], topic: str
) -> dict[str, list[int]]:
    """Worker URL -> the partitions of `topic` it actively owns, for the workers owning some.

    `metadata` is Faust's `app.router.table_metadata(name)`: every member of the group
    (its canonical URL) with {changelog topic: partitions}, empty if it owns none.
    """
    return {url: sorted(tps[topic]) for url, tps in metadata.items() if tps.get(topic)}


def same_worker(a: str, b: str) -> bool:
    """Whether two canonical URLs name the same worker (as Faust's router compares them)."""
    x, y = URL(a), URL(b)
    return (x.host, x.port) == (y.host, y.port)


def check_coverage(owners: Mapping[str, Sequence[int]], partitions: int) -> None:
    """503 unless the owners hold every partition of the table exactly once."""
    held = sorted(p for owned in owners.values() for p in owned)
    if held != list(range(partitions)):
        missing = sorted(set(range(partitions)) - set(held))
        raise Problem(
            503,
            "the group is rebalancing: not every partition has exactly one worker; retry",
            partitions_without_worker=missing,
        )


def check_parts(owners: Mapping[str, Sequence[int]], parts: Sequence[Part]) -> None:
    """503 if a worker answered for other partitions than the router said it owns."""
    moved = [
        f"{url} answered for {part['partitions']}, expected {list(owned)}"
        for (url, owned), part in zip(owners.items(), parts, strict=True)
        if list(part["partitions"]) != list(owned)
    ]
    if moved:
        raise Problem(503, "partitions moved while the workers were asked; retry", moved=moved)


def merge_parts(parts: Sequence[Part], worker: str, merge_rows: MergeRows) -> Payload:
    """One list payload from the workers' parts (each asked with the same filters).

    Fields every list view has are merged here; `merge_rows(parts, limit)` merges the
    view's own (counts, rows).
    """
    first = parts[0]
    return {
        "scope": ALL_SCOPE,
        "worker": worker,
        "workers": sorted(part["worker"] for part in parts),
        "partitions": sorted(p for part in parts for p in part["partitions"]),
        "complete": all(part["complete"] for part in parts),
        "filter": first["filter"],
        "limit": first["limit"],
        **merge_rows(parts, first["limit"]),
    }


def top_rows(
    parts: Sequence[Part], field: str, limit: int, key: Callable[[Any], Any], *, largest: bool
) -> list[Any]:
    """The first `limit` rows of the parts' `field` lists, by `key`."""
    rows = [row for part in parts for row in part[field]]
    pick = heapq.nlargest if largest else heapq.nsmallest
    return pick(limit, rows, key=key)


async def gather_parts(
    owners: Mapping[str, Sequence[int]],
    me: str,
    local: Callable[[], Awaitable[Part]],
    fetch: Callable[[str], Awaitable[Part]],
) -> list[Part]:
    """Every owner's part, in the order of `owners`: this worker's by `local`, no HTTP.

    Waits for all (each peer is bounded by its timeout) so the 503 names every worker
    that failed, not just the first.
    """
    results = await asyncio.gather(
        *(local() if same_worker(url, me) else fetch(url) for url in owners),
        return_exceptions=True,
    )
    for result in results:  # this worker's own failure (e.g. a rebalance mid-scan) as is
        if isinstance(result, BaseException) and not isinstance(result, PeerFailed):
            raise result
    failed = [r for r in results if isinstance(r, PeerFailed)]
    if failed:
        names = ", ".join(f.worker for f in failed)
        raise Problem(
            503,
            f"no answer from {names} for its part of the list; retry",
            workers={f.worker: f.reason for f in failed},
        )
    return [cast(Part, r) for r in results]


async def fetch_part(
    session: aiohttp.ClientSession,
    worker: str,
    request: Request,
    timeout: float,
    query: Mapping[str, str] | None = None,
) -> Part:
    """A peer's part: the same view and filters (`query` replaces some) with
    `scope=local&format=json`."""
    query = {**request.query, **(query or {}), "scope": "local", "format": "json"}
    url = URL(worker).with_path(request.url.path).with_query(query)
    try:
        async with session.get(
            url,
            headers={"Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as reply:
            text = await reply.text()
            status = reply.status
    except TimeoutError:
        raise PeerFailed(worker, f"no answer within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise PeerFailed(worker, f"unreachable: {exc}") from None
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if status != 200 or not isinstance(body, dict):
        detail = body.get("error") if isinstance(body, dict) else text[:200]
        raise PeerFailed(worker, f"answered {status}: {detail}")
    return body


async def whole_table(
    app: faust.App,
    table: Any,
    request: Request,
    local: Callable[[], Awaitable[Payload]],
    merge_rows: MergeRows,
    query: Mapping[str, str] | None = None,
) -> Payload:
    """A list view's payload: over the whole table, or this worker's part (`?scope=local`).

    `local()` computes the view's rows over this worker's partitions (with `filter`,
    `limit` and `complete`); the scope, worker and partitions fields are added here. The
    other workers are asked with the request's query, `query` replacing some of it (a
    filter resolved here, e.g. a cut-off time from this worker's clock).
    """
    me = worker_url(app)

    async def own_part() -> Payload:
        if not partitions_settled(app):  # a part without the rows on their way: never
            raise Problem(503, MOVING)
        rows = await local()
        partitions = owned_partitions(app, table)
        return {
            "scope": LOCAL_SCOPE,
            "worker": me,
            "workers": [me],
            "partitions": partitions,
            **rows,
        }

    if choice_param(request, "scope", SCOPES) == "local":
        return await own_part()
    topic = table.changelog_topic.get_topic_name()
    owners = table_owners(app.router.table_metadata(table.name), topic)
    check_coverage(owners, table.partitions)
    session = cast(aiohttp.ClientSession, app.http_client)
    parts = await gather_parts(
        owners, me, own_part, lambda url: fetch_part(session, url, request, PEER_TIMEOUT, query)
    )
    check_parts(owners, parts)
    return merge_parts(parts, me, merge_rows)
