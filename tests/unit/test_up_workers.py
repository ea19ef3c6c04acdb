"""`saga up --workers`: how many workers of each service, and the refusals. No broker:
every refusal comes before `saga up` touches one."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import up_cmd
from messaging import topics
from messaging.local_workers import parse_worker_counts


def test_one_of_each_by_default() -> None:
    assert parse_worker_counts([]) == {"orchestrator": 1, "order": 1, "product": 1, "payment": 1}


def test_a_bare_count_is_for_every_service() -> None:
    assert set(parse_worker_counts(["3"]).values()) == {3}


def test_a_named_service_keeps_its_count_whatever_the_order() -> None:
    expected = {"orchestrator": 2, "order": 2, "product": 3, "payment": 2}
    assert parse_worker_counts(["2", "product=3"]) == expected
    assert parse_worker_counts(["product=3", "2"]) == expected
    assert parse_worker_counts(["product=3"])["order"] == 1


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (["0"], "'0': a service needs at least 1 worker"),
        (["product=0"], "'product=0': a service needs at least 1 worker"),
        (["-1"], "at least 1 worker"),
        (["two"], "'two': expected N or SERVICE=N with a whole number N"),
        (["product="], "expected N or SERVICE=N"),
        (["1.5"], "expected N or SERVICE=N"),
        (["shipping=2"], "unknown service 'shipping'; one of: orchestrator, order, product"),
        (["=2"], "unknown service ''"),
        (["2", "3"], "'3': a count for every service was given already"),
        (["product=2", "product=3"], "'product=3': a count for product was given already"),
    ],
)
def test_bad_counts_are_refused_naming_the_value(values: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_worker_counts(values)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--workers", "0"], "a service needs at least 1 worker"),
        (["--workers", "shipping=2"], "unknown service 'shipping'"),
        (["--workers", "300", "--web-port-base", "65000"], "above 65535"),
    ],
)
def test_saga_up_refuses_bad_counts_before_starting_anything(args: list[str], problem: str) -> None:
    result = CliRunner().invoke(up_cmd.up, args)
    assert result.exit_code == 2, result.output
    assert "--workers" in result.output
    assert problem in result.output


def test_workers_beyond_the_partitions_are_noted_as_idle() -> None:
    partitions = topics.partitions("product.commands")
    counts = {"orchestrator": 1, "order": 1, "product": partitions + 2, "payment": 1}
    assert up_cmd.idle_workers(counts) == [
        f"product: {partitions + 2} workers for {partitions} partitions; "
        "2 will idle until another stops"
    ]
    assert up_cmd.idle_workers({**counts, "product": partitions}) == []
