"""schemas/codec.py: Avro single-object encoding of every message, and its failure modes."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import typing
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest
from faust.serializers import codecs as faust_codecs
from faust.serializers.registry import Registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec, messages
from schemas.codec import (
    MessageDecodeError,
    MessageEncodeError,
    decode,
    decode_as,
    encode,
    fingerprint_of,
    message_types,
    schema_of,
    type_name,
)
from schemas.messages import (
    Account,
    CommandApplied,
    CreateOrder,
    ItemResult,
    MissingItem,
    Money,
    OrderCreated,
    OrderItem,
    Outcome,
    Payment,
    PaymentFailed,
    ProductsUnavailable,
    ReserveProducts,
    SagaEvent,
    SagaState,
    StockHold,
    StockRow,
)
from tests.strategies import EXAMPLE_TIME, example_message, st_message

SCHEMA_DIR = Path(codec.__file__).parent
MESSAGE_TYPES = message_types()
# Dataclasses that only appear inside other messages (inlined as named records).
NESTED_ONLY = {"Money", "OrderItem", "MissingItem"}
NAMESPACES = {
    "saga.request": {"OrderRequested", "CancelOrderRequested"},
    "saga.commands": {
        "BeginCancelOrder",
        "UndoBeginCancelOrder",
        "ConfirmCancelOrder",
        "RefundPayment",
        "ReturnProducts",
        "CreateOrder",
        "ApproveOrder",
        "RejectOrder",
        "ReserveProducts",
        "ReleaseProducts",
        "AuthorizePayment",
        "CancelPayment",
        "SellProducts",
        "ForgetOrder",
        "ForgetProducts",
        "ForgetPayment",
        "ForgetCancel",
    },
    "saga.replies": {
        "OrderCancelBegun",
        "OrderCancelRefused",
        "OrderCancelUndone",
        "OrderCancelled",
        "PaymentRefunded",
        "ProductsReturned",
        "OrderCreated",
        "OrderApproved",
        "OrderRejected",
        "ProductsReserved",
        "ProductsUnavailable",
        "ProductsReleased",
        "PaymentAuthorized",
        "PaymentFailed",
        "PaymentCancelled",
        "OrderForgotten",
    },
    "saga.internal": {
        "StepTimedOut",
        "SagaEvent",
        "ReserveItem",
        "ReleaseItem",
        "SellItem",
        "ItemResult",
    },
    "saga.admin": {"Restock", "TopUp"},
    "saga.operations": {
        "AbortSaga",
        "RetrySaga",
        "SagaActionAnswered",
        "ExpireSaga",
        "DeadLetterReplayed",
    },
    "saga.state": {
        "SagaState",
        "CancelSagaState",
        "OrderRow",
        "OrderCancel",
        "StockRow",
        "StockHold",
        "CommandApplied",
        "Reservation",
        "Account",
        "Payment",
    },
}

by_name = pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=type_name)


def eur(amount: str) -> Money:
    return Money(Decimal(amount), "EUR")


# ------------------------------------------------------------------ schemas <-> classes


def test_every_message_class_has_a_schema_and_vice_versa() -> None:
    dataclass_names = {
        name
        for name, value in vars(messages).items()
        if isinstance(value, type) and dataclasses.is_dataclass(value)
    }
    schema_names = {path.stem for path in SCHEMA_DIR.glob("*.avsc")}
    assert schema_names == dataclass_names - NESTED_ONLY
    assert {type_name(cls) for cls in MESSAGE_TYPES} == schema_names
    assert set().union(*NAMESPACES.values()) == schema_names


def _records(schema: Any) -> typing.Iterator[dict[str, Any]]:
    """Every record defined in a raw (unparsed) schema, outermost first."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _records(branch)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            yield schema
            for field in schema["fields"]:
                yield from _records(field["type"])
        elif schema.get("type") == "array":
            yield from _records(schema["items"])
        elif schema.get("type") == "map":
            yield from _records(schema["values"])


