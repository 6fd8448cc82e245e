"""The header budget of a record: how much a record may carry beside its value.

Why it exists: Kafka headers are not signed and every hop copies them on (the
validator and the router forward a connector's headers, a dead letter keeps the
original's), so one record with a 1 MiB header would cost its size again on every
topic it reaches. DP2's own headers are small — a traceparent, a message UUID, the
signer's certificate (at most brokers.security.signing.MAX_CERTIFICATE_BYTES), the
dead-letter reasons — so the budget is generous for them and tight for anything else:

- at most :data:`MAX_HEADERS` (32) headers, and
- at most :data:`MAX_HEADER_BYTES` (64 KiB) of header names and values together.

Where records enter, the validator refuses a record over the budget on dp2.submitted
(``TOO_MANY_HEADERS``, ``HEADERS_TOO_LARGE``: the checks of :func:`check`). Every
worker then holds its own outputs to it (:func:`within_budget`): DP2's own headers
first, then the others in their order, each while it still fits; what does not fit
is dropped, never carried on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from schemas.errors import Dp2Error
from schemas.vocabulary import (
    DEADLETTER_HEADERS,
    MESSAGE_UUID_HEADER,
    SIGNER_CERT_HEADER,
    TRACEPARENT_HEADER,
)

MAX_HEADERS: Final = 32
MAX_HEADER_BYTES: Final = 64 * 1024
_OWN: Final = frozenset(
    {TRACEPARENT_HEADER, MESSAGE_UUID_HEADER, SIGNER_CERT_HEADER, *DEADLETTER_HEADERS}
)

Headers = Sequence[tuple[str, bytes]]


class HeaderBudgetError(Dp2Error):
    """A record carries more headers, or more header bytes, than DP2 carries on."""

    reason_code = "HEADERS_TOO_LARGE"
    hint = (
        "Send only DP2's own headers (the SDK does): traceparent, dp2-message-uuid and "
        "dp2-signer-cert; put everything else in the signed envelope."
    )


def size_of(headers: Iterable[tuple[str, bytes]]) -> int:
    """Header bytes as the budget counts them: each name (UTF-8) and value."""
    return sum(len(key.encode()) + len(value or b"") for key, value in headers)


def check(headers: Headers | None) -> None:
    """Raise HeaderBudgetError (TOO_MANY_HEADERS, HEADERS_TOO_LARGE) over the budget."""
    listed = list(headers or ())
    if len(listed) > MAX_HEADERS:
        raise HeaderBudgetError(
            f"the record has {len(listed)} headers; DP2 carries at most {MAX_HEADERS}",
            reason_code="TOO_MANY_HEADERS",
        )
    size = size_of(listed)
    if size > MAX_HEADER_BYTES:
        raise HeaderBudgetError(
            f"the record's headers hold {size:,} bytes; DP2 carries at most {MAX_HEADER_BYTES:,}",
            reason_code="HEADERS_TOO_LARGE",
        )


def within_budget(headers: Headers) -> list[tuple[str, bytes]]:
    """`headers` held to the budget: DP2's own first, each kept while it fits, in order."""
    if len(headers) <= MAX_HEADERS and size_of(headers) <= MAX_HEADER_BYTES:
        return list(headers)
    ranked = sorted(range(len(headers)), key=lambda i: (headers[i][0] not in _OWN, i))
    kept: set[int] = set()
    size = 0
    for i in ranked:
        cost = size_of([headers[i]])
        if len(kept) < MAX_HEADERS and size + cost <= MAX_HEADER_BYTES:
            kept.add(i)
            size += cost
    return [header for i, header in enumerate(headers) if i in kept]
