"""Who may look at the dashboard, and at what: users, hashed passwords, sessions.

Why it exists: the traceability dashboard shows who sent what to whom and when —
operators see everything (still only pseudonyms, never a CPR number), an
authority's own staff see only their CVR's messages and figures. Users live in
``$DP2_HOME/dashboard-users.json``, passwords hashed with scrypt (salted, n=2^14),
managed with::

    dp2 dashboard user add NAME --role operator|authority [--cvr CVR] [--password ...]

A login gets a session cookie: the user name and expiry, MACed with HMAC-SHA256
under ``$DP2_HOME/dashboard.key`` (HttpOnly, SameSite=Strict). Nothing about a
session is kept on the server; changing the key logs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers.security.tokens import read_claims, secret_key_file, sign_claims
from schemas.errors import Dp2Error

USERS_FILE = "dashboard-users.json"
KEY_FILE = "dashboard.key"
SESSION_COOKIE = "dp2_session"
SESSION_SECONDS = 8 * 3600
_SESSION_KIND = "dp2s"
ROLES = ("operator", "authority")


class AccessDenied(Dp2Error):
    reason_code = "ACCESS_DENIED"
    hint = "Log in with a user that may see this."


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    cvr: str | None = None

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"

    def may_see_sender(self, sender: str | None) -> bool:
        """Operators see every message; an authority's user only its own CVR's."""
        return self.is_operator or (sender is not None and sender == self.cvr)


def _hash(password: str, salt: bytes) -> str:
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${salt.hex()}${digest.hex()}"


class Users:
    """The users file: add, authenticate, and read a session cookie."""

    def __init__(self, home: Path) -> None:
        self._path = home / USERS_FILE
        self._key = secret_key_file(home / KEY_FILE)

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data: dict[str, dict[str, Any]] = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        return data

    def add(self, name: str, password: str, role: str, cvr: str | None = None) -> User:
        if role not in ROLES:
            raise Dp2Error(
                f"role {role!r} is not one of {ROLES}",
                reason_code="BAD_ROLE",
                hint="Use --role operator or --role authority.",
            )
        if role == "authority" and (cvr is None or len(cvr) != 8 or not cvr.isdigit()):
            raise Dp2Error(
                "an authority's user needs its CVR",
                reason_code="INVALID_CVR",
                hint="Pass --cvr with the authority's 8-digit CVR number.",
            )
        if len(password) < 8:
            raise Dp2Error(
                "the password is shorter than 8 characters",
                reason_code="WEAK_PASSWORD",
                hint="Choose a longer password.",
            )
        users = self._load()
        users[name] = {"role": role, "cvr": cvr, "password": _hash(password, os.urandom(16))}
        self._path.parent.mkdir(parents=True, exist_ok=True)
        partial = self._path.with_suffix(".tmp")
        partial.write_text(json.dumps(users, indent=2))
        partial.chmod(0o600)
        partial.replace(self._path)
        return User(name, role, cvr)

    def authenticate(self, name: str, password: str) -> User:
        entry = self._load().get(name)
        if entry is None:
            _hash(password, b"\0" * 16)  # same work either way: no user enumeration by timing
            raise AccessDenied("wrong user name or password")
        _, salt, _ = str(entry["password"]).split("$")
        if not hmac.compare_digest(_hash(password, bytes.fromhex(salt)), entry["password"]):
            raise AccessDenied("wrong user name or password")
        return User(name, str(entry["role"]), entry.get("cvr"))

    def session(self, user: User, now: float | None = None) -> str:
        expires = int((now or time.time()) + SESSION_SECONDS)
        return sign_claims(self._key, _SESSION_KIND, {"u": user.name, "exp": expires})

    def from_session(self, cookie: str | None, now: float | None = None) -> User | None:
        """The user of a valid, unexpired session cookie (None otherwise)."""
        claims = read_claims(self._key, _SESSION_KIND, cookie) if cookie else None
        if claims is None or claims.get("exp", 0) <= (now or time.time()):
            return None
        entry = self._load().get(str(claims.get("u")))
        if entry is None:  # a deleted user's sessions end with it
            return None
        return User(str(claims["u"]), str(entry["role"]), entry.get("cvr"))
