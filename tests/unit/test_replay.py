"""Dead letters read back and their replay decided (messaging/replay.py): what a dead
letter says of its record, which are kept by a filter, and for each whether a replay puts
it back, skips it (replayed already) or refuses it, and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from messaging import client
from messaging.dead_letters import dead_letter_headers, original_headers
from messaging.replay import DeadLetter, Filter, Verdict, decide, marker, plan
from schemas import codec
from schemas import messages as m

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
WEEK = timedelta(days=7)
PARTITIONS = 4
TOP_UP = m.TopUp("t-1", "alice", m.Money(Decimal("5.00"), "EUR"))
ALICE = client.partition_for(b"alice", PARTITIONS)


def letter(
    *,
    value: bytes | None = codec.encode(TOP_UP),
    key: bytes | None = b"alice",
    topic: str = "payment.commands",
    partition: int = ALICE,
    offset: int = 41,
    at: datetime = NOW - timedelta(hours=1),
    reason: str = "RuntimeError",
    own: list[tuple[str, bytes]] | None = None,
    dead_letter_offset: int = 3,
    extra: list[tuple[str, bytes]] | None = None,
) -> DeadLetter:
    headers = dead_letter_headers("it failed", reason, topic, partition, offset, at)
    return DeadLetter(
        0, dead_letter_offset, key, value, tuple([*(own or []), *headers, *(extra or [])])
    )


def decided(dead: DeadLetter, found: m.DeadLetterReplayed | None = None) -> tuple[Verdict, str]:
    decision = decide(dead, found, NOW, WEEK, partitions=lambda _topic: PARTITIONS)
    return decision.verdict, decision.why


def test_a_dead_letter_says_where_its_record_came_from_and_why() -> None:
    own = [("traceparent", b"00-ab-cd-01"), ("replayed-from", b"payment.commands/1/2")]
    dead = letter(own=own)
    assert (dead.source_topic, dead.source_partition, dead.source_offset) == (
        "payment.commands",
        ALICE,
        41,
    )
    assert (dead.reason, dead.error) == ("RuntimeError", "it failed")
    assert dead.dead_lettered_at == NOW - timedelta(hours=1)
    assert dead.marker_key == f"payment.commands/{ALICE}/41"
    # Its own headers come back, without the dead letter's and an earlier replayed-from.
    assert dead.original_headers == (("traceparent", b"00-ab-cd-01"),)


def test_a_dead_letter_without_its_source_headers_has_no_identity() -> None:
    dead = DeadLetter(0, 9, b"k", b"v", (("error", b"x"), ("source.partition", b"two")))
    assert dead.marker_key is None and dead.source_partition is None
    assert decided(dead) == (
        Verdict.REFUSED,
        "no source.topic/source.partition/source.offset headers: where it came from is unknown",
    )


def test_filters_keep_what_all_of_them_name() -> None:
    dead = letter()
    assert Filter().keeps(dead) and Filter().empty
    assert Filter(reason="RuntimeError", topic="payment.commands").keeps(dead)
    assert not Filter(reason="not-avro").keeps(dead)
    assert not Filter(topic="order.commands").keeps(dead)
    assert Filter(offsets=frozenset({3, 4})).keeps(dead)
    assert not Filter(offsets=frozenset({4})).keeps(dead)


def test_a_record_that_decodes_is_replayed() -> None:
    assert decided(letter()) == (Verdict.REPLAY, "decodes as TopUp")


def test_a_record_that_still_does_not_decode_is_refused() -> None:
    verdict, why = decided(letter(value=b"not avro"))
    assert verdict is Verdict.REFUSED
    assert why.startswith("still does not decode (not-avro: ")


def test_a_record_whose_value_was_dropped_is_refused() -> None:
    verdict, why = decided(letter(value=None, extra=[("value.dropped", b"2000000")]))
    assert verdict is Verdict.REFUSED
    assert why == (
        "its value (2000000 bytes) was dropped when it was dead-lettered (too large): "
        "nothing to put back"
    )


def test_a_record_from_a_topic_no_worker_reads_is_refused() -> None:
    verdict, why = decided(letter(topic="saga.events", key=None))
    assert verdict is Verdict.REFUSED and "saga.events is not a topic a worker reads" in why


def test_a_record_whose_key_belongs_to_another_partition_is_refused() -> None:
    other = (ALICE + 1) % PARTITIONS
    verdict, why = decided(letter(partition=other))
    assert verdict is Verdict.REFUSED
    assert why.startswith(f"its key belongs to partition {ALICE} of payment.commands")


def test_a_record_older_than_the_retention_is_refused() -> None:
    verdict, why = decided(letter(at=NOW - timedelta(days=8)))
    assert verdict is Verdict.REFUSED
    assert why.startswith("dead-lettered 8.0 days ago, longer than the retention (7.0 days)")
    assert decided(letter(at=NOW - timedelta(days=6)))[0] is Verdict.REPLAY


def test_a_record_replayed_already_is_skipped_even_when_it_could_not_be_now() -> None:
    dead = letter(at=NOW - timedelta(days=30))
    done = marker(dead, "cli:alice", NOW - timedelta(days=29), replayed_offset=77)
    verdict, why = decided(dead, done)
    assert verdict is Verdict.DONE
    assert why.startswith(f"replayed already, to payment.commands[{ALICE}]@77, by cli:alice")


def test_a_replay_that_did_not_finish_is_looked_for() -> None:
    dead = letter()
    pending = marker(dead, "cli:bob", NOW - timedelta(minutes=5))
    assert pending.replayed_offset is None
    assert decided(dead, pending)[0] is Verdict.PENDING
    # ... but refusals come first: a pending marker never makes bad bytes replayable.
    assert decided(letter(value=b"junk"), pending)[0] is Verdict.REFUSED


def planned(
    letters: list[DeadLetter], markers: dict[str, m.DeadLetterReplayed], copy: int | None = None
) -> list[tuple[int, Verdict, int | None]]:
    """(dead letter offset, verdict, copy found) per dead letter; `copy` is where a
    pending replay's copy is found (None: it never landed)."""
    result = plan(letters, markers, NOW, WEEK, lambda _pending: copy)
    return [(p.letter.offset, p.decision.verdict, p.landed) for p in result]


