"""Who the citizen is, for the connectors that act for citizens (forms, apps, mail).

Why it exists: a citizen-facing connector sends and reads post *as a person*, so
every request must be bound to one CPR number, and nothing else may decide which
person that is. In production that binding comes from the national login (MitID
via an OpenID Connect broker); DP2 keeps that seam small — an ``IdentityProvider``
turns a bearer token into a ``Citizen`` or refuses — and ships a development
provider so the stack runs on one machine:

    dp2 tokens issue --cpr 0101901234 [--hours 12]     # prints a bearer token

Development tokens are ``dp2c.<payload>.<mac>``: the payload (base64url JSON: the CPR
number, expiry and a token id) is MACed with HMAC-SHA256 under a key of the
deployment (``$DP2_HOME/citizen-tokens.key``, made on first use, mode 0600). They
are not encrypted — the holder is the citizen — and never logged: log ``token_id``.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from brokers.security.tokens import read_claims, secret_key_file, sign_claims
from connectors.sdk import Document, message_body
from schemas.errors import Dp2Error
from schemas.models import (
    ContentData,
    Envelope,
    IdType,
    MessageHeader,
    MessageType,
    Recipient,
    ReplyData,
    Sender,
)
from schemas.values import is_ascii_digits

TOKEN_PREFIX = "dp2c"  # noqa: S105 - a marker that tells token kinds apart, not a secret
KEY_FILE = "citizen-tokens.key"


class AuthError(Dp2Error):
    """The request does not prove who the citizen is."""

    reason_code = "INVALID_TOKEN"
    hint = "Log in again and send the token as 'Authorization: Bearer <token>'."


@dataclass(frozen=True, slots=True)
class Citizen:
    """An authenticated person: the CPR number and the id of the token that proved it."""

    cpr: str
    token_id: str


class IdentityProvider(Protocol):
    """Turns a bearer token into a Citizen, or raises AuthError."""

    def authenticate(self, token: str) -> Citizen: ...


class DevTokens:
    """The development identity provider: HMAC-signed tokens bound to a CPR number."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a citizen token key needs at least 32 bytes")
        self._key = key

    @classmethod
    def from_home(cls, home: Path) -> DevTokens:
        return cls(secret_key_file(home / KEY_FILE))

    def issue(
        self, cpr: str, *, ttl: timedelta = timedelta(hours=12), now: datetime | None = None
    ) -> str:
        if not is_ascii_digits(cpr, 10):
            raise AuthError(
                "a citizen token is bound to a CPR number of 10 digits",
                reason_code="INVALID_CPR",
                hint="Give the CPR number as 10 digits, keeping leading zeros.",
            )
        expires = int(((now or datetime.now(UTC)) + ttl).timestamp())
        claims = {"sub": cpr, "exp": expires, "jti": secrets.token_hex(8)}
        return sign_claims(self._key, TOKEN_PREFIX, claims)

    def authenticate(self, token: str, *, now: datetime | None = None) -> Citizen:
        if not token.startswith(f"{TOKEN_PREFIX}."):
            raise AuthError("the bearer token is not a DP2 citizen token")
        claims = read_claims(self._key, TOKEN_PREFIX, token)
        if claims is None:
            raise AuthError("the bearer token is damaged or its signature does not match")
        cpr, expires, token_id = claims.get("sub"), claims.get("exp"), claims.get("jti")
        if (
            not isinstance(cpr, str)
            or not isinstance(expires, int)
            or not isinstance(token_id, str)
        ):
            raise AuthError("the bearer token is damaged")
        if expires <= (now or datetime.now(UTC)).timestamp():
            raise AuthError("the bearer token has expired", reason_code="TOKEN_EXPIRED")
        return Citizen(cpr=cpr, token_id=token_id)


def bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (AuthError if none)."""
    if not authorization:
        raise AuthError("the request has no Authorization header", reason_code="AUTH_REQUIRED")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header is not 'Bearer <token>'")
    return token.strip()


def citizen_message(
    *,
    cpr: str,
    authority_cvr: str,
    label: str,
    main: Sequence[Document],
    attachments: Sequence[Document] = (),
    content_data: ContentData | None = None,
    reply_data: Sequence[ReplyData] = (),
    sender_label: str = "Borger",
    message_uuid: str | None = None,
    created: datetime | None = None,
) -> Envelope:
    """A plain MeMo 1.2 message from a citizen to an authority (forms, apps, mail)."""
    return Envelope(
        memoVersion="1.2",
        header=MessageHeader(
            messageType=MessageType.DIGITALPOST,
            messageUUID=message_uuid or str(uuid.uuid4()),
            label=label,
            sender=Sender(senderID=cpr, idType=IdType.CPR, label=sender_label),
            recipient=Recipient(recipientID=authority_cvr, idType=IdType.CVR),
            contentData=content_data,
            replyData=list(reply_data),
        ),
        body=message_body(label, main, attachments, created),
    )
