"""Helpers for the tests of the operator actions on the saga's web page: a saga held
waiting (its participant stopped), form posts, and what saga.operations holds."""

from __future__ import annotations

import html
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import TopicPartition

from messaging import client, topics
from messaging.local_workers import Workers
from schemas import messages as m
from tests.integration.order_helpers import Reply, poll

OPERATIONS_TOPICS = ("saga.operations", "saga.operations.answers")


@contextmanager
def stopped(workers: Workers, name: str) -> Iterator[None]:
    """The worker `name` stopped (gracefully) inside, started again and ready after."""
    codes = workers.stop(names=[name])
    assert codes == {name: 0}, codes
    try:
        yield
    finally:
        workers.start(name)
        workers.wait_ready(timeout=180, names=[name])


def wait_state(saga_id: str, state: str, timeout: float = 60.0) -> list[m.SagaEvent]:
    """The saga's events once one of them entered `state`."""
    return poll(
        lambda: client.saga_events(saga_id),
        lambda events: any(e.to_state == state for e in events),
        f"saga {saga_id} in {state}",
        timeout=timeout,
    )


def end_offsets(topic: str) -> list[int]:
    """The end offset of every partition of `topic`."""
    consumer = client.consumer()
    try:
        return [
            client.end_offset(consumer, TopicPartition(topic, p))
            for p in range(topics.partitions(topic))
        ]
    finally:
        consumer.close()


def operations_written() -> dict[str, list[int]]:
    return {topic: end_offsets(topic) for topic in OPERATIONS_TOPICS}


def http_post(
    url: str, fields: dict[str, str], headers: dict[str, str] | None = None, timeout: float = 30
) -> Reply:
    """POST a form; HTTP errors are returned, not raised."""
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.headers.get_content_type(), response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.headers.get_content_type(), error.read())


def hidden_fields(page: str, form_id: str) -> dict[str, str]:
    """The hidden fields of the form with id `form_id` of an HTML page."""
    match = re.search(rf'<form [^>]*id="{form_id}".*?</form>', page, re.DOTALL)
    assert match, f"no form {form_id!r} in the page:\n{page[:3000]}"
    found = re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', match.group(0))
    return {name: html.unescape(value) for name, value in found}
