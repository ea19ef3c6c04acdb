"""Test data for the messages of schemas/messages.py, built from their type hints.

- ``st_message(cls)``: a hypothesis strategy for any message dataclass (nested ones too).
- ``example_message(cls)``: one deterministic instance, with every optional field set
  (or, with ``optional=False``, every optional field None).

Values stay within what the wire format keeps exactly: Decimals with 2 places and at
most 18 digits, aware UTC datetimes with whole milliseconds (timestamp-millis drops
the microseconds), ints within a signed 64-bit long.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")

MAX_AMOUNT = Decimal("9999999999999999.99")  # precision 18, scale 2
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1

st_amount = st.decimals(
    min_value=-MAX_AMOUNT, max_value=MAX_AMOUNT, places=2, allow_nan=False, allow_infinity=False
)
st_timestamp = st.datetimes(timezones=st.just(UTC)).map(
    lambda value: value.replace(microsecond=value.microsecond // 1000 * 1000)
)
st_long = st.integers(min_value=LONG_MIN, max_value=LONG_MAX)
st_string = st.text(max_size=12)


def _optional_inner(hint: Any) -> Any | None:
    """T for `T | None`, else None."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
        raise TypeError(f"unsupported union {hint!r}")
    return None


def st_for(hint: Any) -> st.SearchStrategy[Any]:
    """A strategy for any type hint used in schemas/messages.py."""
    inner = _optional_inner(hint)
    if inner is not None:
        return st.none() | st_for(inner)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return st.lists(st_for(item), max_size=3)
    if origin is dict:
        key, value = typing.get_args(hint)
        return st.dictionaries(st_for(key), st_for(value), max_size=3)
    if dataclasses.is_dataclass(hint):
        return st_message(typing.cast(type, hint))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(list(hint))
    simple: dict[Any, st.SearchStrategy[Any]] = {
        str: st_string,
        int: st_long,
        bool: st.booleans(),
        bytes: st.binary(max_size=16),
        Decimal: st_amount,
        datetime: st_timestamp,
    }
    if hint in simple:
        return simple[hint]
    raise TypeError(f"no strategy for {hint!r}")


def st_message(cls: type[T]) -> st.SearchStrategy[T]:
    """Any instance of a message dataclass (all fields drawn, defaults included)."""
    hints = typing.get_type_hints(cls)
    fields = {field.name: st_for(hints[field.name]) for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return st.builds(cls, **fields)


EXAMPLE_TIME = datetime(2024, 5, 17, 12, 30, 45, 123000, tzinfo=UTC)


def _example(hint: Any, name: str, optional: bool, index: int) -> Any:
    inner = _optional_inner(hint)
    if inner is not None:
        return _example(inner, name, optional, index) if optional else None
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_example(item, name, optional, index + i) for i in range(2)]
    if origin is dict:
        _, value = typing.get_args(hint)
        return {f"{name}-{index + i}": _example(value, name, optional, index + i) for i in range(2)}
    if dataclasses.is_dataclass(hint):
        return example_message(typing.cast(type, hint), optional=optional, index=index)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return list(hint)[index % len(hint)]
    if hint is str:
        return f"{name}-{index}"
    if hint is bool:
        return index % 2 == 1
    if hint is int:
        return 3 + index
    if hint is bytes:
        return bytes([index, 0xC3, 0x01, 0xFF])
    if hint is Decimal:
        return Decimal("1234.56") + index
    if hint is datetime:
        return EXAMPLE_TIME + timedelta(seconds=index)
    raise TypeError(f"no example for {hint!r}")


def example_message(cls: type[T], *, optional: bool = True, index: int = 1) -> T:
    """A deterministic instance of a message dataclass; optional fields set or None."""
    hints = typing.get_type_hints(cls)
    values = {
        field.name: _example(hints[field.name], field.name, optional, index)
        for field in dataclasses.fields(cls)  # type: ignore[arg-type]
    }
    return cls(**values)
