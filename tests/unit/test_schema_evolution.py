"""Schema evolution: every current schema stays compatible with every released one.

schemas/history/<Name>.v<N>.avsc are the released versions of schemas/<Name>.avsc. For
each pair, in both directions (a new worker reads old records, an old worker reads new
records, during a rolling upgrade or a changelog replay):

- data written with one schema is read with the other (fastavro schema resolution),
- the Apache Avro library's reader/writer compatibility checker agrees,
- the logical types (and their precision and scale) agree wherever both schemas have
  the same field: canonical forms and so the two checks above ignore them, yet e.g. a
  decimal's scale or a timestamp's unit changes what the same bytes mean,
- and the codec decodes a record written with a released schema into today's class.
"""

from __future__ import annotations

import io
import json
import re
import typing
from decimal import Decimal
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas import codec
from schemas.messages import StockRow

SCHEMA_DIR = Path(codec.__file__).parent
HISTORY_DIR = SCHEMA_DIR / "history"
CURRENT = {path.stem: path for path in sorted(SCHEMA_DIR.glob("*.avsc"))}
RELEASED = sorted(HISTORY_DIR.glob("*.avsc"))
RELEASED_NAME = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")
VARIANTS = range(4)  # sample data variants: union branches, enum symbols


def _raw(path: Path) -> dict[str, Any]:
    return typing.cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))


def _parse(raw: dict[str, Any]) -> dict[str, Any]:
    return typing.cast(dict[str, Any], fastavro.parse_schema(raw))


def _fingerprint(parsed: dict[str, Any]) -> bytes:
    canonical_form = fastavro.schema.to_parsing_canonical_form(parsed)
    return bytes.fromhex(fastavro.schema.fingerprint(canonical_form, "CRC-64-AVRO"))


# ------------------------------------------------------------------- sample data


def _sample(schema: Any, named: dict[str, Any], variant: int) -> Any:
    """A valid datum of any (fastavro-parsed) schema; `variant` picks union branches and
    enum symbols so that several datums cover them."""
    if isinstance(schema, list):
        return _sample(schema[variant % len(schema)], named, variant)
    if isinstance(schema, str):
        if schema in named:
            return _sample(named[schema], named, variant)
        return {
            "null": None,
            "boolean": variant % 2 == 0,
            "int": 7 + variant,
            "long": 1_715_949_045_123 + variant,
            "float": 1.5,
            "double": 2.25,
            "string": f"text-{variant}",
            "bytes": bytes([variant, 0xC3, 0x01]),
        }[schema]
    kind = schema["type"]
    if schema.get("logicalType") == "decimal":
        return Decimal(123456 + variant).scaleb(-schema.get("scale", 0))
    if kind == "record":
        return {f["name"]: _sample(f["type"], named, variant) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][variant % len(schema["symbols"])]
    if kind == "array":
        return [_sample(schema["items"], named, variant + i) for i in range(2)]
    if kind == "map":
        return {f"key-{i}": _sample(schema["values"], named, variant + i) for i in range(2)}
    if kind == "fixed":
        return bytes(schema["size"])
    return _sample(kind, named, variant)  # {"type": "long", ...} and other primitives


def _write(schema: dict[str, Any], datum: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, datum)
    return buffer.getvalue()


def _read(data: bytes, writer: dict[str, Any], reader: dict[str, Any]) -> Any:
    buffer = io.BytesIO(data)
    datum = fastavro.schemaless_reader(buffer, writer, reader)
    assert buffer.tell() == len(data)
    return datum


LOGICAL_ATTRIBUTES = ("logicalType", "precision", "scale")


def _physical_name(schema: Any) -> str:
    """What tells union branches apart: a named type's full name, else the Avro type."""
    if isinstance(schema, str):
        return schema
    if schema["type"] in ("record", "enum", "fixed"):
        return str(schema["name"])
    return str(schema["type"])


