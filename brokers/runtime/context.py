"""W3C trace context (``traceparent``) carried in Kafka headers across every hop.

Why headers: the signature covers the canonical envelope only, so tracing can add
and change context on the way without breaking authenticity (DESIGN.md). Each
hop keeps the trace id and makes a new span id, so a tracing backend can draw the
message's path through validator, router and mailbox as one trace.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

from schemas.vocabulary import TRACEPARENT_HEADER

HEADER = TRACEPARENT_HEADER
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

KafkaHeaders = Sequence[tuple[str, bytes]]


def new_traceparent() -> str:
    """A fresh sampled trace: version 00, random trace id and span id."""
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def child_of(traceparent: str | None) -> str:
    """The traceparent for the next hop: same trace, new span; a new trace if invalid."""
    if traceparent:
        match = _TRACEPARENT.match(traceparent)
        if match and match.group(1) != "0" * 32:
            return f"00-{match.group(1)}-{os.urandom(8).hex()}-{match.group(3)}"
    return new_traceparent()


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


def from_headers(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    for key, value in headers or ():
        if key == HEADER:
            try:
                return value.decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


def header_value(headers: Iterable[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None
