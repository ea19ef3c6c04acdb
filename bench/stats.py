"""Pure arithmetic of the benchmark: rates, pacing, percentiles, throughput."""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX = None  # the "max" rate: no pacing, only the in-flight window limits offering
Rate = float | None


def parse_rates(text: str) -> list[Rate]:
    """ "100,300,1000,max" -> [100.0, 300.0, 1000.0, None]."""
    rates: list[Rate] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part == "max":
            rates.append(MAX)
            continue
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(f"{part!r} is neither a rate per second nor 'max'") from None
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate {part!r} must be a positive number")
        rates.append(rate)
    if not rates:
        raise ValueError("no rates given")
    return rates


def rate_label(rate: Rate) -> str:
    return "max" if rate is None else f"{rate:g}/s"


def due_count(rate: float, elapsed: float) -> int:
    """How many requests a constant-rate schedule has made due `elapsed` seconds in.

    Request i is due at i / rate (the first at once), so the count is floor(elapsed * rate) + 1.
    """
    if elapsed < 0:
        return 0
    return math.floor(elapsed * rate) + 1


def seconds_until_due(rate: float, index: int, elapsed: float) -> float:
    """Time from `elapsed` until request number `index` (0-based) is due; 0 if it is."""
    return max(0.0, index / rate - elapsed)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, interpolating linearly between ranks.

    Same definition as numpy's default ("linear"): rank = q/100 * (n - 1).
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    rank = q / 100 * (len(sorted_values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = rank - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean in milliseconds (None when nothing completed)."""
    keys = ("p50", "p95", "p99", "max", "mean")
    if not latencies_ms:
        return dict.fromkeys(keys)
    ordered = sorted(latencies_ms)
    return {
        "p50": round(percentile(ordered, 50), 2),
        "p95": round(percentile(ordered, 95), 2),
        "p99": round(percentile(ordered, 99), 2),
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
    }


def per_second(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)
