"""WriteAfterSend: rows are written, and records acked, only after their outputs are
acknowledged, strictly in the order the records were submitted."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.streams import current_event

from messaging import web
from messaging.faust_app import WriteAfterSend, row_in_flight


class Event:
    def __init__(self, name: str) -> None:
        self.name = name


class Table(dict[bytes, Any]):
    partitions = 4

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def __setitem__(self, key: bytes, value: Any) -> None:
        event = current_event()
        self.log.append(f"write {key.decode()}={value} in {getattr(event, 'name', None)}")
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        event = current_event()
        self.log.append(f"delete {key.decode()} in {getattr(event, 'name', None)}")
        self.pop(key, None)

    def row(self, key: bytes) -> Any:
        return self.get(key)


class Stream:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def ack(self, event: Event) -> None:
        self.log.append(f"ack {event.name}")


class Producer:
    """Each send is an epoch of its own; epochs are delivered when the test says so."""

    def __init__(self) -> None:
        self.current_epoch = 0
        self.delivered = 0
        self.failure: BaseException | None = None
        self.changed = asyncio.Event()

    async def wait_delivered(self, epoch: int) -> None:
        while self.failure is None and self.delivered < epoch:
            self.changed.clear()
            await self.changed.wait()
        if self.failure is not None:
            raise self.failure


class Sender:
    """Records each output's epoch; the test delivers them in order, or fails."""

    def __init__(self) -> None:
        self.producer = Producer()
        self.epochs: dict[str, int] = {}

    def send(self, topic: str, key: bytes, message: object, headers: Any = None) -> int:
        self.producer.current_epoch += 1
        self.epochs[str(message)] = self.producer.current_epoch
        return self.producer.current_epoch

    def deliver(self, message: str) -> None:
        """Everything up to `message`'s epoch is in Kafka."""
        self.producer.delivered = max(self.producer.delivered, self.epochs[message])
        self.producer.changed.set()

    def fail(self, failure: BaseException) -> None:
        self.producer.failure = failure
        self.producer.changed.set()


class App:
    rebalancing = False  # what a view reads of the app: its partitions are settled
    tables = SimpleNamespace(actives_ready=True)
    should_stop = False

    def __init__(self) -> None:
        self.crashed: BaseException | None = None

    async def crash(self, exc: BaseException) -> None:
        self.crashed = exc


@pytest.fixture
async def setup() -> Any:
    log: list[str] = []
    sender = Sender()
    app = App()
    writer = WriteAfterSend(app, sender)  # type: ignore[arg-type]
    task = asyncio.ensure_future(writer.run())
    yield writer, sender, Table(log), Stream(log), log, app
    task.cancel()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_rows_wait_for_their_outputs_and_follow_submission_order(setup: Any) -> None:
    writer, sender, table, stream, log, _app = setup
    first, second = Event("first"), Event("second")
    await writer.submit(stream, first, [("t", b"k", "out-1")], [(table, b"k", "v1")])
    await writer.submit(stream, second, [("t", b"k", "out-2")], [(table, b"k", "v2")])
    assert writer.read(table, b"k") == "v2"  # the agent sees its newest row at once
    await settle()
    assert log == []  # nothing delivered yet
    sender.deliver("out-1")
    await settle()
    assert log == ["write k=v1 in first", "ack first"]  # the second still waits
    sender.deliver("out-2")
    await settle()
    assert log == ["write k=v1 in first", "ack first", "write k=v2 in second", "ack second"]
    assert table[b"k"] == "v2" and writer.staged == {}


async def test_a_newer_staged_row_survives_the_write_of_an_older_one(setup: Any) -> None:
    writer, sender, table, stream, _log, _app = setup
    await writer.submit(stream, Event("a"), [("t", b"k", "out-a")], [(table, b"k", "v1")])
    await writer.submit(stream, Event("b"), [("t", b"k", "out-b")], [(table, b"k", "v2")])
    sender.deliver("out-a")
    await settle()
    assert table[b"k"] == "v1"
    assert writer.read(table, b"k") == "v2"


async def test_a_record_without_outputs_or_rows_is_acked_in_turn(setup: Any) -> None:
    writer, sender, table, stream, log, _app = setup
    await writer.submit(stream, Event("a"), [("t", b"k", "out-a")], [(table, b"k", "v1")])
    await writer.submit(stream, Event("bad"))
    await settle()
    assert log == []
    sender.deliver("out-a")
    await settle()
    assert log == ["write k=v1 in a", "ack a", "ack bad"]


async def test_a_failed_send_writes_nothing_and_stops_the_worker(setup: Any) -> None:
    writer, sender, table, stream, log, app = setup
    await writer.submit(stream, Event("a"), [("t", b"k", "out-a")], [(table, b"k", "v1")])
    sender.fail(TimeoutError("broker gone"))
    await settle()
    assert log == [] and b"k" not in table
    assert isinstance(app.crashed, TimeoutError)


async def test_a_row_waiting_for_its_outputs_is_in_flight_for_the_views(setup: Any) -> None:
    """Its outputs (a saga's event) may be read elsewhere before it is written: a view
    that does not find it must say 503, not 404 (messaging.web.missing)."""
    writer, sender, table, stream, _log, app = setup
    await writer.submit(stream, Event("e"), [("t", b"k", "out")], [(table, b"k", "v1")])
    assert row_in_flight(app, table, b"k")
    assert not row_in_flight(app, table, b"other")
    problem = web.missing(app, table, "k", "no row 'k'")
    assert (problem.code, problem.detail) == (503, web.WRITING)
    sender.deliver("out")
    await settle()
    assert not row_in_flight(app, table, b"k")
    assert web.missing(app, table, "k", "no row 'k'").code == 404


async def test_a_row_given_as_none_is_deleted_once_its_outputs_are_acknowledged(
    setup: Any,
) -> None:
    """An expired saga: its forget commands reach the broker, then its row is deleted (a
    tombstone at the next write-back); never the other way round."""
    writer, sender, table, stream, log, _app = setup
    table[b"k"] = "ended"
    log.clear()
    await writer.submit(stream, Event("expire"), [("t", b"k", "forget")], [(table, b"k", None)])
    assert writer.read(table, b"k") is None  # gone for the agent at once
    await settle()
    assert log == [] and table[b"k"] == "ended"  # for the store, not before the broker has it
    sender.deliver("forget")
    await settle()
    assert log == ["delete k in expire", "ack expire"]
    assert b"k" not in table and writer.staged == {}


async def test_two_records_deleting_one_row_are_both_written_and_acked(setup: Any) -> None:
    """A duplicated expiry: both records stage the deletion; the first one written must
    not take the second one's staged deletion for its own (a deletion is None, so only
    an explicit "not staged" tells them apart), or the second one stops the worker."""
    writer, sender, table, stream, log, app = setup
    table[b"k"] = "ended"
    log.clear()
    for name in ("expire", "expire again"):
        await writer.submit(stream, Event(name), [("t", b"k", "forget")], [(table, b"k", None)])
    sender.deliver("forget")
    await settle()
    assert app.crashed is None
    assert log[-1] == "ack expire again" and "ack expire" in log
    assert b"k" not in table and writer.staged == {}


async def test_a_failed_forget_send_keeps_the_row(setup: Any) -> None:
    writer, sender, table, stream, _log, app = setup
    table[b"k"] = "ended"
    await writer.submit(stream, Event("expire"), [("t", b"k", "forget")], [(table, b"k", None)])
    sender.fail(TimeoutError("broker gone"))
    await settle()
    assert table[b"k"] == "ended" and isinstance(app.crashed, TimeoutError)
