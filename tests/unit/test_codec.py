"""The codec: every model round-trips, and bad input fails with a typed, coded error."""

import dataclasses
import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import (
    HEADER_SIZE,
    MAGIC,
    REGISTRY,
    SCHEMA_DIR,
    Codec,
    SchemaRegistry,
    decode,
    encode,
    encode_with,
    fingerprint_of,
    peek_enum,
)
from schemas.errors import (
    Dp2Error,
    InvalidRecordError,
    MalformedRecordError,
    SchemaError,
    UnexpectedSchemaError,
    UnknownSchemaError,
)
from schemas.models import (
    RECORD_TYPES,
    BlobContent,
    Envelope,
    File,
    IdType,
    InlineContent,
    LifecycleEvent,
    LifecycleState,
    MainDocument,
    MessageBody,
    MessageHeader,
    MessageType,
    Recipient,
    Sender,
    to_avro,
)
from tests.strategies import lifecycle_events, records

NOW = datetime(2025, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)


def sample_envelope() -> Envelope:
    return Envelope(
        memoVersion="1.2",
        header=MessageHeader(
            messageType=MessageType.DIGITALPOST,
            messageUUID="5b1c4a0e-8f2d-4c1e-9a3b-2d7e6f8a9b0c",
            label="Afgørelse om boligstøtte",
            sender=Sender(senderID="29189846", idType=IdType.CVR, label="Aarhus Kommune"),
            recipient=Recipient(recipientID="0101011234", idType=IdType.CPR),
        ),
        body=MessageBody(
            createdDateTime=NOW,
            mainDocument=MainDocument(
                file=[
                    File(
                        encodingFormat="application/pdf",
                        filename="afgoerelse.pdf",
                        content=InlineContent(data=b"%PDF-1.7"),
                    ),
                    File(
                        encodingFormat="application/pdf",
                        filename="bilag.pdf",
                        content=BlobContent(ref="sha256/ab", sha256=b"\x01" * 32, size=7),
                    ),
                ]
            ),
        ),
    )


def sample_event() -> LifecycleEvent:
    return LifecycleEvent(
        eventId="e1",
        messageUUID="m1",
        state=LifecycleState.DELIVERED,
        actor="router",
        occurredAt=NOW,
        sequence=3,
    )


@settings(max_examples=100, deadline=None)
@given(records())
def test_every_record_round_trips(record: Any) -> None:
    """decode(encode(r)) equals r for every top-level model, also with expected= its type."""
    data = encode(record)
    assert data[:HEADER_SIZE] == MAGIC + fingerprint_of(type(record))
    assert decode(data) == record
    assert decode(data, type(record)) == record


def test_union_of_records_keeps_its_branch() -> None:
    """Inline and blob file content come back as the classes they were written as."""
    body = decode(encode(sample_envelope()), Envelope).body
    assert body is not None
    files = body.mainDocument.file
    assert [type(f.content) for f in files] == [InlineContent, BlobContent]


def test_fingerprint_is_crc64_avro_of_canonical_form() -> None:
    """The header fingerprint is CRC-64-AVRO of the Parsing Canonical Form, little-endian."""
    for model in RECORD_TYPES:
        raw = REGISTRY.load_schema(model.SCHEMA_NAME)
        expected = fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO")
        assert fingerprint_of(model).hex() == expected


def _reason(data: bytes, expected: type[Any] | None = None) -> SchemaError:
    with pytest.raises(SchemaError) as caught:
        decode(data, expected)
    return caught.value


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc3", b"\xc3\x01\x00\x00", b"\x00\x01" + b"\x00" * 20, b"{}" + b"\x00" * 20],
    ids=["empty", "one-byte", "short-header", "bad-magic", "json"],
)
def test_not_single_object_encoded_is_malformed(data: bytes) -> None:
    """Bytes without a whole single-object header raise MALFORMED_RECORD."""
    error = _reason(data)
    assert isinstance(error, MalformedRecordError)
    assert error.reason_code == "MALFORMED_RECORD"


