"""The README's "Write your own saga" walkthrough runs as written: its Python blocks,
in order, declare a saga on the engine and decide one through to its end."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def walkthrough() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Write your own saga\n", 1)[1].split("\n## ", 1)[0]
    blocks = PYTHON_BLOCK.findall(section)
    assert len(blocks) == 3, f"expected the walkthrough's three Python blocks, found {len(blocks)}"
    return "\n".join(blocks)


def test_the_walkthrough_declares_a_saga_and_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("walkthrough")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(walkthrough(), "README.md (Write your own saga)", "exec"), module.__dict__)
    assert module.booking.state == "NOT_BOOKED"  # the last block's saga ended
