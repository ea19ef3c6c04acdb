"""Durations as people write them: a positive number and a unit, "500ms", "30s", "10m",
"12h", "7d". Used by the retention (SAGA_RETENTION) and by the operators' selections
(`saga list --stuck-for 10m`, `/sagas?stuck_for=10m`)."""

from __future__ import annotations

import re
from datetime import timedelta

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAXIMUM = timedelta(days=100 * 365)
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
EXPECTED = "a positive number and a unit, ms, s, m, h or d (e.g. 10m, 12h, 7d), at most 100 years"


class DurationError(ValueError):
    """Not a duration; the message says what is accepted."""


def parse_duration(text: object, what: str = "duration") -> timedelta:
    """`text` as a timedelta; anything else raises DurationError naming `what`."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    seconds = float(match.group(1)) * UNITS[match.group(2)] if match else 0.0
    if not match or seconds <= 0 or seconds > MAXIMUM.total_seconds():
        named = f"{what} {text!r}" if what else repr(text)
        raise DurationError(f"{named} is not a duration: give {EXPECTED}")
    return timedelta(seconds=seconds)