@by_name
def test_avsc_matches_its_dataclass(cls: type) -> None:
    raw = json.loads((SCHEMA_DIR / f"{cls.__name__}.avsc").read_text(encoding="utf-8"))
    assert raw["name"] == cls.__name__
    assert cls.__name__ in NAMESPACES[raw["namespace"]]
    for record in _records(raw):
        record_cls = getattr(messages, record["name"])
        fields = dataclasses.fields(record_cls)
        # same names in the same order (the codec also checks this when imported)
        assert [f["name"] for f in record["fields"]] == [f.name for f in fields]
        assert record.get("doc"), f"{record['name']} has no doc"
        hints = typing.get_type_hints(record_cls)
        for avro_field, field in zip(record["fields"], fields, strict=True):
            is_optional = type(None) in typing.get_args(hints[field.name])
            if is_optional:
                assert avro_field["type"][0] == "null"
                assert avro_field["default"] is None, f"{field.name}: optional needs default"
            elif field.default_factory is list:
                assert avro_field["default"] == []
            elif field.default_factory is dict:
                assert avro_field["default"] == {}
            elif field.default is not dataclasses.MISSING:  # a field added later
                assert avro_field["default"] == field.default
            else:
                assert "default" not in avro_field


@by_name
def test_schema_types(cls: type) -> None:
    """Money, times and outcomes are typed as DESIGN.md §4 says."""
    text = (SCHEMA_DIR / f"{cls.__name__}.avsc").read_text(encoding="utf-8")
    raw = json.loads(text)
    for record in _records(raw):
        if record["name"] == "Money":
            assert record["fields"] == [
                {
                    "name": "amount",
                    "type": {
                        "type": "bytes",
                        "logicalType": "decimal",
                        "precision": 18,
                        "scale": 2,
                    },
                },
                {"name": "currency", "type": "string"},
            ]
        hints = typing.get_type_hints(getattr(messages, record["name"]))
        for field in record["fields"]:
            hint = hints[field["name"]]
            if hint in (datetime, datetime | None):
                time_type = field["type"][1] if hint != datetime else field["type"]
                assert time_type == {"type": "long", "logicalType": "timestamp-millis"}
            if hint is Outcome:
                assert field["type"]["type"] == "enum"
                assert field["type"]["symbols"] == ["SUCCESS", "FAILURE"]
    assert schema_of(cls)["name"].endswith("." + cls.__name__)


# ---------------------------------------------------------------------------- round trip


@by_name
@pytest.mark.parametrize("optional", [True, False], ids=["set", "none"])
def test_round_trip_example(cls: type, optional: bool) -> None:
    message: object = example_message(cls, optional=optional)
    data = encode(message)
    decoded = decode(data)
    assert type(decoded) is cls
    assert decoded == message
    assert encode(decoded) == data


