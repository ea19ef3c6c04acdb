"""List views over the whole table (messaging.web): owners, checks, merges and fan-out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from messaging import client
from messaging import web as w
from orchestrator.engine import views as saga_views
from orchestrator.sagas import SAGAS
from participants.product import views as stock_views

A, B, C = "http://127.0.0.1:7001", "http://127.0.0.1:7002", "http://127.0.0.1:7003"


def stock_part(worker: str, partitions: list[int], ids: list[str], **extra: Any) -> dict[str, Any]:
    """A /stock?scope=local payload as a worker answers it."""
    products = [
        {
            "product_id": i,
            "available": 1,
            "reserved": 0,
            "sold": 0,
            "returned": 0,
            "restocked": 1,
            "unit_price": {"amount": "1.00", "currency": "EUR"},
            "url": f"/stock/{i}",
        }
        for i in ids
    ]
    return {
        "scope": w.LOCAL_SCOPE,
        "worker": worker,
        "workers": [worker],
        "partitions": partitions,
        "filter": {"prefix": None},
        "limit": 3,
        "matching": len(ids),
        "complete": True,
        "products": products,
        **extra,
    }


def saga(saga_id: str, state: str, updated_at: str) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "saga": "CreateOrderSaga",
        "state": state,
        "terminal": state in ("ORDER_APPROVED", "ORDER_REJECTED"),
        "step": None,
        "attempt": 0,
        "customer_id": "c",
        "total": {"amount": "1.00", "currency": "EUR"},
        "reason": None,
        "created_at": updated_at,
        "updated_at": updated_at,
        "url": f"/sagas/{saga_id}",
    }


def saga_part(
    worker: str, partitions: list[int], counts: dict[str, int], sagas: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "scope": w.LOCAL_SCOPE,
        "worker": worker,
        "workers": [worker],
        "partitions": partitions,
        "total": sum(counts.values()),
        "matched": len(sagas) + 1,  # one more than the limit kept
        "complete": True,
        "counts": {state: counts.get(state, 0) for state in saga_views.states_of(SAGAS)},
        "filter": {"state": None},
        "limit": 2,
        "sagas": sagas,
    }


# ---- owners and consistency checks ----


def test_table_owners_keeps_the_workers_owning_partitions_of_the_topic() -> None:
    metadata: dict[str, dict[str, list[int]]] = {
        A: {"t-changelog": [3, 1], "other": [0]},
        B: {"t-changelog": [0, 2]},
        C: {},  # a member of the group owning nothing of this table
        "http://127.0.0.1:7004": {"t-changelog": []},
    }
    assert w.table_owners(metadata, "t-changelog") == {A: [1, 3], B: [0, 2]}


def test_same_worker_compares_host_and_port() -> None:
    assert w.same_worker("http://127.0.0.1:7001", "http://127.0.0.1:7001/")
    assert not w.same_worker(A, B)


def test_coverage_needs_every_partition_exactly_once() -> None:
    w.check_coverage({A: [0, 2], B: [1, 3]}, 4)
    with pytest.raises(w.Problem) as missing:
        w.check_coverage({A: [0, 2]}, 4)
    assert missing.value.code == 503
    assert missing.value.extra_context["partitions_without_worker"] == [1, 3]
    with pytest.raises(w.Problem):
        w.check_coverage({A: [0, 1, 2], B: [2, 3]}, 4)  # two owners of partition 2
    with pytest.raises(w.Problem):
        w.check_coverage({}, 4)  # nothing assigned yet


def test_a_part_for_other_partitions_than_expected_is_a_503() -> None:
    owners = {A: [0, 2], B: [1, 3]}
    w.check_parts(owners, [stock_part(A, [0, 2], []), stock_part(B, [1, 3], [])])
    with pytest.raises(w.Problem) as moved:
        w.check_parts(owners, [stock_part(A, [0, 2], []), stock_part(B, [1], [])])
    assert moved.value.code == 503
    assert B in moved.value.extra_context["moved"][0]


# ---- merges ----


def test_stock_parts_merge_into_one_list_by_product_id() -> None:
    parts = [
        stock_part(B, [1, 3], ["b", "d", "f"], matching=7),
        stock_part(A, [0, 2], ["a", "c", "e"], matching=4, complete=False),
    ]
    merged = w.merge_parts(parts, A, stock_views.merge_lists)
    assert merged["scope"] == w.ALL_SCOPE
    assert merged["worker"] == A
    assert merged["workers"] == [A, B]
    assert merged["partitions"] == [0, 1, 2, 3]
    assert merged["complete"] is False  # one worker's scan hit its cap
    assert merged["filter"] == {"prefix": None} and merged["limit"] == 3
    assert merged["matching"] == 11
    assert [p["product_id"] for p in merged["products"]] == ["a", "b", "c"]


def test_saga_parts_sum_counts_and_keep_the_latest() -> None:
    parts = [
        saga_part(
            A,
            [0, 2],
            {"ORDER_APPROVED": 2, "CREATING_ORDER": 1},
            [
                saga("a1", "ORDER_APPROVED", "2024-05-01T10:00:03.000+00:00"),
                saga("a2", "CREATING_ORDER", "2024-05-01T10:00:01.000+00:00"),
            ],
        ),
        saga_part(
            B,
            [1, 3],
            {"ORDER_APPROVED": 1, "ORDER_REJECTED": 4},
            [
                saga("b1", "ORDER_REJECTED", "2024-05-01T10:00:02.000+00:00"),
                saga("b0", "ORDER_REJECTED", "2024-05-01T10:00:03.000+00:00"),
            ],
        ),
    ]
    merged = w.merge_parts(parts, B, saga_views.merge_lists)
    assert merged["total"] == 8
    assert merged["counts"]["ORDER_APPROVED"] == 3
    assert merged["counts"]["ORDER_REJECTED"] == 4
    assert merged["counts"]["CREATING_ORDER"] == 1
    assert list(merged["counts"]) == list(saga_views.states_of(SAGAS))  # every state, in order
    assert sum(merged["counts"].values()) == merged["total"]
    assert merged["matched"] == 3 + 3  # each part's count of the sagas its filters kept
    # Latest first, cut to the limit of 2; a tie on updated_at goes by saga id.
    assert [s["saga_id"] for s in merged["sagas"]] == ["b0", "a1"]


def test_merging_one_part_keeps_its_rows() -> None:
    part = stock_part(A, [0, 1, 2, 3], ["a", "b"])
    merged = w.merge_parts([part], A, stock_views.merge_lists)
    assert merged["products"] == part["products"]
    assert merged["matching"] == 2 and merged["workers"] == [A]


def test_pages_render_from_merged_payloads() -> None:
    stock = w.merge_parts(
        [stock_part(A, [0, 2], ["a"]), stock_part(B, [1, 3], ["b"])], A, stock_views.merge_lists
    )
    page = stock_views.render_list(stock)
    assert w.ALL_SCOPE in page and f"{A}, {B}" in page and "/stock/b" in page
    sagas = w.merge_parts(
        [
            saga_part(
                A,
                [0, 1, 2, 3],
                {"ORDER_APPROVED": 1},
                [saga("s1", "ORDER_APPROVED", "2024-05-01T10:00:00.000+00:00")],
            )
        ],
        A,
        saga_views.merge_lists,
    )
    page = saga_views.render_list(sagas)
    assert "/sagas/s1" in page and "scope=local" not in page
    local = saga_views.render_list({**sagas, "scope": w.LOCAL_SCOPE})
    assert "scope=local" in local  # the filter links stay on this worker's part


# ---- fan-out ----


async def test_gather_parts_computes_its_own_part_locally_and_asks_the_others() -> None:
    asked: list[str] = []

    async def local() -> dict[str, Any]:
        return stock_part(A, [0, 2], ["a"])

    async def fetch(url: str) -> dict[str, Any]:
        asked.append(url)
        return stock_part(url, [1, 3], ["b"])

    parts = await w.gather_parts({B: [1, 3], A: [0, 2]}, A, local, fetch)
    assert [p["worker"] for p in parts] == [B, A]  # the owners' order
    assert asked == [B]


async def test_gather_parts_alone_makes_no_request() -> None:
    async def fetch(url: str) -> dict[str, Any]:
        raise AssertionError(f"asked {url}")

    async def local() -> dict[str, Any]:
        return stock_part(A, [0, 1, 2, 3], [])

    assert len(await w.gather_parts({A: [0, 1, 2, 3]}, A, local, fetch)) == 1


async def test_a_failing_peer_is_a_503_naming_every_failed_worker() -> None:
    async def local() -> dict[str, Any]:
        return stock_part(A, [0], [])

    async def fetch(url: str) -> dict[str, Any]:
        raise w.PeerFailed(url, "no answer within 5 s")

    with pytest.raises(w.Problem) as failed:
        await w.gather_parts({A: [0], B: [1], C: [2]}, A, local, fetch)
    assert failed.value.code == 503
    assert B in failed.value.detail and C in failed.value.detail
    assert failed.value.extra_context["workers"] == {
        B: "no answer within 5 s",
        C: "no answer within 5 s",
    }


async def test_this_workers_own_failure_is_raised_as_it_is() -> None:
    async def local() -> dict[str, Any]:
        raise w.Problem(503, "partitions moved during the scan; retry")

    async def fetch(url: str) -> dict[str, Any]:
        return stock_part(url, [1], [])

    with pytest.raises(w.Problem, match="during the scan"):
        await w.gather_parts({A: [0], B: [1]}, A, local, fetch)


# ---- fetching a peer's part over HTTP ----

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start a tiny HTTP server answering /stock with a given handler; yields its URL."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/stock", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        await server.close()


def asked_with(**query: str) -> Any:
    return SimpleNamespace(query=query, url=URL("http://127.0.0.1:1/stock").with_query(query))


async def test_fetch_part_asks_for_the_local_scope_in_json(peer: Any) -> None:
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.update(request.query)
        return web.json_response({"worker": "x", "partitions": [1]})

    url = await peer(handler)
    async with aiohttp.ClientSession() as session:
        body = await w.fetch_part(session, url, asked_with(prefix="t-", format="html"), 5.0)
    assert body == {"worker": "x", "partitions": [1]}
    assert seen == {"prefix": "t-", "format": "json", "scope": "local"}


async def test_fetch_part_asks_with_the_filters_resolved_by_the_asking_worker(peer: Any) -> None:
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.update(request.query)
        return web.json_response({"worker": "x", "partitions": [1]})

    url = await peer(handler)
    asked = asked_with(stuck_for="10m", state="S")
    resolved = {"stuck_for": "", "entered_before": "2026-01-01T12:00:00.000+00:00"}
    async with aiohttp.ClientSession() as session:
        await w.fetch_part(session, url, asked, 5.0, resolved)
    assert seen == {"state": "S", **resolved, "format": "json", "scope": "local"}


async def test_fetch_part_reports_an_error_answer(peer: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "partitions moved during the scan; retry"}, status=503)

    url = await peer(handler)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(w.PeerFailed, match="answered 503: partitions moved") as failed:
            await w.fetch_part(session, url, asked_with(), 5.0)
    assert failed.value.worker == url


async def test_fetch_part_gives_up_after_its_timeout(peer: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.json_response({})

    url = await peer(handler)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(w.PeerFailed, match=r"no answer within 0\.2 s"):
            await w.fetch_part(session, url, asked_with(), 0.2)


async def test_fetch_part_reports_an_unreachable_worker() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(w.PeerFailed, match="unreachable"):
            await w.fetch_part(session, "http://127.0.0.1:1", asked_with(), 5.0)


class WorkerApp:
    """What partitions_settled and the views' error answers read of a Faust app."""

    def __init__(self, rebalancing: bool, actives_ready: bool, should_stop: bool) -> None:
        self.rebalancing = rebalancing
        self.tables = SimpleNamespace(actives_ready=actives_ready)
        self.should_stop = should_stop
        self.conf = SimpleNamespace(canonical_url=A)


