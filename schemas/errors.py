"""DP2's one exception root and its branches.

Every error DP2 raises or returns carries a stable UPPER_SNAKE `reason_code` (what
callers, receipts and dashboards match on), a message saying what was wrong, and a
`hint` sentence saying how to fix it. `retriable` tells a caller whether trying the
same thing again can succeed, so retry loops read a flag instead of matching classes.
Third-party errors are translated at the boundary with `raise ... from exc`.

    Dp2Error                       DP2_ERROR
    ├── SchemaError                SCHEMA_ERROR
    │   ├── MalformedRecordError   MALFORMED_RECORD   bytes are not a whole single-object record
    │   ├── UnknownSchemaError     UNKNOWN_SCHEMA     fingerprint not known to this reader
    │   ├── UnexpectedSchemaError  UNEXPECTED_SCHEMA  a valid record, of another schema
    │   └── InvalidRecordError     INVALID_RECORD     a model that its schema cannot encode
    └── ConfigError                BAD_CONFIG
"""

from typing import ClassVar


class Dp2Error(Exception):
    """Root of every DP2 error: a stable reason code, a message and a hint."""

    retriable: ClassVar[bool] = False
    reason_code: str = "DP2_ERROR"
    hint: str = "See the message above and the DP2 documentation."

    def __init__(
        self, message: str, *, reason_code: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason_code is not None:
            self.reason_code = reason_code
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return f"{self.reason_code}: {self.message.rstrip('.')}. {self.hint}"


class SchemaError(Dp2Error):
    """A record does not fit the shared Avro contracts."""

    reason_code = "SCHEMA_ERROR"
    hint = "Encode records with schemas.codec from a DP2 release that knows the schema."


class MalformedRecordError(SchemaError):
    """The bytes are not one complete Avro single-object encoded record."""

    reason_code = "MALFORMED_RECORD"
    hint = (
        "Send exactly the bytes schemas.codec.encode returned "
        "(0xC3 0x01, 8-byte fingerprint, Avro body) without truncating or appending."
    )


class UnknownSchemaError(SchemaError):
    """The record names a schema fingerprint this reader has never seen."""

    reason_code = "UNKNOWN_SCHEMA"
    hint = (
        "Upgrade the reader to a DP2 release that has this schema version, "
        "or have the writer use a released schema."
    )


class UnexpectedSchemaError(SchemaError):
    """The record decoded fine but belongs to another schema than the caller expected."""

    reason_code = "UNEXPECTED_SCHEMA"
    hint = "Publish each record type only to the topic that carries that type."


class InvalidRecordError(SchemaError):
    """A model instance holds values its schema cannot encode (wrong type, missing value)."""

    reason_code = "INVALID_RECORD"
    hint = "Build the record with the types its model declares (aware UTC datetimes, str ids)."


class ConfigError(Dp2Error):
    """Settings are missing or make no sense; the process should stop at start-up."""

    reason_code = "BAD_CONFIG"
    hint = "Fix the DP2_ environment variable or settings file named in the message."
