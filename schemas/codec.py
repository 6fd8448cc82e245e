"""Avro single-object encoding of the DP2 records, and the registry of their schemas.

Wire format (Avro spec, "Single-object encoding"): 0xC3 0x01, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema's Parsing Canonical Form, then the
schemaless Avro body. Every record therefore names its schema, and a reader resolves
it against the CURRENT version of the same family, so writers on any recorded version
(schemas/history/<family>/vN.avsc) stay readable while services upgrade one by one.

`decode` never returns garbage: the header must be whole, the fingerprint known, the
body must parse and consume the buffer exactly; otherwise it raises a typed
`SchemaError` (see schemas.errors). Schemas are parsed once at import.
"""

import copy
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, overload

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from schemas.errors import (
    InvalidRecordError,
    MalformedRecordError,
    SchemaError,
    UnexpectedSchemaError,
    UnknownSchemaError,
)
from schemas.models import RECORD_TYPES, Record, from_avro, to_avro

MAGIC: Final = b"\xc3\x01"
HEADER_SIZE: Final = len(MAGIC) + 8
SCHEMA_DIR: Final = Path(__file__).parent

R = TypeVar("R", bound=Record)


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    """One recorded version of a schema family, parsed once."""

    family: str
    version: str  # "v1", "v2", ... from history/, or "current"
    raw: dict[str, Any]  # the JSON as written in the .avsc file; never mutate
    parsed: dict[str, Any]  # fastavro's parsed form, what its reader and writer take
    fingerprint: bytes  # CRC-64-AVRO of the Parsing Canonical Form, as on the wire


class SchemaRegistry:
    """Every schema family in a directory: `<family>.avsc` plus `history/<family>/vN.avsc`.

    Immutable after construction, so one module-level instance is shared safely.
    """

    def __init__(self, directory: Path) -> None:
        self._versions: dict[str, tuple[SchemaVersion, ...]] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for current in sorted(directory.glob("*.avsc")):
            family = current.stem
            history = sorted(
                (directory / "history" / family).glob("v*.avsc"), key=lambda p: int(p.stem[1:])
            )
            versions = (
                *(_load(family, p.stem, p) for p in history),
                _load(family, "current", current),
            )
            self._versions[family] = versions
            for version in versions:  # current comes last and wins an identical fingerprint
                known = self._by_fingerprint.get(version.fingerprint)
                if known is not None and known.family != family:
                    raise SchemaError(
                        f"schemas {known.family} and {family} have the same fingerprint",
                        hint="Give every schema family its own record name.",
                    )
                self._by_fingerprint[version.fingerprint] = version

    @property
    def families(self) -> tuple[str, ...]:
        """Names of the schema families, sorted."""
        return tuple(self._versions)

    def versions(self, family: str) -> tuple[SchemaVersion, ...]:
        """Every recorded version of `family`, oldest first, the current one last."""
        return self._versions[family]

    def current(self, family: str) -> SchemaVersion:
        """The version of `family` that this code writes and reads with."""
        return self._versions[family][-1]

    def by_fingerprint(self, fp: bytes) -> SchemaVersion | None:
        """The version whose fingerprint is `fp`, or None when this reader never saw it."""
        return self._by_fingerprint.get(fp)

    def load_schema(self, family: str, version: str | None = None) -> dict[str, Any]:
        """A private copy of the JSON schema of `family` (current, or e.g. version="v1")."""
        wanted = version or "current"
        for v in self._versions[family]:
            if v.version == wanted:
                return copy.deepcopy(v.raw)
        raise KeyError(f"{family} has no version {wanted}")


def _load(family: str, version: str, path: Path) -> SchemaVersion:
    raw = json.loads(path.read_text(encoding="utf-8"))
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
    parsed = parse_schema(raw)  # also checks every default against its type
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise SchemaError(f"{path.name} must hold one record schema", hint="Fix the .avsc file.")
    return SchemaVersion(family, version, raw, parsed, fp)


REGISTRY: Final = SchemaRegistry(SCHEMA_DIR)


def load_schema(name: str, version: str | None = None) -> dict[str, Any]:
    """A private copy of the JSON schema `name` (a family) at `version` (None = current)."""
    return REGISTRY.load_schema(name, version)


@dataclass(frozen=True, slots=True)
class _Reader:
    model: type[Record]
    writer: dict[str, Any]
    reader: dict[str, Any] | None  # None when the writer is the current version


