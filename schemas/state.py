"""Rows written by earlier releases: which this release reads exactly, which it refuses.

A table row (the orchestrator's saga, an order, a product's counters and holds, an
account and its payments) is Avro like every message, written with the schema of the
release that wrote it: the changelogs and local stores of a running system hold rows of
every release it ran. The codec reads any released schema (schemas/history) into the
current dataclass by Avro's resolution rules, which drop fields the current schema lacks
and fill new ones with their defaults. That is exact only if the old row meant the same:
a field dropped may have held state (what each saga holds of a product), a field added
may mean something the old row never said (the offset of another topic). Running on such
rows would lose or corrupt stock and money without a sign.

So every released row schema is classified here, and a test fails if one is not:

- READ_EXACTLY: the current release reads it with nothing lost or changed in meaning;
- REFUSED: the worker refuses to start on a store that holds such a row (and to read
  one at any time), naming the row and what to do (StateFromEarlierRelease). Each says why.

The rule for a release that changes a row is in the README ("Upgrading").
"""

from __future__ import annotations

from schemas import codec
from schemas import messages as m

# The dataclasses stored in tables (keys and rows: participants' logic, orchestrator).
ROW_TYPES: tuple[type, ...] = (
    m.SagaState,
    m.CancelSagaState,
    m.OrderRow,
    m.OrderCancel,
    m.StockRow,
    m.StockHold,
    m.CommandApplied,
    m.Account,
    m.Payment,
    m.Reservation,
)

_BEFORE_ROUTING_SLIP = "written by a release before the routing slip (small rows)"

# Released row schemas read exactly as they were meant.
READ_EXACTLY = {
    "SagaState.v1": (
        "version defaults to 1: every saga then started on definition version 1;"
        " traceparent defaults to null: no trace context was recorded then, and the"
        " saga's next write records the context of the record that moved it;"
        " entered_at defaults to null: not recorded then (updated_at, a later time, stands in)"
    ),
    "OrderRow.v1": (
        "cancel_saga defaults to null: no order was being cancelled then; applied_offset"
        " defaults to -1: no offset recorded, so its next command is decided from the"
        " status, as that release did"
    ),
    "StockRow.v3": "returned defaults to 0: nothing sold had been given back then",
    "StockHold.v1": "return_offset defaults to -1: no hold had been returned then",
    "Reservation.v1": "the current schema (no table of this release keeps it)",
}

# Released row schemas this release cannot read without losing what they held.
REFUSED = {
    "StockRow.v1": (
        f"{_BEFORE_ROUTING_SLIP}: it keeps each saga's reserved units and the ids of past "
        "restocks inside the product's row, which this release keeps in StockHold and "
        "CommandApplied rows; read as a current row, units held by sagas would belong to "
        "none and a repeated restock would be applied again"
    ),
    "StockRow.v2": (
        f"{_BEFORE_ROUTING_SLIP}: as StockRow.v1, and its applied_offset counts offsets "
        "of product.stock, a topic this release does not read: commands of "
        "product.commands below it would be skipped without a reply"
    ),
    "Account.v1": (
        f"{_BEFORE_ROUTING_SLIP}: it keeps each saga's payment and the ids of past "
        "top-ups inside the account, which this release keeps in Payment and "
        "CommandApplied rows; read as a current row, a cancel would refund nothing and "
        "a repeated top-up would be credited again"
    ),
}

WHAT_TO_DO = (
    "This release cannot take over that state (README, 'Upgrading'): keep running the "
    "release that wrote it, or start this one on fresh state."
)


class StateRefused(Exception):
    """A worker found state it cannot run on: it stops (exit 78) instead of guessing."""


class StateFromEarlierRelease(StateRefused):
    """A table holds a row written by an earlier release that this one refuses."""

    def __init__(self, table: str, key: bytes, schema: str) -> None:
        super().__init__(
            f"table {table} holds a {schema} row (key {key!r}), {REFUSED[schema]}. {WHAT_TO_DO}"
        )
        self.table, self.key, self.schema = table, key, schema


class UnreadableState(StateRefused):
    """A table holds a row this release cannot decode at all: written by a release it does
    not know (a later one, or a build that was never released), or damaged."""

    def __init__(self, table: str, key: bytes, problem: Exception) -> None:
        super().__init__(
            f"table {table} holds a row this release cannot read (key {key!r}: {problem}); "
            "it was written by a release this one does not know (a later one, or an "
            f"unreleased build). {WHAT_TO_DO}"
        )
        self.table, self.key = table, key


def _refused_fingerprints() -> dict[bytes, str]:
    released = codec.released_fingerprints()
    unknown = set(REFUSED) - set(released)
    if unknown:
        raise RuntimeError(f"schemas/state.py refuses schemas not in history: {sorted(unknown)}")
    return {released[name]: name for name in REFUSED}


_REFUSED_BY_FINGERPRINT = _refused_fingerprints()


def refused_schema(raw: bytes) -> str | None:
    """The released schema (e.g. "StockRow.v2") of an encoded row this release refuses, or
    None. Cheap: it only reads the fingerprint in the row's header."""
    return _REFUSED_BY_FINGERPRINT.get(raw[2 : codec.HEADER_SIZE])