def test_round_trip_keeps_python_types() -> None:
    state = SagaState(
        saga_id="3f2a",
        order_id="3f2a",
        customer_id="alice",
        items=[OrderItem("apple", 2), OrderItem("pear", 1)],
        state="AUTHORIZING_PAYMENT",
        step="payment",
        attempt=2,
        deadline=datetime(2024, 5, 17, 12, 0, 1, 999000, tzinfo=UTC),
        total=eur("12.5"),
        reason=None,
        sequence=4,
        created_at=datetime(2024, 5, 17, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        updated_at=EXAMPLE_TIME,
    )
    decoded = decode(encode(state))
    assert isinstance(decoded, SagaState)
    assert decoded == state
    assert decoded.items[1] == OrderItem("pear", 1)
    assert decoded.total is not None
    assert decoded.total.amount.as_tuple().exponent == -2  # Decimal("12.50")
    assert str(decoded.total.amount) == "12.50"
    assert decoded.created_at.tzinfo is UTC
    assert decoded.created_at == datetime(2024, 5, 17, 12, 0, tzinfo=UTC)

    reply = OrderCreated("s", "s:create", 1, Outcome.SUCCESS, EXAMPLE_TIME, "o")
    decoded_reply = decode(encode(reply))
    assert isinstance(decoded_reply, OrderCreated)
    assert decoded_reply.outcome is Outcome.SUCCESS

    unavailable = ProductsUnavailable(
        "s", "s:verify", 1, Outcome.FAILURE, EXAMPLE_TIME, [MissingItem("apple", 5, 2)]
    )
    assert decode(encode(unavailable)) == unavailable


def test_round_trip_table_rows() -> None:
    account = Account(
        customer_id="alice",
        balance=eur("-0.01"),
        topped_up=eur("100"),
        captured_archived=eur("9999999999999999.99"),
        applied_offset=7,
    )
    assert decode(encode(account)) == account
    payments = [
        Payment("s1", eur("1.00"), "REFUNDED", decided_offset=3, refunded_offset=9),
        Payment("s2", eur("0"), "FAILED", reason="insufficient funds"),
    ]
    assert [decode(encode(p)) for p in payments] == payments
    stock = StockRow("apple", 5, 2, 1, 8, eur("0.99"), applied_offset=12)
    assert decode(encode(stock)) == stock
    assert decode(encode(StockRow("pear", 0, 0, 0, 0, eur("1")))) == StockRow(
        "pear", 0, 0, 0, 0, eur("1.00")
    )
    hold = StockHold("s1", "apple", 2, "SOLD", 11, 14)
    assert decode(encode(hold)) == hold
    assert decode(encode(CommandApplied("r1", 4))) == CommandApplied("r1", 4)
    travelling = ReserveProducts(
        "s1", "s1:verify", 1, EXAMPLE_TIME, "s1", [OrderItem("apple", 3), OrderItem("pear", 1)],
        hop=1, results=[ItemResult("s1", "apple", 3, True, 7, eur("0.99"))],
    )  # fmt: skip
    assert decode(encode(travelling)) == travelling


@by_name
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_generated(cls: type, data: st.DataObject) -> None:
    message = data.draw(st_message(cls))
    assert decode(encode(message)) == message


def test_decimal_and_time_limits() -> None:
    for amount in ["9999999999999999.99", "-9999999999999999.99", "0", "-0.00", "1E+3"]:
        message = example_message(PaymentFailed)
        row = StockRow("p", 0, 0, 0, 0, eur(amount))
        assert decode(encode(row)) == row
        assert decode(encode(message)) == message
    for when in [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
    ]:
        event = dataclasses.replace(example_message(SagaEvent), at=when)
        assert decode(encode(event)) == event


def test_timestamp_millis_drops_microseconds() -> None:
    message = dataclasses.replace(
        example_message(CreateOrder), sent_at=datetime(2024, 1, 1, 0, 0, 0, 123999, tzinfo=UTC)
    )
    decoded = decode(encode(message))
    assert isinstance(decoded, CreateOrder)
    assert decoded.sent_at == datetime(2024, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)


# --------------------------------------------------------------------------- wire format


@by_name
def test_single_object_header(cls: type) -> None:
    data = encode(example_message(cls))
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fingerprint_of(cls)
    # the body is plain Avro binary of the schema
    body = fastavro.schemaless_reader(io.BytesIO(data[10:]), schema_of(cls))
    assert isinstance(body, dict)
    assert list(body) == [field.name for field in dataclasses.fields(cls)]


def _without_logical_types(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    if isinstance(schema, dict):
        if "logicalType" in schema:
            return schema["type"]
        return {key: _without_logical_types(value) for key, value in schema.items()}
    return schema


@by_name
def test_fingerprint_agrees_with_the_apache_avro_library(cls: type) -> None:
    """An independent implementation of canonical form + CRC-64-AVRO, little-endian.

    The avro package (1.12) writes a logical type's underlying type as {"type": "long"}
    in the canonical form, where the spec ([PRIMITIVES]) and Java write "long", which
    fastavro does. So the comparison is on the schema without its logical types.
    """
    raw = json.loads((SCHEMA_DIR / f"{cls.__name__}.avsc").read_text(encoding="utf-8"))
    parsed = avro.schema.parse(json.dumps(_without_logical_types(raw)))
    assert fingerprint_of(cls) == parsed.fingerprint("CRC-64-AVRO")


def test_fingerprint_byte_order() -> None:
    # Avro spec test vector: CRC-64-AVRO of the canonical form "null" is
    # 0x63dd24e7cc258f8a, written little-endian in single-object encoding.
    fp = bytes.fromhex(fastavro.schema.fingerprint('"null"', "CRC-64-AVRO"))
    assert int.from_bytes(fp, "little") == 0x63DD24E7CC258F8A


def test_helpers() -> None:
    message = example_message(CreateOrder)
    assert type_name(message) == type_name(CreateOrder) == "CreateOrder"
    assert len(set(map(fingerprint_of, MESSAGE_TYPES))) == len(MESSAGE_TYPES)
    assert schema_of(CreateOrder)["name"] == "saga.commands.CreateOrder"
    with pytest.raises(ValueError, match="not a message type"):
        fingerprint_of(Money)


# -------------------------------------------------------------------------------- decode_as


def test_decode_as() -> None:
    reply = example_message(OrderCreated)
    assert decode_as(encode(reply), OrderCreated) == reply
    assert decode_as(encode(reply), PaymentFailed, OrderCreated) == reply
    with pytest.raises(MessageDecodeError) as error:
        decode_as(encode(reply), CreateOrder, PaymentFailed)
    assert error.value.reason == "unexpected-type"
    assert "OrderCreated" in str(error.value) and "CreateOrder" in str(error.value)


# ------------------------------------------------------------------------------- errors


def _decode_error(data: Any) -> MessageDecodeError:
    with pytest.raises(MessageDecodeError) as error:
        decode(data)
    return error.value


def _body(cls: type, schema: Any, datum: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), datum)
    return b"\xc3\x01" + fingerprint_of(cls) + buffer.getvalue()


def test_decode_errors() -> None:
    data = encode(example_message(SagaEvent))
    assert _decode_error(b"").reason == "not-avro"
    assert _decode_error(b'{"saga_id": "x"}').reason == "not-avro"
    assert _decode_error("C3 01").reason == "not-avro"
    assert _decode_error(None).reason == "not-avro"
    assert _decode_error(data[:5]).reason == "truncated"
    assert _decode_error(b"\xc3\x01" + b"\x00" * 8 + data[10:]).reason == "unknown-fingerprint"
    assert _decode_error(data + b"\x00").reason == "trailing-bytes"
    assert _decode_error(data[:-1]).reason == "truncated"
    # the header of one message with the body of another
    wrong_body = data[:10] + encode(example_message(CreateOrder))[10:]
    assert _decode_error(wrong_body).reason in {"invalid-body", "truncated", "trailing-bytes"}
    assert decode(bytearray(data)) == decode(memoryview(data)) == decode(data)


def test_decode_errors_inside_the_body() -> None:
    """Bodies that fastavro reads but that do not fit the schema's constraints."""
    raw = json.loads((SCHEMA_DIR / "ReserveItem.avsc").read_text(encoding="utf-8"))
    bad_utf8 = _body(
        messages.ReserveItem,
        {**raw, "fields": [*raw["fields"][:2], {"name": "quantity", "type": "long"}]},
        {"saga_id": "s", "product_id": "p", "quantity": 1},
    )
    bad_utf8 = bad_utf8.replace(b"\x02p", b"\x02\xff")
    assert _decode_error(bad_utf8).reason == "invalid-body"

    # a decimal with more than 18 digits, written with a looser precision (the
    # fingerprint is the same: canonical forms do not carry logical types)
    loose = json.loads((SCHEMA_DIR / "TopUp.avsc").read_text(encoding="utf-8"))
    loose["fields"][2]["type"]["fields"][0]["type"]["precision"] = 30
    too_big = _body(
        messages.TopUp,
        loose,
        {
            "top_up_id": "t",
            "customer_id": "c",
            "amount": {"amount": Decimal(10**17), "currency": "EUR"},
        },
    )
    error = _decode_error(too_big)
    assert error.reason == "invalid-body" and "digits" in str(error)

    # a timestamp beyond year 9999
    far = _body(
        messages.StepTimedOut,
        {
            "type": "record",
            "name": "saga.internal.StepTimedOut",
            "fields": [
                {"name": "saga_id", "type": "string"},
                {"name": "step", "type": "string"},
                {"name": "attempt", "type": "long"},
                {"name": "deadline", "type": "long"},
                {"name": "fired_at", "type": "long"},
            ],
        },
        {"saga_id": "s", "step": "payment", "attempt": 1, "deadline": 2**62, "fired_at": 0},
    )
    assert _decode_error(far).reason == "invalid-body"

    # enum index out of range: OrderCreated.outcome is the 4th field
    reply = encode(OrderCreated("s", "c", 1, Outcome.FAILURE, EXAMPLE_TIME, "o"))
    assert reply[10:16] == b"\x02s\x02c\x02\x02"  # saga_id, command_id, attempt, outcome=1
    assert _decode_error(reply[:15] + b"\x08" + reply[16:]).reason == "invalid-body"


def test_decode_error_is_picklable_and_readable() -> None:
    error = _decode_error(b"\xc3\x01" + b"\x00" * 8)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, str(copy)) == (error.reason, str(error))
    assert "fingerprint" in str(error)