def _logical_types(
    schema: Any, named: dict[str, Any], path: str = "", inside: frozenset[str] = frozenset()
) -> dict[str, dict[str, Any]]:
    """The logical type attributes of every node of a parsed schema ({} when it has none),
    by "path:physical type" (array items add "[]", map values "{}"; union branches share
    their field's path, so a field that becomes a union keeps its nodes)."""
    if isinstance(schema, list):
        found: dict[str, dict[str, Any]] = {}
        for branch in schema:
            found |= _logical_types(branch, named, path, inside)
        return found
    if isinstance(schema, str) and schema in named:
        if schema in inside:  # a recursive reference: its nodes are already walked
            return {}
        return _logical_types(named[schema], named, path, inside | {schema})
    where = f"{path}:{_physical_name(schema)}"
    if isinstance(schema, str):
        return {where: {}}
    attributes = {name: schema[name] for name in LOGICAL_ATTRIBUTES if name in schema}
    if attributes.get("logicalType") == "decimal":
        attributes.setdefault("scale", 0)  # the Avro default
    found = {where: attributes}
    if schema["type"] == "record":
        inside = inside | {schema["name"]}
        for field in schema["fields"]:
            # under its aliases too: a renamed field is matched with its old name
            for name in (field["name"], *field.get("aliases", ())):
                found |= _logical_types(field["type"], named, f"{path}.{name}", inside)
    elif schema["type"] == "array":
        found |= _logical_types(schema["items"], named, f"{path}[]", inside)
    elif schema["type"] == "map":
        found |= _logical_types(schema["values"], named, f"{path}{{}}", inside)
    return found


def logical_type_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Where a node both schemas have differs in logical type, precision or scale."""
    released, current = _parse(old), _parse(new)
    before = _logical_types(released, released["__named_schemas"])
    after = _logical_types(current, current["__named_schemas"])
    return [
        f"{where.lstrip('.')}: released {before[where] or 'no logical type'},"
        f" current {after[where] or 'no logical type'}"
        for where in sorted(before.keys() & after.keys())
        if before[where] != after[where]
    ]


def compatibility_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Why data cannot go from one schema to the other (both ways); [] if it can."""
    problems = []
    parsed = {"released": _parse(old), "current": _parse(new)}
    apache = {
        "released": avro.schema.parse(json.dumps(old)),
        "current": avro.schema.parse(json.dumps(new)),
    }
    for writer, reader in [("released", "current"), ("current", "released")]:
        for variant in VARIANTS:
            datum = _sample(parsed[writer], parsed[writer]["__named_schemas"], variant)
            try:
                _read(_write(parsed[writer], datum), parsed[writer], parsed[reader])
            except Exception as exc:
                problems.append(f"{writer} data, read with {reader} schema: {exc!r}")
                break
        result = ReaderWriterCompatibilityChecker().get_compatibility(
            apache[reader], apache[writer]
        )
        if result.compatibility is not SchemaCompatibilityType.compatible:
            problems.append(f"{reader} cannot read {writer} (avro): {result.messages}")
    problems += [f"logical type changed: {p}" for p in logical_type_problems(old, new)]
    return problems


# ------------------------------------------------------------------------ the tests


def test_history_holds_released_versions_of_current_schemas() -> None:
    """No message is silently deleted or renamed: every released schema has a current
    counterpart, under the same full name (or the current one lists it as an alias)."""
    assert RELEASED, "schemas/history/ is empty"
    versions: dict[str, list[int]] = {}
    for path in RELEASED:
        match = RELEASED_NAME.match(path.name)
        assert match, f"{path.name}: expected <Name>.v<N>.avsc"
        name = match["name"]
        assert name in CURRENT, f"{path.name}: released, but schemas/{name}.avsc is gone"
        released, current = _raw(path), _raw(CURRENT[name])
        full_name = f"{released['namespace']}.{released['name']}"
        current_names = {f"{current['namespace']}.{current['name']}", *current.get("aliases", [])}
        assert full_name in current_names, f"{path.name}: {full_name} renamed without alias"
        versions.setdefault(name, []).append(int(match["version"]))
    for name, numbers in versions.items():
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), f"{name}: versions {numbers}"


@pytest.mark.parametrize("released", RELEASED, ids=lambda path: path.name)
def test_current_schema_is_compatible_with_released(released: Path) -> None:
    name = released.name.split(".", 1)[0]
    assert compatibility_problems(_raw(released), _raw(CURRENT[name])) == []


@pytest.mark.parametrize("released", RELEASED, ids=lambda path: path.name)
def test_codec_decodes_records_written_with_released_schema(released: Path) -> None:
    name = released.name.split(".", 1)[0]
    schema = _parse(_raw(released))
    fingerprint = _fingerprint(schema)
    for variant in VARIANTS:
        body = _write(schema, _sample(schema, schema["__named_schemas"], variant))
        message = codec.decode(codec.MAGIC + fingerprint + body)
        assert codec.type_name(message) == name


# ----------------------------------------------- the checks catch what they should


