"""The id rule every worker applies to the ids of the commands it handles."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from schemas.limits import CONTROL_CHARACTER, MAX_ID_LENGTH, id_problem


def test_the_control_character_pattern_is_exactly_unicode_category_cc() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        is_control = unicodedata.category(char) == "Cc"
        assert (CONTROL_CHARACTER.search(char) is not None) == is_control, hex(code)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (42, "order id must be a string"),
        ("", "order id is empty"),
        ("x" * (MAX_ID_LENGTH + 1), f"order id has {MAX_ID_LENGTH + 1} characters, at most"),
        ("ord\x00er", "order id contains a control character"),
        ("order\x85", "order id contains a control character"),  # C1: NEXT LINE
        ("order\x7f", "order id contains a control character"),
    ],
)
def test_an_id_breaking_a_rule_is_refused_naming_it(value: object, problem: str) -> None:
    found = id_problem("order id", value)
    assert found is not None and found.startswith(problem), found


@pytest.mark.parametrize("value", ["o", "x" * MAX_ID_LENGTH, "commande-é-ü-✓", "a b\u200bc"])
def test_an_id_within_the_rules_passes(value: str) -> None:
    assert id_problem("order id", value) is None
