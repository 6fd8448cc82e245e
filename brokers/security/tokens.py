"""Deployment secrets and the signed-claims tokens made with them.

Why it exists: citizen tokens (connectors.citizens) and dashboard sessions
(tracing.access) are the same thing — claims anyone may read and only the key's
holder can have written — so they share one format, ``kind.<payload>.<mac>``
(base64url JSON and HMAC-SHA256), and one way to keep the key on disk.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from brokers.runtime.private import create_private, private_dir


@functools.lru_cache(maxsize=4096)  # the same few signers sign every message
def secret_key_file(path: Path, size: int = 32) -> bytes:
    """A deployment's secret kept in ``path``: made once (random bytes, mode 0600 in a
    folder made 0700, whatever the umask), then read.

    Two processes starting together both end up with the one that was written first.
    """
    if not path.exists():
        private_dir(path.parent)
        try:
            fd = create_private(path)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(os.urandom(size))
    return path.read_bytes()


def sign_claims(key: bytes, kind: str, claims: dict[str, Any]) -> str:
    """``kind.<base64url JSON>.<base64url HMAC-SHA256>``: claims anyone may read and only
    the key's holder can have written (citizen tokens, dashboard sessions)."""
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    return f"{kind}.{payload}.{_b64url(_claims_mac(key, kind, payload))}"


def read_claims(key: bytes, kind: str, token: str) -> dict[str, Any] | None:
    """The claims of a token `sign_claims` made with ``key`` and ``kind``; None if it
    is of another kind, damaged or forged."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != kind:
        return None
    try:
        given = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSON errors are ValueErrors
        return None
    if not hmac.compare_digest(given, _claims_mac(key, kind, parts[1])):
        return None
    return claims if isinstance(claims, dict) else None


def _claims_mac(key: bytes, kind: str, payload: str) -> bytes:
    return hmac.new(key, f"{kind}.{payload}".encode(), hashlib.sha256).digest()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
