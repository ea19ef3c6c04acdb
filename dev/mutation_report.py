"""Summarise the last `mutmut run`: per module killed/survived/timeout/other and the score
(killed / mutants run).

Reads `mutmut results --all true` (one "    NAME: STATUS" line per mutant), so the statuses
are mutmut's own. Every mutant that was not killed is listed by name, for `mutmut show NAME`.
Run from the project root after `mutmut run` (`make mutate` does both).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict

# participants.order.logic.x_create_order__mutmut_3, messaging.tables.xǁRowTableǁrow__mutmut_1
NAME = re.compile(r"^(?P<module>[\w.]+?)\.x(?:_|ǁ)(?P<function>.+)__mutmut_\d+$")
COLUMNS = ("killed", "survived", "timeout", "no tests", "other")


def results() -> list[tuple[str, str]]:
    mutmut = [sys.executable, "-m", "mutmut", "results", "--all", "true"]
    out = subprocess.run(mutmut, check=True, capture_output=True, text=True).stdout
    pairs = []
    for line in out.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and NAME.match(name):
            pairs.append((name, status))
    return pairs


def column(status: str) -> str:
    return status if status in COLUMNS else "other"


def module_and_function(name: str) -> tuple[str, str]:
    match = NAME.match(name)
    assert match, name
    return match["module"], match["function"].replace("ǁ", ".").lstrip(".")


def main() -> int:
    by_module: dict[str, Counter[str]] = defaultdict(Counter)
    not_killed: dict[str, list[tuple[str, str]]] = defaultdict(list)
    unselected = 0
    for name, status in results():
        if status == "not checked":  # outside the names given to `mutmut run`
            unselected += 1
            continue
        module, _ = module_and_function(name)
        by_module[module][column(status)] += 1
        if status != "killed":
            not_killed[module].append((name, status))
    if not by_module:
        print("no mutmut results: run `mutmut run` (or `make mutate`) first")
        return 1

    width = max(len(m) for m in by_module)
    print(f"{'module':<{width}}  " + "  ".join(f"{c:>8}" for c in COLUMNS) + "     score")
    total: Counter[str] = Counter()
    for module in sorted(by_module):
        counts = by_module[module]
        total.update(counts)
        print(row(module, counts, width))
    print(row("all", total, width))
    if unselected:
        print(f"({unselected} mutants outside the selection were not run)")

    for module in sorted(not_killed):
        print(f"\n{module}: not killed ({len(not_killed[module])})")
        for name, status in sorted(not_killed[module], key=lambda p: mutant_order(p[0])):
            print(f"  {status:<9} {module_and_function(name)[1]:<40} {name}")
    print("\nInspect one with: .venv/bin/mutmut show NAME")
    return 0


def row(label: str, counts: Counter[str], width: int) -> str:
    n = sum(counts.values())
    score = f"{100 * counts['killed'] / n:6.1f} %" if n else "     -"
    return f"{label:<{width}}  " + "  ".join(f"{counts[c]:>8}" for c in COLUMNS) + f"  {score}"


def mutant_order(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number)


if __name__ == "__main__":
    sys.exit(main())
