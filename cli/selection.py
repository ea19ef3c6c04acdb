"""What `saga abort`, `saga retry` and `saga list` decide before and after any I/O: the
operator's name, the checks of ids and reasons, which sagas a selection asks the
orchestrators' `/sagas` view for, and what each answer means for the exit code."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas import limits
from schemas import messages as m

EXIT_REFUSED = 3  # the orchestrator refused an action (the saga is unknown, past its pivot…)
EXIT_NO_ANSWER = 4  # no answer in time: the action waits in saga.operations
EXIT_NO_ORCHESTRATOR = 5
DEFAULT_OPERATOR = "cli"
MAX_LIMIT = 1000  # the most sagas /sagas lists in one answer


def default_operator(env: Mapping[str, str] | None = None) -> str:
    """Who acts, as recorded in saga.events: `cli:$USER` (or $LOGNAME), else "cli"."""
    env = os.environ if env is None else env
    user = (env.get("USER") or env.get("LOGNAME") or "").strip()
    name = f"{DEFAULT_OPERATOR}:{user}" if user else DEFAULT_OPERATOR
    return name if limits.id_problem("operator", name) is None else DEFAULT_OPERATOR


def reason_problem(text: str) -> str | None:
    """Why `text` cannot be an action's reason (None if it can): it is recorded in
    saga.events, so it says something, fits the limit and is one line of text."""
    if not text.strip():
        return "must say why (it is recorded in saga.events)"
    if len(text) > limits.MAX_REASON_LENGTH:
        return f"has {len(text)} characters, at most {limits.MAX_REASON_LENGTH}"
    if limits.CONTROL_CHARACTER.search(text):
        return "contains a control character"
    return None


@dataclass(frozen=True)
class Selection:
    """Sagas chosen by what they are rather than by id (only sagas in flight: an ended
    saga can be neither aborted nor retried)."""

    state: str | None = None
    saga: str | None = None
    stuck_for: str | None = None  # a duration, e.g. "10m" (checked by the caller)

    @property
    def empty(self) -> bool:
        return self.state is None and self.saga is None and self.stuck_for is None

    def query(self, limit: int, *, waiting: bool | None = True) -> dict[str, str]:
        """The /sagas query listing the selection (JSON, the whole table)."""
        asked = {"state": self.state, "saga": self.saga, "stuck_for": self.stuck_for}
        query = {name: value for name, value in asked.items() if value is not None}
        if waiting is not None:
            query["waiting"] = "true" if waiting else "false"
        return {**query, "limit": str(limit), "format": "json"}

    def describe(self) -> str:
        parts = [
            f"in {self.state}" if self.state else None,
            f"of type {self.saga}" if self.saga else None,
            f"waiting in their state for {self.stuck_for} or more" if self.stuck_for else None,
        ]
        return "sagas " + ", ".join(p for p in parts if p) if not self.empty else "every saga"


def target_problem(
    saga_id: str | None, selection: Selection, dry_run: bool, all_selected: bool
) -> str | None:
    """Why the sagas to act on are not named well enough (None if they are): one id, or
    a selection that is either a dry run or confirmed with --all-selected."""
    if saga_id is not None and not selection.empty:
        return "give a SAGA_ID or a selection (--state, --saga, --stuck-for), not both"
    if saga_id is not None:
        if all_selected:
            return "--all-selected confirms a selection; a SAGA_ID needs none"
        if dry_run:
            return "--dry-run lists a selection; for one saga, `saga status SAGA_ID` shows it"
        problem = limits.id_problem("the saga id", saga_id)
        return None if problem is None else f"SAGA_ID: {problem}"
    if selection.empty:
        return "name the sagas: a SAGA_ID, or a selection (--state, --saga, --stuck-for)"
    if dry_run and all_selected:
        return "--dry-run changes nothing; --all-selected acts: give one of them"
    if not dry_run and not all_selected:
        return (
            f"a selection acts on every saga it matches ({selection.describe()}): see them "
            "with --dry-run, then act with --all-selected"
        )
    return None


def listing_problem(payload: Mapping[str, Any]) -> str | None:
    """Why a /sagas answer cannot be acted on as a whole (None if it can): it lists fewer
    sagas than matched, or a worker's scan stopped at its cap."""
    listed, matched = len(payload["sagas"]), int(payload["matched"])
    if not payload.get("complete", True):
        return (
            "an orchestrator worker's scan stopped at its cap: the selection may miss sagas; "
            "narrow it (--state, --saga, --stuck-for)"
        )
    if matched > listed:
        return (
            f"{matched} sagas match but --limit lists {listed}: narrow the selection "
            f"(--state, --saga, --stuck-for) or raise --limit (at most {MAX_LIMIT})"
        )
    return None


def waited(summary: Mapping[str, Any], now: datetime) -> timedelta:
    """How long a listed saga has been in its state."""
    since = summary.get("entered_at") or summary["updated_at"]
    return max(now - datetime.fromisoformat(since), timedelta(0))


def duration_text(span: timedelta) -> str:
    """12s, 4m05s, 3h02m, 2d04h."""
    seconds = int(span.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"


LIST_HEADERS = ("saga", "type", "state", "waiting for", "attempt", "in state for", "reason")


def list_rows(sagas: Iterable[Mapping[str, Any]], now: datetime) -> list[tuple[str, ...]]:
    """One row per listed saga, longest in its state first."""
    ordered = sorted(sagas, key=lambda s: waited(s, now), reverse=True)
    return [
        (
            s["saga_id"],
            s["saga"],
            s["state"],
            s["step"] or "-",
            str(s["attempt"]) if s["step"] else "-",
            duration_text(waited(s, now)),
            s["reason"] or "",
        )
        for s in ordered
    ]


def columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as lines of left-aligned columns."""
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def result_line(answer: m.SagaActionAnswered) -> str:
    verdict = "done" if answer.accepted else "refused"
    return f"{answer.saga_id}: {verdict}: {answer.answer}"


def exit_code(answers: Iterable[m.SagaActionAnswered], unanswered: int) -> int:
    """0 when every action was accepted; 4 when one got no answer in time (its outcome
    is unknown yet), else 3 when one was refused."""
    if unanswered:
        return EXIT_NO_ANSWER
    return EXIT_REFUSED if any(not a.accepted for a in answers) else 0
