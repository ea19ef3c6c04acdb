"""Operator actions from the CLI against the real broker and workers: `saga abort`,
`saga retry` and `saga list` (a participant stopped so that a saga waits), and
`saga dead-letters list|replay` (a record that never decodes, one crafted as a valid
command whose handler failed)."""

from __future__ import annotations

import json
import random
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from cli.selection import default_operator
from messaging import client, settings, topics
from messaging.catalog import Catalog
from messaging.dead_letters import DEAD_LETTER_TOPIC, dead_letter_headers
from messaging.local_workers import Workers
from messaging.replay import REPLAYED_FROM
from schemas import codec
from schemas import messages as m
from tests.conftest import TEST_WORKER_PORTS
from tests.integration.order_helpers import (
    customer,
    http_get,
    keys_in_every_partition,
    poll,
    product,
    send_requests,
    wait_consumed,
)
from tests.integration.test_cli import assert_clean_failure, saga

pytestmark = pytest.mark.integration

OPERATOR = "ops-test"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def url(workers: Workers, service: str) -> str:
    return workers.workers[service].url


def reach(
    saga_id: str, since: Any, state: str, attempt: int = 1, timeout: float = 60.0
) -> m.SagaEvent:
    """The event that took the saga to `state` (at `attempt` or later; fails if it does
    not within `timeout`)."""
    for event in client.follow_sagas([saga_id], since, timeout):
        if event.to_state == state and event.attempt >= attempt:
            return event
    raise AssertionError(f"saga {saga_id} did not reach {state} within {timeout:.0f}s")


def final(saga_id: str, since: Any, timeout: float = 120.0) -> list[m.SagaEvent]:
    """Every event of the saga until its terminal one."""
    events = list(client.follow_sagas([saga_id], since, timeout))
    assert events and events[-1].terminal, [(e.from_state, e.to_state) for e in events]
    return events


def restart(workers: Workers, name: str) -> None:
    workers.start(name)
    workers.wait_ready(timeout=180, names=[name])


def settle() -> None:
    """Wait until every service has committed its input as it is now: a worker that was
    stopped has worked off what queued meanwhile (its views answer 503 until then, for
    rows they do not find, which the next tests would see)."""
    for service, inputs in settings.INPUT_TOPICS.items():
        for topic in inputs:
            wait_consumed(settings.APP_IDS[service], topic, timeout=120)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---- abort, retry, list ----