def test_every_truncation_is_malformed() -> None:
    """An envelope cut at any length raises MALFORMED_RECORD, never a partial record."""
    data = encode(sample_envelope())
    for length in range(len(data)):
        assert _reason(data[:length]).reason_code == "MALFORMED_RECORD", length


def test_trailing_bytes_are_malformed() -> None:
    """Bytes after a complete record raise MALFORMED_RECORD."""
    error = _reason(encode(sample_event()) + b"\x00")
    assert error.reason_code == "MALFORMED_RECORD"
    assert "trailing" in error.message


def test_bad_utf8_is_malformed() -> None:
    """A string field holding invalid UTF-8 raises MALFORMED_RECORD."""
    data = encode(sample_event())
    good = b"\x04e1"  # eventId: length 2, "e1"
    assert data[HEADER_SIZE:].startswith(good)
    error = _reason(data.replace(good, b"\x04\xff\xfe", 1))
    assert error.reason_code == "MALFORMED_RECORD"
    assert isinstance(error.__cause__, UnicodeDecodeError)


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_random_bytes_raise_a_schema_error(data: bytes) -> None:
    """Random bytes raise a SchemaError (they lack a known single-object header)."""
    with pytest.raises(SchemaError):
        decode(data)


@settings(max_examples=200)
@given(st.sampled_from(RECORD_TYPES), st.binary(max_size=64))
def test_random_body_never_yields_garbage(model: type[Any], body: bytes) -> None:
    """A known header with a random body raises MALFORMED_RECORD or yields a valid record."""
    try:
        record = decode(MAGIC + fingerprint_of(model) + body, model)
    except MalformedRecordError:
        return
    assert isinstance(record, model)
    encode(record)


def test_unknown_fingerprint() -> None:
    """A fingerprint no version of any family has raises UNKNOWN_SCHEMA naming it in hex."""
    data = MAGIC + bytes.fromhex("0011223344556677") + b"\x00" * 8
    error = _reason(data)
    assert isinstance(error, UnknownSchemaError)
    assert error.reason_code == "UNKNOWN_SCHEMA"
    assert "0011223344556677" in str(error)


def test_record_of_another_schema_is_unexpected() -> None:
    """A LifecycleEvent decoded where an Envelope is expected raises UNEXPECTED_SCHEMA."""
    error = _reason(encode(sample_event()), Envelope)
    assert isinstance(error, UnexpectedSchemaError)
    assert error.reason_code == "UNEXPECTED_SCHEMA"
    assert "Envelope" in error.message
    assert "LifecycleEvent" in error.message


def test_error_text_has_code_message_and_hint() -> None:
    """str() of a Dp2Error reads 'CODE: message. hint', and schema errors are not retriable."""
    error = _reason(b"")
    assert isinstance(error, Dp2Error)
    assert str(error) == f"MALFORMED_RECORD: {error.message}. {error.hint}"
    assert not error.retriable


def test_encode_rejects_values_the_schema_cannot_hold() -> None:
    """A model holding a wrong-typed value raises INVALID_RECORD instead of writing bytes."""
    bad = LifecycleEvent(
        eventId="e",
        messageUUID="m",
        state=LifecycleState.READ,
        actor="a",
        occurredAt=NOW,
        sequence="three",  # type: ignore[arg-type]
    )
    with pytest.raises(InvalidRecordError) as caught:
        encode(bad)
    assert caught.value.reason_code == "INVALID_RECORD"


@settings(max_examples=50, deadline=None)
@given(records())
def test_history_versions_decode_with_current_reader(record: Any) -> None:
    """Data written with any recorded version of a family decodes with the current reader."""
    model = type(record)
    current = REGISTRY.current(model.SCHEMA_NAME)
    for version in REGISTRY.versions(model.SCHEMA_NAME):
        out = io.BytesIO()
        out.write(MAGIC + version.fingerprint)
        fastavro.schemaless_writer(out, version.parsed, to_avro(record))
        decoded = decode(out.getvalue(), model)
        if version.fingerprint == current.fingerprint:
            assert decoded == record