def _older_stock_row() -> dict[str, Any]:
    """StockRow as it would have been before applied_offset was added (with a default)."""
    raw = _raw(CURRENT["StockRow"])
    raw["fields"] = [f for f in raw["fields"] if f["name"] != "applied_offset"]
    return raw


def test_adding_a_field_with_a_default_is_compatible() -> None:
    assert compatibility_problems(_older_stock_row(), _raw(CURRENT["StockRow"])) == []


def test_incompatible_changes_are_caught() -> None:
    current = _raw(CURRENT["StockRow"])
    without_default = json.loads(json.dumps(current))
    without_default["fields"].append({"name": "shelf", "type": "string"})
    assert compatibility_problems(current, without_default)  # old records lack `shelf`

    retyped = json.loads(json.dumps(current))
    retyped["fields"][1]["type"] = "string"  # available: long -> string
    assert compatibility_problems(current, retyped)

    renamed = json.loads(json.dumps(current))
    renamed["fields"][0]["name"] = "product"  # product_id renamed without alias
    assert compatibility_problems(current, renamed)


def _changed(schema: dict[str, Any], change: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(schema))
    change({field["name"]: field for field in copy["fields"]})
    return copy


def test_logical_type_changes_are_caught() -> None:
    current = _raw(CURRENT["SagaState"])

    def rescale(fields: dict[str, Any]) -> None:  # a record inside a union
        fields["total"]["type"][1]["fields"][0]["type"]["scale"] = 3

    def plain_long(fields: dict[str, Any]) -> None:
        fields["created_at"]["type"] = "long"

    def micros(fields: dict[str, Any]) -> None:  # a union branch
        fields["deadline"]["type"][1]["logicalType"] = "timestamp-micros"

    assert logical_type_problems(current, _changed(current, rescale)) == [
        "total.amount:bytes: released {'logicalType': 'decimal', 'precision': 18, 'scale': 2},"
        " current {'logicalType': 'decimal', 'precision': 18, 'scale': 3}"
    ]
    assert logical_type_problems(current, _changed(current, plain_long)) == [
        "created_at:long: released {'logicalType': 'timestamp-millis'}, current no logical type"
    ]
    assert logical_type_problems(current, _changed(current, micros)) == [
        "deadline:long: released {'logicalType': 'timestamp-millis'},"
        " current {'logicalType': 'timestamp-micros'}"
    ]
    for change in (rescale, plain_long, micros):
        assert compatibility_problems(current, _changed(current, change))


def test_logical_types_are_compared_inside_maps_and_arrays() -> None:
    def prices(scale: int) -> dict[str, Any]:
        decimal = {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": scale}
        prices = {"type": "map", "values": {"type": "array", "items": decimal}}
        return {"type": "record", "name": "Prices", "fields": [{"name": "p", "type": prices}]}

    assert logical_type_problems(prices(2), prices(2)) == []
    assert [p.split(":")[0] for p in logical_type_problems(prices(2), prices(3))] == ["p{}[]"]


def test_making_a_field_optional_keeps_its_logical_type_comparable() -> None:
    current = _raw(CURRENT["SagaState"])

    def optional_millis(fields: dict[str, Any]) -> None:
        fields["created_at"]["type"] = ["null", fields["created_at"]["type"]]

    def optional_micros(fields: dict[str, Any]) -> None:
        fields["created_at"]["type"] = ["null", {"type": "long", "logicalType": "timestamp-micros"}]

    assert logical_type_problems(current, _changed(current, optional_millis)) == []
    assert logical_type_problems(current, _changed(current, optional_micros))


def test_codec_resolves_an_older_writer_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """A record written before applied_offset existed decodes with its default."""
    older = _parse(_older_stock_row())
    fingerprint = _fingerprint(older)
    current = codec._BY_CLASS[StockRow]
    physical = _parse(codec._physical(_older_stock_row()))
    writer = codec._WriterSchema(current, physical, current.physical_schema)
    monkeypatch.setitem(codec._BY_FINGERPRINT, fingerprint, writer)
    datum = {
        "product_id": "apple",
        "available": 5,
        "reserved": 1,
        "sold": 2,
        "restocked": 8,
        "unit_price": {"amount": Decimal("0.99"), "currency": "EUR"},
    }
    row = codec.decode(codec.MAGIC + fingerprint + _write(older, datum))
    assert isinstance(row, StockRow)
    assert row.applied_offset == -1
    assert row.unit_price.amount == Decimal("0.99")