def test_abort_before_the_pivot_releases_the_stock_and_rejects_the_order(
    workers: Workers, test_catalog: Catalog
) -> None:
    widget = product(test_catalog, "widget")
    order = client.order_requested(customer(test_catalog, "rich"), [(widget, 3)])
    # The Product Service down: the saga waits in VERIFYING_PRODUCTS (compensating on its
    # own only after three 10 s deadlines: the abort comes well before).
    workers.kill("product")
    try:
        send_requests([order])
        reach(order.order_id, order.requested_at, "VERIFYING_PRODUCTS")
        result = saga(
            "abort", order.order_id, "--reason", "supplier outage", "--operator", OPERATOR,
            timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == (
            f"{order.order_id}: done: aborted: VERIFYING_PRODUCTS -> RELEASING_PRODUCTS, "
            "compensating"
        )
        # Aborting again: it is compensating already.
        again = saga("abort", order.order_id, "--reason", "twice", timeout=60)
        assert again.returncode == 3, again.stdout + again.stderr
        assert_clean_failure(again, "refused: RELEASING_PRODUCTS undoes the saga already")
    finally:
        restart(workers, "product")
    events = final(order.order_id, order.requested_at)
    transitions = [(e.from_state, e.to_state, e.trigger) for e in events]
    assert ("VERIFYING_PRODUCTS", "RELEASING_PRODUCTS", "AbortSaga") in transitions
    assert transitions[-1][1] == "ORDER_REJECTED"
    aborted = next(e for e in events if e.trigger == "AbortSaga")
    assert aborted.operator == OPERATOR
    assert aborted.reason == f"AbortSaga by {OPERATOR}: supplier outage"
    assert events[-1].reason == aborted.reason  # the order is rejected for that reason
    # What the Product Service reserved once it came back, it released.
    holds = poll(
        lambda: http_get(f"{url(workers, 'product')}/stock/{widget}?saga={order.order_id}"),
        lambda r: (
            r.status == 200
            and r.json()["holds"][:1] != []
            and r.json()["holds"][0]["status"] != "HELD"
        ),
        "the saga's hold settled",
    ).json()["holds"]
    assert holds == [{"saga_id": order.order_id, "quantity": 3, "status": "RELEASED"}]
    settle()


def test_list_finds_a_stuck_saga_and_retry_re_sends_its_command(
    workers: Workers, test_catalog: Catalog
) -> None:
    order = client.order_requested(
        customer(test_catalog, "rich"), [(product(test_catalog, "widget"), 1)]
    )
    # The Order Service down: the saga waits in CREATING_ORDER, re-sending CreateOrder
    # (5 s, then 10 s ...) for ever.
    workers.kill("order")
    try:
        send_requests([order])
        reach(order.order_id, order.requested_at, "CREATING_ORDER", attempt=2)  # re-sent
        # Stuck since it entered the state, however recently it re-sent.
        listed = saga("list", "--stuck-for", "4s", "--state", "CREATING_ORDER", "--json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        mine = [s for s in json_lines(listed.stdout) if s["saga_id"] == order.order_id]
        assert len(mine) == 1 and mine[0]["step"] == "create_order", listed.stdout
        assert mine[0]["entered_at"] < mine[0]["updated_at"]
        table = saga("list", "--stuck-for", "4s")
        assert order.order_id in table.stdout and "in state for" in table.stdout
        fresh = saga("list", "--stuck-for", "1h", "--json")
        assert order.order_id not in fresh.stdout
        selection = ("--saga", "CreateOrderSaga", "--state", "CREATING_ORDER", "--stuck-for", "4s")
        # A selection without --all-selected sends nothing; --dry-run lists it.
        refused = saga("retry", *selection, "--operator", OPERATOR)
        assert_clean_failure(refused, "then act with --all-selected")
        dry = saga("retry", *selection, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "would retry these" in dry.stdout and order.order_id in dry.stdout
        before = client.saga_events(order.order_id)[-1]
        result = saga("retry", *selection, "--all-selected", "--operator", OPERATOR, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        line = next(x for x in result.stdout.splitlines() if x.startswith(order.order_id))
        assert line.startswith(f"{order.order_id}: done: re-sent CreateOrder of create_order")
    finally:
        restart(workers, "order")
    events = final(order.order_id, order.requested_at)
    retried = next(e for e in events if e.trigger == "RetrySaga")
    assert retried.sequence > before.sequence and retried.attempt > before.attempt
    assert (retried.operator, retried.to_state) == (OPERATOR, "CREATING_ORDER")
    assert events[-1].to_state == "ORDER_APPROVED"
    # The same command re-sent: same command id, the next attempt.
    sent = create_orders(order.order_id)
    assert {command_id for command_id, _ in sent} == {f"{order.order_id}:create_order"}
    assert retried.attempt in {attempt for _, attempt in sent}
    settle()


def create_orders(order_id: str) -> list[tuple[str, int]]:
    """(command id, attempt) of each CreateOrder of one saga in order.commands."""
    tail = saga("tail", "order.commands", "--from-beginning", "--key", order_id)
    return [
        (line["value"]["command_id"], line["value"]["attempt"])
        for line in json_lines(tail.stdout)
        if line["value"] and line["value"]["type"] == "CreateOrder"
    ]


def test_abort_at_the_pivot_is_refused_and_changes_nothing(
    workers: Workers, test_catalog: Catalog
) -> None:
    order = client.order_requested(
        customer(test_catalog, "rich"), [(product(test_catalog, "widget"), 1)]
    )
    workers.kill("payment")
    try:
        send_requests([order])
        reach(order.order_id, order.requested_at, "AUTHORIZING_PAYMENT")
        before = client.saga_events(order.order_id)
        result = saga("abort", order.order_id, "--reason", "too late", timeout=60)
        assert result.returncode == 3, result.stdout + result.stderr
        assert_clean_failure(
            result,
            f"{order.order_id}: refused: AUTHORIZING_PAYMENT is at or after the pivot "
            "(authorize_payment): the saga can only go forward",
        )
        after = client.saga_events(order.order_id)
        assert [e.trigger for e in after[: len(before)]] == [e.trigger for e in before]
        assert "AbortSaga" not in [e.trigger for e in after]
    finally:
        restart(workers, "payment")
    assert final(order.order_id, order.requested_at)[-1].terminal
    settle()


def test_actions_on_unknown_or_ended_sagas_are_refused(
    workers: Workers, test_catalog: Catalog
) -> None:
    unknown = f"no-such-saga-{uuid.uuid4()}"
    result = saga("abort", unknown, "--reason", "cleanup", timeout=60)
    assert result.returncode == 3
    assert_clean_failure(result, f"{unknown}: refused: no saga {unknown}")
    order = client.order_requested(
        customer(test_catalog, "rich"), [(product(test_catalog, "widget"), 1)]
    )
    send_requests([order])
    assert final(order.order_id, order.requested_at)[-1].to_state == "ORDER_APPROVED"
    ended = saga("retry", order.order_id, timeout=60)
    assert ended.returncode == 3
    assert_clean_failure(ended, "refused: the saga has ended (ORDER_APPROVED)")
    bad_state = saga("list", "--state", "NOT_A_STATE")
    assert bad_state.returncode == 2
    assert_clean_failure(bad_state, "'NOT_A_STATE' is not a state of any saga")


def test_without_an_orchestrator_actions_exit_5_at_once_and_send_nothing(workers: Workers) -> None:
    workers.stop(names=["orchestrator"])  # leaves the group at once
    try:
        started = time.monotonic()
        result = saga("abort", "some-saga", "--reason", "r", timeout=60)
        assert result.returncode == 5, result.stdout + result.stderr
        assert "no orchestrator is running: nothing sent" in result.stderr
        listed = saga("list", "--stuck-for", "1m", timeout=60)
        assert listed.returncode == 5 and "no orchestrator is running" in listed.stderr
        assert time.monotonic() - started < 30
    finally:
        restart(workers, "orchestrator")
        settle()


# ---- dead letters ----


def dead_letters_json(*args: str) -> list[dict[str, Any]]:
    result = saga("dead-letters", "list", "--json", *args, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return json_lines(result.stdout)


def balance(workers: Workers, customer_id: str) -> Decimal | None:
    """The customer's balance; None while the payment worker has no account for them."""
    reply = http_get(f"{url(workers, 'payment')}/accounts/{customer_id}")
    if reply.status != 200:
        return None
    return Decimal(reply.json()["balance"]["amount"])


def copies(topic: str, partition: int, start: int, key: bytes) -> list[int]:
    """Offsets of the records of topic[partition] from `start` whose replayed-from is `key`."""
    consumer = client.consumer()
    found = []
    try:
        end = client.end_offset(consumer, TopicPartition(topic, partition))
        if start >= end:
            return []
        consumer.assign([TopicPartition(topic, partition, start)])
        position = start
        deadline = time.monotonic() + 30
        while position < end and time.monotonic() < deadline:
            record = consumer.poll(0.5)
            if record is None or record.error() is not None:
                continue
            position = (record.offset() or 0) + 1
            if (REPLAYED_FROM, key) in (record.headers() or []):
                found.append(position - 1)
    finally:
        consumer.close()
    return found


def test_dead_letters_list_and_replay_an_undecodable_record_is_refused(workers: Workers) -> None:
    key = f"garbage-{uuid.uuid4()}"
    producer = client.producer()
    producer.produce("order.commands", key=key.encode(), value=b"\x00 not avro")
    client.flush(producer)
    letter = poll(
        lambda: [d for d in dead_letters_json("--topic", "order.commands") if d["key"] == key],
        lambda found: len(found) >= 1,
        "the Order Service dead-lettered the record",
    )[0]
    assert letter["reason"] == "not-avro" and letter["source_topic"] == "order.commands"
    assert letter["replayed_to"] is None
    table = saga("dead-letters", "list", "--reason", "not-avro")
    assert key in table.stdout and f"order.commands[{letter['source_partition']}]" in table.stdout
    result = saga("dead-letters", "replay", "--offset", str(letter["offset"]), timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert_clean_failure(
        result, f"{letter['offset']}: refused, not replayed: still does not decode (not-avro"
    )
    assert dead_letters_json("--offset", str(letter["offset"]))[0]["replayed_to"] is None


def test_a_valid_record_dead_lettered_is_replayed_once(workers: Workers) -> None:
    # A customer of its own: the replayed TopUp opens the account (no other test's sums move).
    buyer = f"replayed-{uuid.uuid4()}"
    partition = client.partition_for(buyer.encode(), topics.partitions("payment.commands"))
    source_offset = random.randrange(10**12, 10**13)  # unique: the record's identity
    top_up = m.TopUp(f"replayed-{uuid.uuid4()}", buyer, m.Money(Decimal("7.00"), "EUR"))
    # A valid TopUp dead-lettered as if its handler had failed at the time.
    headers = dead_letter_headers(
        "RuntimeError: the store was away",
        "RuntimeError",
        "payment.commands",
        partition,
        source_offset,
    )
    producer = client.producer()
    producer.produce(
        DEAD_LETTER_TOPIC, key=buyer.encode(), value=codec.encode(top_up),
        headers=[("traceparent", TRACEPARENT.encode()), *headers],
    )  # fmt: skip
    client.flush(producer)
    (letter,) = [
        d
        for d in dead_letters_json("--topic", "payment.commands")
        if d["source_offset"] == source_offset
    ]
    offset = str(letter["offset"])
    assert letter["headers"] == {"traceparent": TRACEPARENT}
    consumer = client.consumer()
    try:
        start = client.end_offset(consumer, TopicPartition("payment.commands", partition))
    finally:
        consumer.close()

    dry = saga("dead-letters", "replay", "--offset", offset, "--dry-run", timeout=60)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert (
        f"{offset}: would replay payment.commands[{partition}]@{source_offset}: decodes as TopUp"
        in dry.stdout
    )
    first = saga("dead-letters", "replay", "--offset", offset, "--operator", OPERATOR, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    source = f"payment.commands[{partition}]"
    assert f"{offset}: replayed {source}@{source_offset} -> {source}@" in first.stdout
    identity = f"payment.commands/{partition}/{source_offset}".encode()
    (copy,) = copies("payment.commands", partition, start, identity)  # the dry run sent none
    poll(
        lambda: balance(workers, buyer),
        lambda b: b == Decimal("7.00"),
        "the top-up applied",
    )
    assert (
        dead_letters_json("--offset", offset)[0]["replayed_to"]
        == f"payment.commands[{partition}]@{copy}"
    )

    second = saga("dead-letters", "replay", "--offset", offset, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert (
        f"{offset}: skipped: replayed already, to {source}@{copy}, by {OPERATOR}" in second.stdout
    )
    assert copies("payment.commands", partition, start, identity) == [copy]
    time.sleep(2)
    assert balance(workers, buyer) == Decimal("7.00")


# ---- a selection over two orchestrator workers ----

SECOND_ORCHESTRATOR_PORT = TEST_WORKER_PORTS["orchestrator"] + 10


def test_a_selection_is_listed_and_aborted_across_two_orchestrator_workers(
    workers: Workers, test_catalog: Catalog
) -> None:
    """Sagas stuck in every partition, split between two orchestrator workers: `saga list`
    finds them all from either (the view's fan-out, one cut-off for both), and one
    `saga abort` of the selection aborts each, answered by the worker owning it."""
    count = topics.partitions(client.REQUEST_TOPIC)
    ids = keys_in_every_partition(f"stuck-{uuid.uuid4().hex[:8]}", count, 1)
    rich, widget = customer(test_catalog, "rich"), product(test_catalog, "widget")
    orders = [client.order_requested(rich, [(widget, 1)], order_id) for order_id in ids]
    second = Workers(
        ["orchestrator"], ports={"orchestrator": SECOND_ORCHESTRATOR_PORT}, loglevel="warning"
    )
    urls = [url(workers, "orchestrator"), f"http://127.0.0.1:{SECOND_ORCHESTRATOR_PORT}"]
    workers.kill("order")  # every saga waits in CREATING_ORDER
    second.start()
    try:
        second.wait_ready(timeout=180)
        send_requests(orders)
        for order in orders:
            reach(order.order_id, order.requested_at, "CREATING_ORDER")
        time.sleep(2)

        def listing() -> Any:
            return http_get(f"{urls[1]}/sagas?stuck_for=1s&state=CREATING_ORDER&limit=1000")

        def both_answer(reply: Any) -> bool:
            return reply.status == 200 and len(reply.json()["workers"]) == 2

        whole = poll(listing, both_answer, "both orchestrators listing", timeout=120).json()
        assert set(ids) <= {s["saga_id"] for s in whole["sagas"]}
        assert whole["workers"] == sorted(urls) and whole["partitions"] == list(range(count))
        assert whole["filter"]["stuck_for"] == "1s" and whole["filter"]["entered_before"]
        listed = saga("list", "--stuck-for", "1s", "--state", "CREATING_ORDER", "--json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert set(ids) <= {s["saga_id"] for s in json_lines(listed.stdout)}
        selection = ("--state", "CREATING_ORDER", "--stuck-for", "1s", "--url", urls[1])
        result = saga("abort", *selection, "--reason", "bulk cleanup", "--all-selected", timeout=90)
        assert result.returncode == 0, result.stdout + result.stderr
        for order_id in ids:
            assert (
                f"{order_id}: done: aborted: CREATING_ORDER -> REJECTING_ORDER, compensating"
                in result.stdout
            ), result.stdout
    finally:
        codes = second.stop()
        restart(workers, "order")
        workers.wait_ready(timeout=180)
    assert codes == {"orchestrator": 0}
    for order in orders:
        events = final(order.order_id, order.requested_at)
        assert events[-1].to_state == "ORDER_REJECTED"
        assert events[-1].reason == f"AbortSaga by {default_operator()}: bulk cleanup"
    settle()