def changed(cls: type, **fields: Any) -> Any:
    """The example message of `cls` with some fields replaced (by ill-typed values)."""
    return dataclasses.replace(example_message(cls), **fields)


def price(amount: Any) -> Any:
    return changed(StockRow, unit_price=changed(Money, amount=amount))


@pytest.mark.parametrize(
    ("message", "complaint"),
    [
        (changed(CreateOrder, attempt="1"), "CreateOrder.attempt: expected int, got str"),
        (changed(CreateOrder, attempt=1.0), "expected int, got float"),
        (changed(CreateOrder, attempt=True), "expected int, got bool"),
        (changed(CreateOrder, attempt=2**63), "too large"),
        (changed(CreateOrder, saga_id=5), "string"),
        (changed(CreateOrder, saga_id=None), "string"),
        (changed(CreateOrder, items="ab"), "expected a list"),
        (
            changed(CreateOrder, items=[changed(OrderItem, quantity="2")]),
            "CreateOrder.items[].quantity: expected int",
        ),
        (changed(CreateOrder, items=[eur("1")]), "expected OrderItem, got Money"),
        (changed(CreateOrder, sent_at=datetime(2024, 1, 1)), "naive datetime"),
        (changed(CreateOrder, sent_at="2024-01-01"), "expected datetime"),
        (changed(SagaEvent, terminal=1), "expected bool"),
        (changed(SagaEvent, from_state=3), "do not match"),
        (changed(OrderCreated, outcome="MAYBE"), "expected one of"),
        (changed(StockHold, quantity=1.5), "StockHold.quantity: expected int"),
        (changed(CommandApplied, command_id=1), "must be str"),
        (price(Decimal("1.005")), "StockRow.unit_price.amount: 1.005 has more than 2 decimal"),
        (price(Decimal("1E-5")), "decimal places"),
        (price(Decimal("1.0000000000000000000000001")), "decimal places"),
        (price(Decimal("1E+16")), "more than 16 integer digits"),
        (price(Decimal("NaN")), "not a finite number"),
        (price(Decimal("-Infinity")), "not a finite number"),
        (price(1.5), "expected Decimal, got float"),
        (price(2), "expected Decimal, got int"),
        (price("2.00"), "expected Decimal, got str"),
    ],
)
def test_encode_rejects_invalid_values(message: object, complaint: str) -> None:
    with pytest.raises(MessageEncodeError) as error:
        encode(message)
    assert error.value.reason == "invalid-value"
    assert complaint in str(error.value)
    assert str(error.value).startswith(f"cannot encode {type_name(message)}: ")