def test_a_pending_replay_whose_copy_landed_is_marked_done_not_replayed_again() -> None:
    dead = letter()
    pending = {dead.marker_key or "": marker(dead, "cli:bob", NOW - timedelta(minutes=5))}
    assert planned([dead], pending, copy=90) == [(3, Verdict.DONE, 90)]


def test_a_pending_replay_whose_copy_never_landed_is_replayed() -> None:
    dead = letter()
    pending = {dead.marker_key or "": marker(dead, "cli:bob", NOW - timedelta(minutes=5))}
    assert planned([dead], pending, copy=None) == [(3, Verdict.REPLAY, None)]


def test_a_record_dead_lettered_twice_is_replayed_once() -> None:
    first, again = letter(dead_letter_offset=3), letter(dead_letter_offset=4)
    assert first.marker_key == again.marker_key  # the same record, read twice
    other = letter(offset=42, dead_letter_offset=5)
    assert planned([first, again, other], {}) == [
        (3, Verdict.REPLAY, None),
        (4, Verdict.DONE, None),
        (5, Verdict.REPLAY, None),
    ]


def test_a_replay_marker_round_trips_through_the_codec() -> None:
    done = marker(letter(), "cli:alice", NOW, replayed_offset=5)
    assert codec.decode(codec.encode(done)) == done


@pytest.mark.parametrize(
    ("headers", "pairs"),
    [
        (None, []),
        ([("a", b"1")], [("a", b"1")]),
        ({"a": "1", "b": None}, [("a", b"1"), ("b", b"")]),
    ],
)
def test_a_records_own_headers_as_pairs(headers: object, pairs: list[tuple[str, bytes]]) -> None:
    assert original_headers(headers) == pairs
