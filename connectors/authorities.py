"""Who may act for an authority over HTTP: access tokens bound to its CVR number.

Why it exists: the ESDH connector's API (and the SF1601 shape case systems already
call) sends letters signed with the authority's key; a local process reaching the
port must not be enough for that. A case system presents a token that names the
CVR it acts for, in ``Authorization: Bearer <token>`` or SF1601's
``Authorization: Holder-of-key <token>``; the connector serves only the CVR it is
configured for. Tokens are HMAC-signed claims (brokers.security.tokens) under
``$DP2_HOME/authority-tokens.key``, made with::

    dp2 tokens authority --cvr 29189846 [--days 90]

Errors (401/403, JSON with a reason code): AUTHORITY_TOKEN_MISSING,
AUTHORITY_TOKEN_INVALID, AUTHORITY_TOKEN_EXPIRED, AUTHORITY_TOKEN_WRONG_CVR.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from brokers.security.tokens import read_claims, secret_key_file, sign_claims
from schemas.errors import Dp2Error
from schemas.values import is_ascii_digits

KEY_FILE: Final = "authority-tokens.key"
TOKEN_PREFIX: Final = "dp2a"  # noqa: S105 - the token format's prefix, not a secret
_SCHEMES: Final = ("bearer", "holder-of-key")


class AuthorityAuthError(Dp2Error):
    """The caller is not (provably) the authority this connector serves."""

    reason_code = "AUTHORITY_TOKEN_INVALID"
    hint = (
        "Send Authorization: Bearer <token> (or Holder-of-key <token>) with a token "
        "made by: dp2 tokens authority --cvr YOUR_CVR."
    )
    status = 401


@dataclass(frozen=True, slots=True)
class Authority:
    cvr: str
    token_id: str


class AuthorityTokens:
    """Issue and check tokens bound to a CVR number."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_home(cls, home: Path) -> AuthorityTokens:
        return cls(secret_key_file(home / KEY_FILE))

    def issue(
        self, cvr: str, *, ttl: timedelta = timedelta(days=90), now: datetime | None = None
    ) -> str:
        if not is_ascii_digits(cvr, 8):
            raise Dp2Error(
                "an authority token is bound to a CVR number of 8 digits",
                reason_code="INVALID_CVR",
                hint="Give the CVR number as 8 digits, keeping leading zeros.",
            )
        expires = int(((now or datetime.now(UTC)) + ttl).timestamp())
        claims = {"cvr": cvr, "exp": expires, "jti": secrets.token_hex(8)}
        return sign_claims(self._key, TOKEN_PREFIX, claims)

    def authenticate(
        self, authorization: str | None, cvr: str, *, now: datetime | None = None
    ) -> Authority:
        """The authority of an Authorization header, which must be for ``cvr``."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() not in _SCHEMES or not token.strip():
            raise AuthorityAuthError(
                "this API needs the authority's access token",
                reason_code="AUTHORITY_TOKEN_MISSING",
            )
        claims = read_claims(self._key, TOKEN_PREFIX, token.strip())
        if claims is None or not isinstance(claims.get("exp"), int):
            raise AuthorityAuthError("the access token is damaged or not made by this DP2")
        if claims["exp"] <= (now or datetime.now(UTC)).timestamp():
            raise AuthorityAuthError(
                "the access token has expired", reason_code="AUTHORITY_TOKEN_EXPIRED"
            )
        if claims.get("cvr") != cvr:
            error = AuthorityAuthError(
                "the access token belongs to another authority than this connector serves",
                reason_code="AUTHORITY_TOKEN_WRONG_CVR",
                hint="Use the token issued for this connector's CVR.",
            )
            error.status = 403
            raise error
        return Authority(cvr=cvr, token_id=str(claims.get("jti", "")))