@pytest.mark.parametrize("value", [None, object(), {"saga_id": "x"}, eur("1"), b"\xc3\x01"])
def test_encode_rejects_non_messages(value: object) -> None:
    with pytest.raises(MessageEncodeError) as error:
        encode(value)
    assert error.value.reason == "unknown-type"


# ----------------------------------------------------------------------------------- fuzz

ENCODED = [
    encode(example_message(cls, optional=optional))
    for cls in MESSAGE_TYPES
    for optional in (True, False)
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decodes_or_raises_decode_error(data: bytes) -> None:
    try:
        message = decode(data)
    except MessageDecodeError as error:
        assert error.reason in {
            "not-avro",
            "truncated",
            "unknown-fingerprint",
            "invalid-body",
            "trailing-bytes",
        }
    else:
        assert type(message) in MESSAGE_TYPES


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decodes_or_raises_decode_error(data)


@FUZZ
@given(header=st.sampled_from([data[:10] for data in ENCODED]), body=st.binary(max_size=300))
def test_fuzz_random_bodies(header: bytes, body: bytes) -> None:
    _decodes_or_raises_decode_error(header + body)


@FUZZ
@given(data=st.data())
def test_fuzz_mutations(data: st.DataObject) -> None:
    encoded = bytearray(data.draw(st.sampled_from(ENCODED)))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded)))
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if action == "insert" or position == len(encoded):
            encoded.insert(position, byte)
        elif action == "set":
            encoded[position] = byte
        else:
            del encoded[position]
    _decodes_or_raises_decode_error(bytes(encoded))