def _without_label_is_sensitive(schema: dict[str, Any]) -> dict[str, Any]:
    header = schema["fields"][2]["type"]
    assert header["name"] == "MessageHeader"
    header["fields"] = [f for f in header["fields"] if f["name"] != "labelIsSensitive"]
    return schema


def test_older_writer_is_resolved_to_current_reader(tmp_path: Path) -> None:
    """An envelope written by an older schema without labelIsSensitive reads with its default."""
    shutil.copytree(SCHEMA_DIR, tmp_path / "schemas", ignore=shutil.ignore_patterns("*.py*"))
    old = _without_label_is_sensitive(REGISTRY.load_schema("envelope"))
    (tmp_path / "schemas/history/envelope/v0.avsc").write_text(json.dumps(old))
    codec = Codec(SchemaRegistry(tmp_path / "schemas"))
    old_fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(old), "CRC-64-AVRO"))
    assert old_fp != codec.fingerprint_of(Envelope)

    envelope = sample_envelope()
    values = to_avro(envelope)
    del values["header"]["labelIsSensitive"]
    out = io.BytesIO()
    out.write(MAGIC + old_fp)
    fastavro.schemaless_writer(out, parse_schema(old), values)

    assert codec.decode(out.getvalue(), Envelope) == envelope  # labelIsSensitive defaults True


@settings(max_examples=300, deadline=None)
@given(lifecycle_events(), st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4))
def test_encode_with_is_the_encoding_of_the_replaced_record(
    event: LifecycleEvent, attributes: dict[str, str]
) -> None:
    """encode_with(record, field=x) is byte for byte encode(replace(record, field=x)):
    the signatures of lifecycle events are over those bytes."""
    replaced = dataclasses.replace(event, attributes=attributes)
    assert encode_with(event, attributes=attributes) == encode(replaced)


@settings(max_examples=300, deadline=None)
@given(lifecycle_events())
def test_peek_enum_reads_the_state_decode_reads(event: LifecycleEvent) -> None:
    """peek_enum (the notifier skips the events it does not act on with it) gives the
    state decode gives, for every recorded writer version of lifecycle_event."""
    for version in REGISTRY.versions("lifecycle_event"):
        out = io.BytesIO()
        out.write(MAGIC + version.fingerprint)
        fastavro.schemaless_writer(out, version.parsed, to_avro(event))
        raw = out.getvalue()
        assert peek_enum(raw, LifecycleEvent, "state") == decode(raw, LifecycleEvent).state.value


@given(lifecycle_events())
def test_peek_enum_says_none_where_it_cannot_know(event: LifecycleEvent) -> None:
    """None, never a guess, for bytes cut short before the state, for another record
    type or a field that is not an enum, an unknown fingerprint and garbage: the caller
    then decodes, and decode says what is wrong."""
    raw = encode(event)
    state_at = (
        HEADER_SIZE + len(encode_string(event.eventId)) + len(encode_string(event.messageUUID))
    )
    for cut in range(state_at + 1):
        assert peek_enum(raw[:cut], LifecycleEvent, "state") is None, cut
    assert peek_enum(encode(sample_envelope()), LifecycleEvent, "state") is None
    assert peek_enum(raw, Envelope, "state") is None
    assert peek_enum(raw, LifecycleEvent, "actor") is None  # a string, not an enum
    assert peek_enum(MAGIC + b"\x00" * 8 + raw[HEADER_SIZE:], LifecycleEvent, "state") is None
    assert peek_enum(b"\xff" * 40, LifecycleEvent, "state") is None


def encode_string(text: str) -> bytes:
    """An Avro string: its UTF-8 length as a zig-zag varint, then the bytes."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, {"type": "string"}, text)
    return out.getvalue()
