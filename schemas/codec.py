"""Avro wire format of the messages in schemas/messages.py.

Every message travels as Avro *single-object encoding*:

    C3 01 | CRC-64-AVRO fingerprint of the schema (8 bytes, little-endian) | Avro body

so any message can be decoded from the .avsc files of this package alone, without a
schema registry. The schemas are the ``*.avsc`` files next to this module (one per
message class, file name = class name); ``history/<Name>.v<N>.avsc`` are released
versions, still accepted as writer schemas and resolved to the current one.

Python side: ``encode(message)`` takes a dataclass instance of schemas.messages,
``decode(data)`` returns one. Conversions between dataclasses and the dicts fastavro
works with are compiled once per schema at import, from the dataclass type hints and the
Avro schema together (a mismatch between the two fails at import).

Errors: anything wrong with input bytes raises ``MessageDecodeError`` (and nothing else);
a value that does not fit its schema raises ``MessageEncodeError``. Both carry a short
machine-readable ``reason``.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import json
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation
from functools import cache
from pathlib import Path
from typing import Any, TypeVar, cast

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from faust.serializers import codecs as faust_codecs

from schemas import messages

__all__ = [
    "FAUST_CODEC_NAME",
    "AvroMessageCodec",
    "MessageCodecError",
    "MessageDecodeError",
    "MessageEncodeError",
    "decode",
    "decode_as",
    "encode",
    "fingerprint_of",
    "message_types",
    "register_faust_codec",
    "schema_of",
    "type_name",
]

SCHEMA_DIR = Path(__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"
MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
FAUST_CODEC_NAME = "saga-avro"

T = TypeVar("T")
Converter = Callable[[Any], Any]


# ---------------------------------------------------------------------------- errors


class MessageCodecError(Exception):
    """Base of the codec errors: ``str(error)`` is for humans, ``reason`` for machines."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


class MessageDecodeError(MessageCodecError):
    """Bytes that are not a valid message.

    reason: ``not-avro`` (no single-object marker), ``truncated``, ``unknown-fingerprint``,
    ``invalid-body`` (the body does not match the schema), ``trailing-bytes``,
    ``unexpected-type`` (a valid message of a type the caller does not accept),
    ``invalid-message`` (a valid message its reader refuses, e.g. an order id that breaks
    the input limits of schemas/limits.py).
    """


class MessageEncodeError(MessageCodecError):
    """A value that cannot be encoded.

    reason: ``unknown-type`` (not a message class) or ``invalid-value``.
    """


class _InvalidValue(ValueError):
    """Raised by the converters; turned into MessageEncodeError / MessageDecodeError."""


# ---------------------------------------------------------- dataclass <-> fastavro dicts
#
# For each (type hint, Avro schema) pair a pair of converters is compiled at import:
# ``to_avro`` checks a Python value and turns it into what fastavro writes, ``from_avro``
# turns what fastavro read back into the Python value. ``None`` stands for "use the value
# as it is": fastavro already rejects a wrong type there (str, bytes, `str | None`), so
# checks are only added where fastavro would silently write something else (a float or
# bool as a long, any object as a boolean, a str as an array) or where Python needs a
# conversion (dataclasses, enums, Decimal, datetime).

Converters = tuple[Converter | None, Converter | None]


@cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _kind(value: Any) -> str:
    return type(value).__name__