@pytest.mark.parametrize("data", ENCODED, ids=lambda data: data[2:10].hex())
def test_every_truncation_is_a_decode_error(data: bytes) -> None:
    for size in range(len(data)):
        error = _decode_error(data[:size])
        assert error.reason == ("not-avro" if size < 2 else "truncated"), size


# ------------------------------------------------------------------------------- Faust


def test_faust_codec_round_trip() -> None:
    codec.register_faust_codec()
    registered = faust_codecs.get_codec("saga-avro")
    codec.register_faust_codec()  # idempotent
    assert faust_codecs.get_codec("saga-avro") is registered
    assert isinstance(registered, codec.AvroMessageCodec)

    message = example_message(SagaState)
    data = faust_codecs.dumps("saga-avro", message)
    assert data == encode(message)
    assert faust_codecs.loads("saga-avro", data) == message
    with pytest.raises(MessageDecodeError):
        faust_codecs.loads("saga-avro", b"garbage")


def test_faust_serializer_registry_gives_typed_values() -> None:
    """What topics and tables do with value_serializer="saga-avro" and no value_type."""
    codec.register_faust_codec()
    registry = Registry(key_serializer="raw", value_serializer="saga-avro")
    message = example_message(Account)
    data = registry.dumps_value(None, message)
    assert data == encode(message)
    assert registry.loads_value(None, data) == message
    # a table deletion is a tombstone both ways
    assert registry.dumps_value(None, None) is None
    assert registry.loads_value(None, None) is None


# --------------------------------------------------------------------- converter paths


@dataclasses.dataclass(frozen=True)
class _Checked:
    """Not a message: a dataclass with __post_init__ takes the constructor path."""

    name: str
    count: int
    seen: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must not be negative")


def test_dataclass_with_post_init_goes_through_its_constructor() -> None:
    schema: dict[str, Any] = fastavro.parse_schema(  # type: ignore[assignment]
        {
            "type": "record",
            "name": "test.Checked",
            "fields": [
                {"name": "name", "type": "string"},
                {"name": "count", "type": "long"},
                {"name": "seen", "type": {"type": "array", "items": "string"}, "default": []},
            ],
        }
    )
    to_avro, from_avro = codec._Compiler(schema["__named_schemas"]).record(
        _Checked, schema, "Checked"
    )
    assert to_avro(_Checked("a", 2, ["x"])) == {"name": "a", "count": 2, "seen": ["x"]}
    assert from_avro({"name": "a", "count": 2, "seen": []}) == _Checked("a", 2)
    with pytest.raises(ValueError, match="negative"):
        from_avro({"name": "a", "count": -1, "seen": []})
