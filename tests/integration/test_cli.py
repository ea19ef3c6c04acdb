"""The `saga` command as a user runs it: a subprocess, its exit code, stdout and stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest

from messaging import client
from messaging.catalog import Catalog
from messaging.local_workers import Workers
from schemas import messages as m
from tests.integration.order_helpers import customer, product, wait_consumed

pytestmark = pytest.mark.integration

EXIT_REJECTED = 3
APPROVED_STATES = [
    "CREATING_ORDER",
    "VERIFYING_PRODUCTS",
    "AUTHORIZING_PAYMENT",
    "APPROVING_ORDER",
    "ORDER_APPROVED",
]


def saga(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    """Non-zero exit, the expected words on stderr, and no traceback anywhere."""
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode != 0, output
    assert "Traceback" not in result.stdout + result.stderr, output
    for text in expected:
        assert text in result.stderr, output


def requested_id(stdout: str) -> str:
    match = re.search(r"^order (\S+) requested$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1)


def states_in(text: str) -> list[str]:
    """The target states of the timeline lines ("FROM => TO on Trigger"), in order."""
    return re.findall(r"=> (\w+)", text)


@pytest.fixture(scope="module")
def approved_order(workers: Workers, test_catalog: Catalog) -> str:
    """`saga order --wait` for the rich customer: exits 0, prints ORDER_APPROVED."""
    rich, widget = customer(test_catalog, "rich"), product(test_catalog, "widget")
    result = saga(
        "order", "--customer", rich, "--item", f"{widget}:2", "--wait", "--timeout", "120"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "ORDER_APPROVED", result.stdout
    assert states_in(result.stdout) == APPROVED_STATES, result.stdout
    return requested_id(result.stdout)


def test_order_wait_approved_exits_0(approved_order: str) -> None:
    assert approved_order


def test_order_wait_rejected_exits_3(workers: Workers, test_catalog: Catalog) -> None:
    poor, widget = customer(test_catalog, "poor"), product(test_catalog, "widget")
    result = saga(
        "order", "--customer", poor, "--item", f"{widget}:2", "--wait", "--timeout", "120"
    )
    assert result.returncode == EXIT_REJECTED, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("ORDER_REJECTED"), result.stdout
    assert "insufficient funds" in last
    assert states_in(result.stdout)[-1] == "ORDER_REJECTED"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--customer", "c", "--item", "widget:1", "--bogus"], "No such option: --bogus"),
        (["--customer", "c", "--item", "widget"], "'widget' is not PRODUCT:QTY"),
        (["--customer", "c", "--item", ":2"], "is not PRODUCT:QTY"),
        (
            ["--customer", "c", "--item", "widget:0"],
            "must be at least 1 and at most 1000000, got 0",
        ),
        (
            ["--customer", "c", "--item", "widget:-3"],
            "must be at least 1 and at most 1000000, got -3",
        ),
        (["--customer", "c", "--item", "widget:x"], "quantity 'x' of 'widget' is not a whole"),
        (["--item", "widget:1"], "Missing option '--customer'"),
        (["--customer", "c"], "Missing option '--item'"),
        (["--customer", "", "--item", "widget:1"], "--customer"),
        (["--customer", "   ", "--item", "widget:1"], "must not be empty"),
        (["--customer", "c", "--item", "widget:1", "--order-id", ""], "--order-id"),
        (["--customer", "c", "--item", f"widget:{2**63}"], "at most 1000000"),
        (["--customer", "c", "--item", "widget:1", "--wait", "--timeout", "-5"], "--timeout"),
        (["--customer", "c" * 129, "--item", "widget:1"], "129 characters, at most 128"),
        (["--customer", "c", "--item", "widget:1", "--order-id", "a\tb"], "control character"),
        (["--customer", "c", "--item", f"{'p' * 129}:1"], "129 characters, at most 128"),
        (
            ["--customer", "c", *[a for i in range(201) for a in ("--item", f"p{i}:1")]],
            "201 items, at most 200",
        ),
        (
            ["--customer", "c", "--item", "widget:600000", "--item", "widget:400001"],
            "widget: 1000001 ordered in all, at most 1000000",
        ),
    ],
    ids=[
        "unknown-flag",
        "no-quantity",
        "no-product",
        "zero-quantity",
        "negative-quantity",
        "quantity-not-a-number",
        "missing-customer",
        "missing-item",
        "empty-customer",
        "blank-customer",
        "empty-order-id",
        "quantity-beyond-avro-long",
        "negative-timeout",
        "customer-id-too-long",
        "order-id-control-character",
        "product-id-too-long",
        "too-many-items",
        "merged-quantity-too-large",
    ],
)
def test_order_bad_input_is_a_usage_error(args: list[str], expected: str) -> None:
    # Checked before any broker is contacted: the unreachable one proves it.
    result = saga("order", *args, env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, timeout=30)
    assert_clean_failure(result, expected)
    assert result.returncode == 2, result.stderr  # click's usage error
    assert "Usage: saga order" in result.stderr or "Error:" in result.stderr


def test_order_with_unreachable_broker_fails_fast() -> None:
    started = time.monotonic()
    result = saga(
        "order",
        "--customer",
        "c",
        "--item",
        "widget:1",
        env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert_clean_failure(result, "cannot reach Kafka at 127.0.0.1:1")
    assert result.returncode == 1
    assert elapsed < 15, f"took {elapsed:.1f}s"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('products:\n  - {id: p, stock: many, price: "1.00"}\n', "'stock'"),
        ('products:\n  - {id: p, stock: -1, price: "1.00"}\n', "'stock'"),
        ('products:\n  - {id: p, stock: 3, price: "1.234"}\n', "'price'"),
        ('products:\n  - {stock: 3, price: "1.00"}\n', "'id'"),
        ('customers:\n  - {id: c, balance: "lots"}\n', "'balance'"),
        ('currency: euro\ncustomers:\n  - {id: c, balance: "1.00"}\n', "'currency'"),
        ("products: [\n", "not valid YAML"),
        ("products: 3\n", "'products'"),
    ],
    ids=[
        "stock-word",
        "stock-negative",
        "price-3-places",
        "missing-id",
        "balance-word",
        "currency",
        "not-yaml",
        "products-not-a-list",
    ],
)
def test_seed_malformed_file_names_the_field(tmp_path: Path, content: str, expected: str) -> None:
    seed_file = tmp_path / "catalog.yaml"
    seed_file.write_text(content)
    # Validated before any broker is contacted.
    result = saga(
        "seed", str(seed_file), env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, timeout=30
    )
    assert_clean_failure(result, expected, str(seed_file))


def test_seed_missing_file_fails_cleanly(tmp_path: Path) -> None:
    result = saga("seed", str(tmp_path / "nope.yaml"), timeout=30)
    assert_clean_failure(result, "nope.yaml")


def test_status_of_a_finished_saga_prints_its_timeline(approved_order: str) -> None:
    result = saga("status", approved_order, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    first, *timeline = result.stdout.strip().splitlines()
    assert first == f"saga {approved_order}: ORDER_APPROVED"
    assert states_in("\n".join(timeline)) == APPROVED_STATES
    assert "waiting for" not in result.stdout


def test_saga_events_refuses_to_answer_from_part_of_the_partition(approved_order: str) -> None:
    with pytest.raises(client.ClientError, match="too slow to find every event"):
        client.saga_events(approved_order, timeout=0.0)
    assert [e.sequence for e in client.saga_events(approved_order)] == [1, 2, 3, 4, 5]


def test_status_of_an_unknown_saga_fails(kafka: str) -> None:
    result = saga("status", "no-such-saga-0000", timeout=60)
    assert_clean_failure(result, "no saga 'no-such-saga-0000'")


def test_kafka_tool_lists_topics(kafka: str) -> None:
    result = saga("kafka", "tool", "kafka-topics", "--list", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    listed = result.stdout.split()
    assert "saga.replies" in listed
    assert "saga.events" in listed


def test_order_again_with_the_same_id_follows_the_first_saga(approved_order: str) -> None:
    result = saga(
        "order", "--customer", "anyone", "--item", "anything:1", "--order-id", approved_order,
        "--wait", "--timeout", "60",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"order {approved_order} already has a saga" in result.stdout
    assert states_in(result.stdout) == APPROVED_STATES, result.stdout
    assert result.stdout.strip().splitlines()[-1] == "ORDER_APPROVED"


def test_order_wait_that_times_out_exits_4(kafka: str) -> None:
    result = saga("order", "--customer", "c", "--item", "p:1", "--wait", "--timeout", "0.01")
    assert_clean_failure(result, "not finished after")
    assert result.returncode == 4


@pytest.mark.parametrize(
    ("args", "expected", "code"),
    [
        (["up", "--exit"], "use it with --demo", 2),
        (["up", "--no-such-flag"], "No such option", 2),
        (["worker", "bogus"], "'bogus' is not one of", 2),
        (["status", "some-saga"], "cannot reach Kafka at 127.0.0.1:1", 1),
        (["tail", "saga.events", "--from-beginning", "--last", "3"], "--last", 2),
        (["tail", "no.such.topic"], "no.such.topic", 2),
        (["seed", "--bogus"], "No such option", 2),
    ],
    ids=["up-exit-without-demo", "up-unknown-flag", "worker-unknown", "status-unreachable",
         "tail-two-starts", "tail-unknown-topic", "seed-unknown-flag"],
)  # fmt: skip
def test_other_commands_bad_input_fails_cleanly(args: list[str], expected: str, code: int) -> None:
    result = saga(*args, env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, timeout=60)
    assert_clean_failure(result, expected)
    assert result.returncode == code, result.stderr


def test_seed_publishes_stock_and_balances_once(workers: Workers, tmp_path: Path) -> None:
    run = os.urandom(4).hex()
    product_id, customer_id = f"s-{run}-lamp", f"s-{run}-dana"
    seed_file = tmp_path / "catalog.yaml"
    seed_file.write_text(
        f"currency: EUR\n"
        f'products:\n  - {{id: {product_id}, stock: 7, price: "12.50"}}\n'
        f'customers:\n  - {{id: {customer_id}, balance: "30.00"}}\n'
    )

    def seeded_rows() -> tuple[m.StockRow, m.Account]:
        wait_consumed("saga-product", "product.commands")  # commits follow changelog flushes
        wait_consumed("saga-payment", "payment.commands")
        stock = client.table_rows("saga-product-stock-changelog")[product_id.encode()]
        account = client.table_rows("saga-payment-accounts-changelog")[customer_id.encode()]
        assert isinstance(stock, m.StockRow) and isinstance(account, m.Account)
        return stock, account

    for _ in range(2):  # the second run changes nothing
        result = saga("seed", str(seed_file), timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"seeded 1 product(s), 1 customer(s) from {seed_file}" in result.stdout
        stock, account = seeded_rows()
        assert (stock.available, stock.restocked, stock.reserved, stock.sold) == (7, 7, 0, 0)
        assert stock.unit_price == m.Money(Decimal("12.50"), "EUR")
        thirty = m.Money(Decimal("30.00"), "EUR")
        assert (account.balance, account.topped_up) == (thirty, thirty)


def test_kafka_tool_unknown_tool_fails_cleanly() -> None:
    result = saga("kafka", "tool", "kafka-nope", timeout=30)
    assert_clean_failure(result, "unknown Kafka tool 'kafka-nope'")


def test_topics_apply_exits_0(kafka: str) -> None:
    result = saga("topics", "apply", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