class Codec:
    """Encodes and decodes the top-level records with the schemas of one registry.

    The module-level `encode`/`decode` use the package's own schemas; build a Codec
    over another registry only to test schema evolution.
    """

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry
        self._writers: dict[type, tuple[bytes, dict[str, Any]]] = {}
        self._readers: dict[bytes, _Reader] = {}
        self._enum_layouts: dict[tuple[int, str], tuple[Any, ...]] = {}
        for model in RECORD_TYPES:
            current = registry.current(model.SCHEMA_NAME)
            self._writers[model] = (MAGIC + current.fingerprint, current.parsed)
            for v in registry.versions(model.SCHEMA_NAME):
                same = v.fingerprint == current.fingerprint
                self._readers[v.fingerprint] = _Reader(
                    model, v.parsed, None if same else current.parsed
                )

    def peek_enum(self, data: bytes, expected: type[Record], field: str) -> str | None:
        """The symbol of enum ``field`` of an encoded ``expected`` record, read without
        decoding the rest: for a reader that skips the records it does not act on.

        None when that is not possible — not such a record, a writer whose fields before
        ``field`` are not all strings, enums or numbers, or bytes that end too soon — and
        the caller then decodes as usual (which says what is wrong). The symbol is the
        writer's: ``decode`` gives the reader's symbol of that name (or, for one the
        reader does not know, the enum's default)."""
        if len(data) < HEADER_SIZE or data[:2] != MAGIC:
            return None
        reader = self._readers.get(bytes(data[2:HEADER_SIZE]))
        if reader is None or reader.model is not expected:
            return None
        # Keyed by the known writers only (a record cannot grow it), with the field.
        layout = self._enum_layouts.get((id(reader), field))
        if layout is None:
            layout = self._enum_layouts[(id(reader), field)] = _enum_layout(reader, field)
        if not layout:
            return None
        *skips, symbols = layout
        pos = HEADER_SIZE
        try:
            for kind in skips:
                value, pos = _zigzag(data, pos)
                if kind == "sized":
                    if value < 0:
                        return None
                    pos += value
            index, _ = _zigzag(data, pos)
        except IndexError:
            return None
        return symbols[index] if 0 <= index < len(symbols) else None

    def fingerprint_of(self, model: type[Record]) -> bytes:
        """The 8-byte fingerprint that `encode` writes for records of `model`."""
        return self.registry.current(model.SCHEMA_NAME).fingerprint

    def encode(self, record: Record) -> bytes:
        """The single-object encoding of `record` with its family's current schema."""
        return self._encode(record, to_avro(record))

    def encode_with(self, record: Record, **fields: Any) -> bytes:
        """``encode(dataclasses.replace(record, **fields))``, byte for byte, without building
        (and re-validating) the new record: for an encoding that is never decoded back,
        such as the signing input of a lifecycle event (brokers.security.signing). The
        fields must be plain Avro values (strings, numbers, maps of strings)."""
        return self._encode(record, {**to_avro(record), **fields})

    def _encode(self, record: Record, value: dict[str, Any]) -> bytes:
        try:
            header, schema = self._writers[type(record)]
        except KeyError:
            raise InvalidRecordError(
                f"{type(record).__name__} is not a top-level DP2 record",
                hint="Encode one of schemas.models.RECORD_TYPES.",
            ) from None
        out = io.BytesIO()
        out.write(header)
        try:
            fastavro.schemaless_writer(out, schema, value)
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
            raise InvalidRecordError(
                f"{type(record).__name__} does not fit schema {record.SCHEMA_NAME}: {exc}"
            ) from exc
        return out.getvalue()

    @overload
    def decode(self, data: bytes, expected: None = None) -> Record: ...
    @overload
    def decode(self, data: bytes, expected: type[R]) -> R: ...
    def decode(self, data: bytes, expected: type[Any] | None = None) -> Record:
        """The record in `data`, read with its family's current schema.

        Raises MalformedRecordError, UnknownSchemaError, or UnexpectedSchemaError when
        `expected` is given and the record is of another type.
        """
        if len(data) < HEADER_SIZE:
            raise MalformedRecordError(
                f"{len(data)} bytes is shorter than the {HEADER_SIZE}-byte single-object header"
            )
        if data[:2] != MAGIC:
            raise MalformedRecordError(
                f"starts with {bytes(data[:2]).hex()} instead of the single-object marker c301"
            )
        fp = bytes(data[2:HEADER_SIZE])
        reader = self._readers.get(fp)
        if reader is None:
            raise UnknownSchemaError(f"schema fingerprint {fp.hex()} is not known to this reader")
        if expected is not None and reader.model is not expected:
            raise UnexpectedSchemaError(
                f"expected a {expected.__name__} record but got a {reader.model.__name__}"
            )
        buf = io.BytesIO(data)
        buf.seek(HEADER_SIZE)
        try:
            value = fastavro.schemaless_reader(
                buf,
                reader.writer,
                reader.reader,
                return_record_name=True,  # a union of records reads as (name, dict) ...
                return_record_name_override=True,  # ... but X | None as a plain dict
            )
        except Exception as exc:  # fastavro raises many kinds on bad input; all mean malformed
            raise MalformedRecordError(
                f"{reader.model.__name__} body does not parse: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(value, dict):  # cannot happen for a record schema; keeps types honest
            raise MalformedRecordError(f"{reader.model.__name__} body is not a record")
        if buf.tell() != len(data):
            raise MalformedRecordError(
                f"{len(data) - buf.tell()} trailing bytes after the {reader.model.__name__} record"
            )
        return from_avro(reader.model, value)


def _enum_layout(reader: _Reader, field: str) -> tuple[Any, ...]:
    """("sized" | "number", ..., enum symbols) of the writer's fields up to ``field``;
    () if ``field`` is not an enum or a field before it cannot be skipped unread."""
    skips: list[str] = []
    for f in reader.writer["fields"]:
        kind = f["type"]["type"] if isinstance(f["type"], dict) else f["type"]
        if f["name"] == field:
            symbols = f["type"].get("symbols") if isinstance(f["type"], dict) else None
            return (*skips, tuple(symbols)) if kind == "enum" and symbols else ()
        if kind in ("string", "bytes"):
            skips.append("sized")
        elif kind in ("int", "long", "enum"):
            skips.append("number")
        else:
            return ()
    return ()


def _zigzag(data: bytes, pos: int) -> tuple[int, int]:
    """An Avro int or long (zig-zag varint) at ``pos``; the position after it."""
    shift = result = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:  # a long has at most ten varint bytes: not an Avro long
            raise IndexError("an Avro long of more than ten bytes")


CODEC: Final = Codec(REGISTRY)
"""The codec over this package's schemas; immutable, so sharing it is safe."""

encode: Final = CODEC.encode
encode_with: Final = CODEC.encode_with
decode: Final = CODEC.decode
peek_enum: Final = CODEC.peek_enum
fingerprint_of: Final = CODEC.fingerprint_of