def worker_app(rebalancing: bool, actives_ready: bool, should_stop: bool = False) -> Any:
    return WorkerApp(rebalancing, actives_ready, should_stop)


@pytest.mark.parametrize(
    ("rebalancing", "actives_ready", "should_stop", "status"),
    [
        (False, True, False, 404),
        (True, True, False, 503),  # partitions given up, or being assigned
        (False, False, False, 503),  # tables still being restored
        (False, True, True, 503),  # the worker stops: its stores close
    ],
)
def test_a_missing_row_is_a_404_only_once_the_partitions_are_settled(
    rebalancing: bool, actives_ready: bool, should_stop: bool, status: int
) -> None:
    sagas = SimpleNamespace(partitions=4)
    app = worker_app(rebalancing, actives_ready, should_stop)
    problem = w.missing(app, sagas, "s1", "no saga 's1'", saga_id="s1")
    assert (problem.code, problem.extra_context) == (status, {"saga_id": "s1"})
    assert problem.detail == ("no saga 's1'" if status == 404 else w.MOVING)


def test_a_missing_row_is_a_503_until_the_worker_caught_up_with_its_partition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sagas = SimpleNamespace(partitions=4)
    behind = {client.partition_for(b"s1", 4)}
    monkeypatch.setattr(w.takeover, "caught_up", lambda _app, partition: partition not in behind)
    problem = w.missing(worker_app(False, True), sagas, "s1", "no saga 's1'")
    assert (problem.code, problem.detail) == (503, w.CATCHING_UP)
    behind.clear()
    assert w.missing(worker_app(False, True), sagas, "s1", "no saga 's1'").code == 404


async def test_a_worker_whose_partitions_move_gives_no_part_of_a_list() -> None:
    async def local() -> dict[str, Any]:
        raise AssertionError("no rows are read while partitions move")

    request = SimpleNamespace(query={"scope": "local"})
    with pytest.raises(w.Problem) as raised:
        await w.whole_table(worker_app(True, False), None, request, local, lambda *_: {})  # type: ignore[arg-type]
    assert (raised.value.code, raised.value.detail) == (503, w.MOVING)
