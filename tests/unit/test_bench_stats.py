"""The benchmark's arithmetic: rates, pacing, percentiles, the run summary, the order mix."""

from __future__ import annotations

import itertools

import pytest

from bench import stats
from bench.driver import Completion, Run, RunSettings
from bench.load import POOR_CUSTOMER, REGULAR, SOLD_OUT, UNIT_PRICE, BenchCatalog, order_kind


def test_parse_rates() -> None:
    assert stats.parse_rates("100, 300,1000,MAX") == [100.0, 300.0, 1000.0, None]
    assert stats.parse_rates("2.5") == [2.5]


@pytest.mark.parametrize("text", ["", "0", "-5", "fast", "100,,max", "nan", "inf"])
def test_parse_rates_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        stats.parse_rates(text)


def test_rate_label() -> None:
    assert [stats.rate_label(r) for r in (100.0, 2.5, None)] == ["100/s", "2.5/s", "max"]


def test_due_count_follows_a_constant_rate() -> None:
    assert stats.due_count(100, -0.1) == 0
    assert stats.due_count(100, 0.0) == 1  # the first request goes at once
    assert stats.due_count(100, 0.0099) == 1
    assert stats.due_count(100, 0.01) == 2
    assert stats.due_count(100, 1.0) == 101
    assert stats.due_count(0.5, 3.9) == 2


def test_seconds_until_due() -> None:
    assert stats.seconds_until_due(10, 5, 0.2) == pytest.approx(0.3)
    assert stats.seconds_until_due(10, 5, 0.7) == 0.0


def test_schedule_spreads_requests_evenly() -> None:
    # Simulated clock in 1 ms steps: requests go out at i/rate, never in bursts.
    rate, sent_at, sent = 250.0, [], 0
    for millis in range(1000):
        elapsed = millis / 1000
        while sent < stats.due_count(rate, elapsed):
            sent_at.append(elapsed)
            sent += 1
    assert len(sent_at) == 250
    gaps = {round(b - a, 3) for a, b in itertools.pairwise(sent_at)}
    assert gaps == {0.004}


def test_percentile_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert stats.percentile(values, 0) == 1.0
    assert stats.percentile(values, 50) == 2.5
    assert stats.percentile(values, 100) == 4.0
    assert stats.percentile([7.0], 99) == 7.0
    hundred = [float(i) for i in range(1, 101)]
    assert stats.percentile(hundred, 95) == pytest.approx(95.05)
    assert stats.percentile(hundred, 99) == pytest.approx(99.01)


def test_percentile_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_latency_summary() -> None:
    summary = stats.latency_summary([30.0, 10.0, 20.0])
    assert summary == {"p50": 20.0, "p95": 29.0, "p99": 29.8, "max": 30.0, "mean": 20.0}
    assert stats.latency_summary([]) == dict.fromkeys(("p50", "p95", "p99", "max", "mean"))


def test_ratio_and_per_second() -> None:
    assert stats.ratio(50.0, 200.0) == 0.25
    assert stats.ratio(0.0, 200.0) is None
    assert stats.ratio(50.0, None) is None
    assert stats.per_second(30, 2.0) == 15.0
    assert stats.per_second(30, 0.0) == 0.0


def test_run_summary_counts_completions_duplicates_and_unfinished() -> None:
    run = Run(RunSettings(rate=10.0, duration=2.0, max_in_flight=100, drain_timeout=1.0))
    run.started = 100.0
    run.in_flight = {"a": (100.0, REGULAR), "b": (100.1, SOLD_OUT), "c": (100.2, REGULAR)}
    run.offered = 3
    run.complete(Completion("a", "ORDER_APPROVED", 100.05))
    run.complete(Completion("b", "ORDER_REJECTED", 100.3))
    run.complete(Completion("b", "ORDER_REJECTED", 100.4))  # duplicate: ignored
    run.offering_ended, run.finished = 102.0, 103.0
    summary = run.summary()
    assert summary["completed"] == 2
    assert summary["unfinished"] == 1
    assert summary["latency_ms"]["max"] == pytest.approx(200.0)
    assert summary["completed_per_s"] == pytest.approx(2 / 0.3, abs=0.1)
    assert summary["offered_per_s"] == 1.5
    assert summary["outcomes"] == {"ORDER_APPROVED": 1, "ORDER_REJECTED": 1, "unfinished": 1}
    assert summary["outcomes_by_kind"] == {
        REGULAR: {"ORDER_APPROVED": 1, "unfinished": 1},
        SOLD_OUT: {"ORDER_REJECTED": 1},
    }


def test_order_mix_is_one_in_twenty_of_each_failure() -> None:
    kinds = [order_kind(seq) for seq in range(200)]
    assert kinds.count(SOLD_OUT) == 10
    assert kinds.count(POOR_CUSTOMER) == 10
    assert kinds.count(REGULAR) == 180


def test_bench_orders_use_their_catalog() -> None:
    bench = BenchCatalog("r1")
    seeded = bench.seed()
    products = {r.product_id: r.quantity for r in seeded.restocks}
    customers = {t.customer_id: t.amount.amount for t in seeded.top_ups}
    for seq in range(40):
        kind, customer, items = bench.order(seq)
        assert customer in customers
        assert all(product in products for product, _quantity in items)
        assert len({product for product, _quantity in items}) == len(items)
        if kind == SOLD_OUT:
            assert any(products[p] == 0 for p, _q in items)
        if kind == POOR_CUSTOMER:
            assert customers[customer] < UNIT_PRICE * sum(q for _p, q in items)