class _Compiler:
    """Compiles the converters of one top-level schema (whose named types it knows)."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named

    def compile(self, hint: Any, schema: Any, path: str) -> Converters:
        if isinstance(schema, str) and schema in self.named:
            schema = self.named[schema]
        origin = typing.get_origin(hint)
        if origin in (types.UnionType, typing.Union):
            return self.optional(hint, schema, path)
        if origin is list:
            return self.array(hint, schema, path)
        if origin is dict:
            return self.map(hint, schema, path)
        if dataclasses.is_dataclass(hint):
            return self.record(cast(type, hint), schema, path)
        if isinstance(hint, type) and issubclass(hint, enum.Enum):
            return self.enum(hint, schema, path)
        avro_type = schema.get("type") if isinstance(schema, dict) else schema
        logical_type = schema.get("logicalType") if isinstance(schema, dict) else None
        if hint is Decimal and avro_type == "bytes" and logical_type == "decimal":
            return _decimal(schema["precision"], schema.get("scale", 0), path)
        if hint is datetime and avro_type == "long" and logical_type == "timestamp-millis":
            return _timestamp_millis(path)
        if logical_type is None and isinstance(avro_type, str):
            make = _PRIMITIVES.get((hint, avro_type))
            if make is not None:
                return make(path), None
        raise TypeError(f"{path}: Python type {hint!r} does not match Avro type {schema!r}")

    def optional(self, hint: Any, schema: Any, path: str) -> Converters:
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(args) != 1 or not isinstance(schema, list) or len(schema) != 2:
            raise TypeError(f'{path}: only `T | None` <-> ["null", T] unions are supported')
        if schema[0] != "null":
            raise TypeError(f'{path}: the union of an optional field must start with "null"')
        inner_to, inner_from = self.compile(args[0], schema[1], path)
        return _unless_none(inner_to), _unless_none(inner_from)

    def array(self, hint: Any, schema: Any, path: str) -> Converters:
        if not isinstance(schema, dict) or schema.get("type") != "array":
            raise TypeError(f"{path}: a list needs an Avro array, not {schema!r}")
        (item_hint,) = typing.get_args(hint)
        item_to, item_from = self.compile(item_hint, schema["items"], f"{path}[]")

        def to_avro(value: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise _InvalidValue(f"{path}: expected a list, got {_kind(value)}")
            return value if item_to is None else [item_to(item) for item in value]

        if item_from is None:
            return to_avro, None
        decode_item = item_from

        def from_avro(value: Any) -> Any:
            return [decode_item(item) for item in value]

        return to_avro, from_avro

    def map(self, hint: Any, schema: Any, path: str) -> Converters:
        if not isinstance(schema, dict) or schema.get("type") != "map":
            raise TypeError(f"{path}: a dict needs an Avro map, not {schema!r}")
        key_hint, value_hint = typing.get_args(hint)
        if key_hint is not str:
            raise TypeError(f"{path}: Avro map keys are strings, not {key_hint!r}")
        value_to, value_from = self.compile(value_hint, schema["values"], f"{path}{{}}")

        def to_avro(value: Any) -> Any:
            if not isinstance(value, dict):
                raise _InvalidValue(f"{path}: expected a dict, got {_kind(value)}")
            if value_to is None:
                return value  # fastavro checks that keys and values are strings
            return {key: value_to(item) for key, item in value.items()}

        if value_from is None:
            return to_avro, None
        decode_value = value_from

        def from_avro(value: Any) -> Any:
            return {key: decode_value(item) for key, item in value.items()}

        return to_avro, from_avro

    def enum(self, hint: type[enum.Enum], schema: Any, path: str) -> Converters:
        if not isinstance(schema, dict) or schema.get("type") != "enum":
            raise TypeError(f"{path}: {hint.__name__} needs an Avro enum, not {schema!r}")
        symbols = [member.value for member in hint]
        if schema["symbols"] != symbols:
            raise TypeError(f"{path}: Avro symbols {schema['symbols']} != {symbols}")
        by_value = {member.value: member for member in hint}

        def to_avro(value: Any) -> Any:
            if isinstance(value, str) and value in by_value:
                return by_value[value].value
            raise _InvalidValue(f"{path}: expected one of {symbols}, got {value!r}")

        return to_avro, by_value.__getitem__

    def record(self, cls: type, schema: Any, path: str) -> tuple[Converter, Converter]:
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise TypeError(f"{path}: {cls.__name__} needs an Avro record, not {schema!r}")
        names = [field.name for field in dataclasses.fields(cls)]
        avro_names = [field["name"] for field in schema["fields"]]
        if names != avro_names:
            raise TypeError(
                f"{path}: the fields of dataclass {cls.__name__} {names} differ from those "
                f"of Avro record {schema['name']} {avro_names} (same names, same order)"
            )
        hints = _type_hints(cls)
        to_fields: list[tuple[str, Converter]] = []  # only the fields that need one
        from_fields: list[tuple[str, Converter]] = []
        for field in schema["fields"]:
            name = field["name"]
            to_field, from_field = self.compile(hints[name], field["type"], f"{path}.{name}")
            if to_field is not None:
                to_fields.append((name, to_field))
            if from_field is not None:
                from_fields.append((name, from_field))
        fields_of, instance_of = _field_access(cls, names)

        def to_avro(value: Any) -> Any:
            if type(value) is not cls:
                raise _InvalidValue(f"{path}: expected {cls.__name__}, got {_kind(value)}")
            data = fields_of(value)
            for name, convert in to_fields:
                data[name] = convert(data[name])
            return data

        def from_avro(value: Any) -> Any:
            # `value` is the dict fastavro just read with the current schema: its keys are
            # exactly the dataclass fields.
            for name, convert in from_fields:
                value[name] = convert(value[name])
            return instance_of(value)

        return to_avro, from_avro


def _field_access(cls: type, names: list[str]) -> tuple[Converter, Converter]:
    """How to get a dataclass instance's fields as a new dict, and build one from a dict.

    The messages are plain dataclasses: an instance's ``__dict__`` holds exactly its
    fields, and ``__init__`` only sets them. Copying that dict and filling it in directly
    (instead of getattr per field and the frozen ``__init__``, which goes through
    ``object.__setattr__`` per field) makes a row with a thousand nested records encode
    and decode several milliseconds faster. A class with ``__post_init__``, slots or
    non-init fields gets the ordinary, slower way.
    """
    plain = (
        not hasattr(cls, "__post_init__")
        and "__slots__" not in vars(cls)
        and all(field.init for field in dataclasses.fields(cls))
    )
    if plain:

        def fields_of(value: Any) -> dict[str, Any]:
            return value.__dict__.copy()

        def instance_of(data: dict[str, Any]) -> Any:
            instance: Any = object.__new__(cls)
            instance.__dict__.update(data)
            return instance

        return fields_of, instance_of

    def getattr_fields(value: Any) -> dict[str, Any]:
        return {name: getattr(value, name) for name in names}

    def construct(data: dict[str, Any]) -> Any:
        return cls(**data)

    return getattr_fields, construct


def _unless_none(convert: Converter | None) -> Converter | None:
    if convert is None:
        return None
    inner = convert

    def convert_unless_none(value: Any) -> Any:
        return None if value is None else inner(value)

    return convert_unless_none


def _exactly(expected: type) -> Callable[[str], Converter]:
    """A check of the exact type: fastavro writes a float or bool as a long, anything as a
    boolean, without a word."""

    def make(path: str) -> Converter:
        def to_avro(value: Any) -> Any:
            if type(value) is not expected:
                raise _InvalidValue(f"{path}: expected {expected.__name__}, got {_kind(value)}")
            return value

        return to_avro

    return make


def _checked_by_fastavro(path: str) -> None:
    return None


_PRIMITIVES: dict[tuple[Any, str], Callable[[str], Converter | None]] = {
    (str, "string"): _checked_by_fastavro,
    (bytes, "bytes"): _checked_by_fastavro,
    (int, "long"): _exactly(int),
    (int, "int"): _exactly(int),
    (bool, "boolean"): _exactly(bool),
}


def _decimal(precision: int, scale: int, path: str) -> tuple[Converter, Converter]:
    """Decimal <-> Avro ``decimal``: the unscaled integer, two's-complement big-endian."""
    bound = 10**precision  # the unscaled integer must have at most `precision` digits
    limit = Decimal(bound).scaleb(-scale)
    # Traps Inexact: a value with more digits than `precision` is refused, never rounded.
    context = Context(prec=precision, traps=[Inexact, InvalidOperation])

    def problem(value: Any) -> _InvalidValue:
        if not isinstance(value, Decimal):
            return _InvalidValue(f"{path}: expected Decimal, got {_kind(value)}")
        if not value.is_finite():
            return _InvalidValue(f"{path}: {value} is not a finite number")
        if value.copy_abs() >= limit:
            return _InvalidValue(
                f"{path}: {value} has more than {precision - scale} integer digits"
            )
        return _InvalidValue(f"{path}: {value} has more than {scale} decimal places")

    def to_avro(value: Any) -> Any:
        try:
            scaled = value.scaleb(scale, context)
            unscaled = int(scaled)
            valid = unscaled == scaled and -bound < unscaled < bound
        except (ArithmeticError, AttributeError, TypeError, ValueError):
            valid = False
        if not valid or not isinstance(value, Decimal):
            raise problem(value)
        return unscaled.to_bytes((unscaled.bit_length() + 8) // 8, "big", signed=True)

    def from_avro(value: Any) -> Any:
        unscaled = int.from_bytes(value, "big", signed=True)
        if not -bound < unscaled < bound:
            raise _InvalidValue(f"{path}: {unscaled}E-{scale} has more than {precision} digits")
        return Decimal(unscaled).scaleb(-scale, context)

    return to_avro, from_avro


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def _timestamp_millis(path: str) -> tuple[Converter, Converter]:
    """Aware datetime <-> milliseconds since the epoch; decoded as UTC."""

    def to_avro(value: Any) -> Any:
        if not isinstance(value, datetime):
            raise _InvalidValue(f"{path}: expected datetime, got {_kind(value)}")
        if value.utcoffset() is None:
            raise _InvalidValue(f"{path}: naive datetime {value}; use an aware UTC datetime")
        return (value - _EPOCH) // _MILLISECOND

    def from_avro(value: Any) -> Any:
        return _EPOCH + timedelta(milliseconds=value)

    return to_avro, from_avro


# -------------------------------------------------------------------- schema registry


@dataclasses.dataclass(frozen=True, slots=True)
class _MessageType:
    cls: type
    schema: dict[str, Any]  # the current schema, parsed by fastavro
    physical_schema: dict[str, Any]  # the same without logical types (see _physical)
    fingerprint: bytes  # CRC-64-AVRO of the Parsing Canonical Form, little-endian
    header: bytes  # MAGIC + fingerprint
    to_avro: Converter
    from_avro: Converter


@dataclasses.dataclass(frozen=True, slots=True)
class _WriterSchema:
    """A schema a message may have been written with: the current one or a released one."""

    message_type: _MessageType
    schema: dict[str, Any]  # physical
    reader_schema: dict[str, Any] | None  # physical current schema; None if it is the same


def _read_schema(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RuntimeError(f"{path}: not JSON: {exc}") from exc


def _parse(schema: Any, path: Path) -> dict[str, Any]:
    try:
        return cast(dict[str, Any], fastavro.parse_schema(schema))
    except Exception as exc:
        raise RuntimeError(f"{path}: invalid Avro schema: {exc}") from exc


def _physical(schema: Any) -> Any:
    """The schema without its logical types, which is what fastavro writes and reads.

    The converters turn datetimes and Decimals into longs and bytes and back themselves,
    faster than fastavro's logical types do (its decimal reader dominates the decoding
    of a row with a few amounts). The bytes are the same, and so is the fingerprint
    (canonical forms have no logical types).
    """
    if isinstance(schema, list):
        return [_physical(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "logicalType" in schema:
        return schema["type"]
    return {key: _physical(value) for key, value in schema.items()}


def _fingerprint(schema: dict[str, Any]) -> bytes:
    # fastavro gives the hex of the 8 bytes, already in little-endian (wire) order.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def _message_type(cls: type, path: Path) -> _MessageType:
    raw = _read_schema(path)
    schema = _parse(raw, path)
    physical_schema = _parse(_physical(raw), path)
    if schema["name"].rpartition(".")[2] != cls.__name__:
        raise RuntimeError(f"{path}: the record is named {schema['name']}, not {cls.__name__}")
    compiler = _Compiler(schema["__named_schemas"])
    to_avro, from_avro = compiler.record(cls, schema, cls.__name__)
    fp = _fingerprint(schema)
    assert _fingerprint(physical_schema) == fp
    return _MessageType(cls, schema, physical_schema, fp, MAGIC + fp, to_avro, from_avro)


def _load_registry() -> tuple[dict[type, _MessageType], dict[bytes, _WriterSchema]]:
    """The current schema of every message class, and every schema by fingerprint."""
    by_class: dict[type, _MessageType] = {}
    by_fingerprint: dict[bytes, _WriterSchema] = {}

    def add_writer(fp: bytes, writer: _WriterSchema, path: Path) -> None:
        known = by_fingerprint.setdefault(fp, writer)
        if known.message_type is not writer.message_type:
            raise RuntimeError(f"{path}: same fingerprint as {known.message_type.cls.__name__}")

    for path in sorted(SCHEMA_DIR.glob("*.avsc")):
        cls = getattr(messages, path.stem, None)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise RuntimeError(f"{path}: no dataclass {path.stem} in schemas/messages.py")
        current = by_class[cls] = _message_type(cls, path)
        writer = _WriterSchema(current, current.physical_schema, None)
        add_writer(current.fingerprint, writer, path)

    by_name = {cls.__name__: message_type for cls, message_type in by_class.items()}
    for path in sorted(HISTORY_DIR.glob("*.avsc")):  # <Name>.v<N>.avsc
        name = path.name.split(".", 1)[0]
        if name not in by_name:
            raise RuntimeError(f"{path}: a released message without a current {name}.avsc")
        released = _parse(_physical(_read_schema(path)), path)
        fp = _fingerprint(released)
        current = by_name[name]
        if fp != current.fingerprint:
            writer = _WriterSchema(current, released, current.physical_schema)
            add_writer(fp, writer, path)
    return by_class, by_fingerprint


_BY_CLASS, _BY_FINGERPRINT = _load_registry()
_MESSAGE_TYPES = [c for c in vars(messages).values() if isinstance(c, type) and c in _BY_CLASS]


# ---------------------------------------------------------------------------- public API


def message_types() -> list[type]:
    """Every message class that has a schema, in the order of schemas/messages.py."""
    return list(_MESSAGE_TYPES)


def released_fingerprints() -> dict[str, bytes]:
    """The fingerprint of every released schema, by its history name (e.g. "StockRow.v2")."""
    return {
        path.name.removesuffix(".avsc"): _fingerprint(_parse(_read_schema(path), path))
        for path in sorted(HISTORY_DIR.glob("*.avsc"))
    }


def type_name(obj_or_cls: object) -> str:
    """The class name of a message or message class, e.g. ``"CreateOrder"``."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return cls.__name__


def _lookup(cls: type) -> _MessageType:
    try:
        return _BY_CLASS[cls]
    except (KeyError, TypeError):
        raise ValueError(f"{cls!r} is not a message type of schemas/") from None


def schema_of(cls: type) -> dict[str, Any]:
    """The fastavro-parsed current schema of a message class (shared: do not mutate)."""
    return _lookup(cls).schema


def fingerprint_of(cls: type) -> bytes:
    """The 8-byte CRC-64-AVRO fingerprint of the class's schema, as on the wire."""
    return _lookup(cls).fingerprint


def encode(message: object) -> bytes:
    """Avro single-object encoding of a message (a dataclass of schemas.messages)."""
    message_type = _BY_CLASS.get(type(message))
    if message_type is None:
        raise MessageEncodeError(
            "unknown-type", f"cannot encode {type(message).__name__}: not a message type"
        )
    buffer = io.BytesIO()
    buffer.write(message_type.header)
    try:
        fastavro.schemaless_writer(
            buffer, message_type.physical_schema, message_type.to_avro(message)
        )
    except Exception as exc:
        raise MessageEncodeError(
            "invalid-value", f"cannot encode {type(message).__name__}: {exc}"
        ) from exc
    return buffer.getvalue()


def header_problem(data: bytes) -> MessageDecodeError | None:
    """Why `data` cannot be decoded, judged from its header alone (marker, length, a
    fingerprint of a known schema), or None. Cheap: the body is not read."""
    try:
        _writer_of(data)
    except MessageDecodeError as exc:
        return exc
    return None


def _writer_of(data: Any) -> tuple[bytes, _WriterSchema]:
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise MessageDecodeError("not-avro", f"expected bytes, got {_kind(data)}")
    if data[:2] != MAGIC:
        raise MessageDecodeError(
            "not-avro", f"no Avro single-object marker C3 01 (starts with {data[:2].hex()!r})"
        )
    if len(data) < HEADER_SIZE:
        raise MessageDecodeError(
            "truncated", f"{len(data)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    fp = data[2:HEADER_SIZE]
    writer = _BY_FINGERPRINT.get(fp)
    if writer is None:
        raise MessageDecodeError(
            "unknown-fingerprint", f"no schema in schemas/ has fingerprint {fp.hex()}"
        )
    return data, writer


def _truncated(exc: Exception) -> bool:
    # fastavro raises EOFError when a read comes short; its compiled varint reader raises
    # IndexError("string index out of range") when the data ends inside a number.
    return isinstance(exc, EOFError) or (
        isinstance(exc, IndexError) and str(exc).startswith("string index")
    )


def _decode_body(data: bytes, writer: _WriterSchema) -> object:
    name = writer.message_type.cls.__name__
    buffer = io.BytesIO(data)
    buffer.seek(HEADER_SIZE)
    try:
        if writer.reader_schema is None:
            record = fastavro.schemaless_reader(buffer, writer.schema)
        else:  # written with a released schema: resolved to the current one
            record = fastavro.schemaless_reader(buffer, writer.schema, writer.reader_schema)
    except Exception as exc:
        if _truncated(exc):
            raise MessageDecodeError("truncated", f"{name} body ends too early") from exc
        raise MessageDecodeError(
            "invalid-body", f"{name} body does not match its schema: {_kind(exc)}: {exc}"
        ) from exc
    if buffer.tell() != len(data):
        raise MessageDecodeError(
            "trailing-bytes", f"{len(data) - buffer.tell()} bytes after the end of the {name}"
        )
    try:
        return writer.message_type.from_avro(record)
    except Exception as exc:
        raise MessageDecodeError("invalid-body", f"invalid {name}: {exc}") from exc


def decode(data: bytes | bytearray | memoryview) -> object:
    """The message encoded in ``data``; raises only MessageDecodeError."""
    data, writer = _writer_of(data)
    return _decode_body(data, writer)


def decode_as(data: bytes | bytearray | memoryview, *expected_types: type[T]) -> T:
    """Like decode, but the message must be one of ``expected_types`` (checked first)."""
    if not expected_types:
        raise TypeError("decode_as needs at least one expected type")
    data, writer = _writer_of(data)
    cls = writer.message_type.cls
    if cls not in expected_types:
        expected = ", ".join(t.__name__ for t in expected_types)
        raise MessageDecodeError("unexpected-type", f"got a {cls.__name__}, expected {expected}")
    return cast(T, _decode_body(data, writer))


# ------------------------------------------------------------------------------ Faust


class AvroMessageCodec(faust_codecs.Codec):
    """Faust codec: a message dataclass <-> single-object Avro bytes.

    Use with ``value_serializer="saga-avro"`` and no ``value_type`` (Faust would call
    ``.from_data`` on a value_type that is not a faust.Record). ``None`` (a table
    deletion) passes through as a Kafka tombstone.
    """

    def _dumps(self, obj: Any) -> bytes:
        if obj is None:
            return cast(bytes, None)
        return encode(obj)

    def _loads(self, s: bytes) -> Any:
        return decode(s)


def register_faust_codec() -> None:
    """Register AvroMessageCodec as Faust codec "saga-avro" (safe to call repeatedly)."""
    if not isinstance(faust_codecs.codecs.get(FAUST_CODEC_NAME), AvroMessageCodec):
        faust_codecs.register(FAUST_CODEC_NAME, AvroMessageCodec())
