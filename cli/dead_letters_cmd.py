"""`saga dead-letters list|replay`: what the workers could not process, and putting it
back on its source topic once the cause is fixed (messaging/replay.py says how a replay
is done once)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import click

from cli import selection as sel
from messaging import client, replay, topics
from messaging.replay import DeadLetter, Filter, Verdict
from schemas import limits
from schemas import messages as m

EXIT_REFUSED = 3  # a selected dead letter cannot be replayed (it still does not decode…)
ERROR_WIDTH = 100  # characters of the error shown per line (--json has it whole)

F = TypeVar("F", bound=Callable[..., Any])


def _known_topic(_ctx: click.Context, _param: click.Parameter, name: str | None) -> str | None:
    if name is not None and name not in topics.project_topics().topics:
        raise click.BadParameter(f"{name!r} is not a topic of topics.yaml")
    return name


def filter_options(func: F) -> F:
    options = [
        click.option("--reason", default=None, help="Dead letters with this error.reason."),
        click.option(
            "--topic", default=None, callback=_known_topic,
            help="Dead letters read from this topic.",
        ),
        click.option(
            "--offset", "offsets", multiple=True, type=click.IntRange(min=0),
            help="The dead letter at this offset of saga.dead-letters; repeat for several.",
        ),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


@click.group("dead-letters")
def dead_letters() -> None:
    """Records the workers could not process (saga.dead-letters): list, replay."""


def _selected(chosen: Filter) -> tuple[list[DeadLetter], dict[str, m.DeadLetterReplayed]]:
    """The dead letters `chosen` keeps, and the replay markers."""
    try:
        client.require_broker()
        letters = [letter for letter in replay.dead_letters() if chosen.keeps(letter)]
        markers = replay.markers()
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    return letters, markers


def _source(letter: DeadLetter) -> str:
    if letter.marker_key is None:
        return "?"
    return f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


def letter_json(letter: DeadLetter, marker: m.DeadLetterReplayed | None) -> dict[str, Any]:
    at = letter.dead_lettered_at
    return {
        "partition": letter.partition,
        "offset": letter.offset,
        "dead_lettered_at": None if at is None else at.isoformat(timespec="milliseconds"),
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "reason": letter.reason,
        "error": letter.error,
        "key": None if letter.key is None else _text(letter.key),
        "value_bytes": None if letter.value is None else len(letter.value),
        "value_dropped": letter.value_dropped,
        "headers": {name: _text(value) for name, value in letter.original_headers},
        "replayed_to": None
        if marker is None or marker.replayed_offset is None
        else f"{marker.source_topic}[{marker.source_partition}]@{marker.replayed_offset}",
    }


def _replayed(marker: m.DeadLetterReplayed | None) -> str:
    if marker is None:
        return "-"
    if marker.replayed_offset is None:
        return "pending"
    return f"@{marker.replayed_offset}"


def _short(text: str | None) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 1] + "…"


@dead_letters.command("list")
@filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
def list_letters(
    reason: str | None, topic: str | None, offsets: tuple[int, ...], as_json: bool
) -> None:
    """List dead letters: where each came from (topic[partition]@offset), why (reason,
    error), its key, and whether it was replayed (to which offset)."""
    letters, markers = _selected(Filter(reason, topic, frozenset(offsets)))
    if as_json:
        for letter in letters:
            click.echo(json.dumps(letter_json(letter, markers.get(letter.marker_key or ""))))
        return
    if not letters:
        click.echo("no dead letter matches", err=True)
        return
    rows = [
        (
            str(letter.offset),
            ""
            if letter.dead_lettered_at is None
            else f"{letter.dead_lettered_at:%Y-%m-%d %H:%M:%S}",
            _source(letter),
            letter.reason or "?",
            _text(letter.key) if letter.key is not None else "(none)",
            _replayed(markers.get(letter.marker_key or "")),
            _short(letter.error),
        )
        for letter in letters
    ]
    headers = ("offset", "dead-lettered at", "source", "reason", "key", "replayed", "error")
    for line in sel.columns([headers, *rows]):
        click.echo(line)


@dead_letters.command("replay")
@filter_options
@click.option("--all", "everything", is_flag=True, help="Every dead letter (without a filter).")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
@click.option(
    "--operator", default=None, help="Who replays, recorded in the marker (default: cli:$USER)."
)
def replay_letters(
    reason: str | None,
    topic: str | None,
    offsets: tuple[int, ...],
    everything: bool,
    dry_run: bool,
    operator: str | None,
) -> None:
    """Put dead letters back on their source topic (same partition, key, value and
    headers, plus replayed-from), each once: a dead letter replayed before is skipped.

    A record that still does not decode, whose value was dropped, or that was
    dead-lettered longer ago than the retention (SAGA_RETENTION, else 7 days) is refused
    and not replayed. Give a filter (--reason, --topic, --offset) or --all. Exit 0 when
    nothing selected was refused, 3 when something was.
    """
    from orchestrator.engine.retention import RetentionError, configured_retention

    chosen = Filter(reason, topic, frozenset(offsets))
    if chosen.empty and not everything:
        raise click.UsageError("choose the dead letters: --reason, --topic, --offset, or --all")
    who = sel.default_operator() if operator is None else operator
    if (why := limits.id_problem("the operator", who)) is not None:
        raise click.BadParameter(why, param_hint="--operator")
    try:
        max_age = configured_retention()
    except RetentionError as exc:
        raise click.ClickException(str(exc)) from exc
    letters, markers = _selected(chosen)
    if not letters:
        click.echo("no dead letter matches", err=True)
        return
    try:
        planned = replay.plan(letters, markers, datetime.now(UTC), max_age, replay.copy_of)
        chosen_ones = [p.letter for p in planned if p.decision.verdict is Verdict.REPLAY]
        refused = sum(1 for p in planned if p.decision.verdict is Verdict.REFUSED)
        for p in planned:
            describe(p, dry_run)
        if dry_run:
            click.echo(f"{len(chosen_ones)} would be replayed, {refused} refused (--dry-run)")
            return
        for p in planned:
            if p.landed is not None and p.letter.marker_key is not None:
                replay.mark_done(p.letter, markers[p.letter.marker_key], p.landed)
        landed = replay.replay(chosen_ones, who, datetime.now(UTC)) if chosen_ones else {}
    except client.ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    for letter in chosen_ones:
        copy = f"{letter.source_topic}[{letter.source_partition}]@{landed[letter.offset]}"
        click.echo(f"{letter.offset}: replayed {_source(letter)} -> {copy}")
    click.echo(f"{len(chosen_ones)} replayed, {refused} refused", err=True)
    if refused:
        sys.exit(EXIT_REFUSED)


def describe(planned: replay.Planned, dry_run: bool) -> None:
    """One line per dead letter; refusals on stderr."""
    letter, decision = planned.letter, planned.decision
    if decision.verdict is Verdict.REFUSED:
        click.echo(f"{letter.offset}: refused, not replayed: {decision.why}", err=True)
    elif decision.verdict is Verdict.REPLAY:
        if dry_run:
            click.echo(f"{letter.offset}: would replay {_source(letter)}: {decision.why}")
    else:
        click.echo(f"{letter.offset}: skipped: {decision.why}")
