"""Who may look at the dashboard, and at what: users, hashed passwords, sessions.

Why it exists: the traceability dashboard shows who sent what to whom and when —
operators see everything (still only pseudonyms, never a CPR number), an
authority's own staff see only their CVR's messages and figures. Users live in
``$DP2_HOME/dashboard-users.json`` (or, with DP2_DATABASE_URL, in PostgreSQL, so
that every instance of tracing shares them), passwords hashed with scrypt (salted, n=2^14),
managed with::

    dp2 dashboard user add NAME --role operator|authority [--cvr CVR] [--password ...]

A login gets a session cookie: the user name, a session id and expiry, MACed with
HMAC-SHA256 under ``$DP2_HOME/dashboard.key`` (HttpOnly, SameSite=Strict). Logout
really ends a session: its id goes on ``dashboard-ended-sessions.json`` until it
would have expired; changing the key logs everyone out.

The trace API (tracing.api) takes the same sessions or a bearer token
(``Authorization: Bearer dp2t.…``) from ``dp2 dashboard token NAME``: the token
names a user, whose role and CVR are read from the users file on every request
(``dp2 dashboard user remove NAME`` ends its tokens). ``dp2 trace`` on the deployment's own machine
mints a short-lived operator token from the key it can read (:meth:`Users.local_token`).

The one visibility rule — an operator sees everything, an authority only its own
CVR's messages, and another sender's message is "not found" exactly like a missing
one — is :meth:`User.may_see_sender` and :meth:`User.scope_sender`; the API and the
dashboard both call them.

State-changing dashboard requests carry a CSRF token bound to the session
(:meth:`Users.csrf_token`); logins are throttled per user and per client address
(:class:`LoginThrottle`); password hashing (scrypt) runs off the event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brokers.runtime.postgres import Migration
from brokers.runtime.private import create_private, private_dir
from brokers.runtime.settings import Settings
from brokers.runtime.sqlstore import PostgresStore, Tables
from brokers.security.tokens import read_claims, secret_key_file, sign_claims
from schemas.errors import Dp2Error
from schemas.values import is_ascii_digits

USERS_FILE = "dashboard-users.json"
KEY_FILE = "dashboard.key"
ENDED_FILE = "dashboard-ended-sessions.json"
SESSION_COOKIE = "dp2_session"
SESSION_SECONDS = 8 * 3600
_SESSION_KIND = "dp2s"
_TOKEN_KIND = "dp2t"  # noqa: S105 - the token format's prefix, not a secret
LOCAL_OPERATOR = "local-operator"
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

    def scope_sender(self, requested: str | None) -> str | None:
        """The sender a search of this user covers: what an operator asked for; an
        authority's own CVR (asking for another sender is NotVisible)."""
        if self.is_operator:
            return requested
        if requested not in (None, "", self.cvr):
            raise NotVisible(f"no messages of sender {requested} are visible to {self.name}")
        return self.cvr


class NotVisible(Dp2Error):
    """What another authority sent: answered exactly like what does not exist (404)."""

    reason_code = "UNKNOWN_SENDER"
    hint = "An authority's user sees only its own CVR's messages; log in as an operator."


class LoginRequired(Dp2Error):
    reason_code = "LOGIN_REQUIRED"
    hint = (
        "Send a dashboard session cookie, or Authorization: Bearer <token> "
        "(dp2 dashboard token NAME makes one)."
    )


class CsrfRejected(Dp2Error):
    reason_code = "CSRF_TOKEN_INVALID"
    hint = "Reload the page and submit the form again (its token belongs to your session)."


class LoginThrottled(Dp2Error):
    reason_code = "LOGIN_THROTTLED"
    hint = "Wait before trying again; too many wrong passwords were given."


@dataclass
class LoginThrottle:
    """At most ``failures`` wrong passwords per user, and ``address_failures`` per client
    address (one address may serve a whole office), in ``window_s``.

    In memory, per tracing process: enough to turn online guessing from thousands a
    minute into a handful; the scrypt cost does the rest.
    """

    failures: int = 5
    address_failures: int = 20
    window_s: float = 900.0
    _seen: dict[str, deque[float]] = field(default_factory=dict)

    def wait_s(self, user: str, address: str, now: float | None = None) -> float:
        """Seconds until another attempt is allowed for this user or address (0: now)."""
        moment = time.monotonic() if now is None else now
        waits = [0.0]
        for key, limit in ((f"u:{user}", self.failures), (f"a:{address}", self.address_failures)):
            recent = self._recent(key, moment)
            if len(recent) >= limit:
                waits.append(recent[-limit] + self.window_s - moment)
        return max(waits)

    def failed(self, user: str, address: str, now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        for key in (f"u:{user}", f"a:{address}"):
            self._recent(key, moment).append(moment)

    def succeeded(self, user: str) -> None:
        self._seen.pop(f"u:{user}", None)

    def _recent(self, key: str, moment: float) -> deque[float]:
        recent = self._seen.setdefault(key, deque())
        while recent and recent[0] <= moment - self.window_s:
            recent.popleft()
        if len(self._seen) > 100_000:  # bounded memory under a spray of addresses
            self._seen = {k: v for k, v in self._seen.items() if v}
        return recent


def _hash(password: str, salt: bytes) -> str:
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)
    return f"scrypt${salt.hex()}${digest.hex()}"


class _UserFiles:
    """Users and ended sessions as two JSON files in ``$DP2_HOME`` (the embedded default)."""

    def __init__(self, home: Path) -> None:
        self._users = home / USERS_FILE
        self._ended = home / ENDED_FILE

    def users(self) -> dict[str, dict[str, Any]]:
        try:
            data: dict[str, dict[str, Any]] = json.loads(self._users.read_text())
        except FileNotFoundError:
            return {}
        return data

    def put_user(self, name: str, entry: dict[str, Any]) -> None:
        users = self.users()
        users[name] = entry
        _write_private(self._users, json.dumps(users, indent=2))

    def remove_user(self, name: str) -> bool:
        users = self.users()
        if users.pop(name, None) is None:
            return False
        _write_private(self._users, json.dumps(users, indent=2))
        return True

    def ended(self) -> dict[str, int]:
        try:
            data: dict[str, int] = json.loads(self._ended.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def end(self, sid: str, expires: int) -> None:
        ended = {k: v for k, v in self.ended().items() if v > time.time()}
        ended[sid] = expires
        _write_private(self._ended, json.dumps(ended))

    def close(self) -> None:
        pass  # nothing held open between calls


_TABLES = Tables(
    "",  # never on SQLite: the files above are the embedded default
    (
        Migration(
            1,
            "users, ended sessions",
            """
            CREATE TABLE users (name TEXT COLLATE "C" PRIMARY KEY, entry TEXT NOT NULL);
            CREATE TABLE ended_sessions (sid TEXT COLLATE "C" PRIMARY KEY,
                expires BIGINT NOT NULL);
            """,
        ),
    ),
)


class _UserTables:
    """Users and ended sessions in PostgreSQL (DP2_DATABASE_URL), schema ``dashboard``:
    every instance of tracing sees the same users, and a logout ends the session on
    all of them."""

    def __init__(self, url: str) -> None:
        self._db = PostgresStore(url, "dashboard", _TABLES)

    def users(self) -> dict[str, dict[str, Any]]:
        return {name: json.loads(entry) for name, entry in self._db.all("SELECT * FROM users")}

    def put_user(self, name: str, entry: dict[str, Any]) -> None:
        self._db.run(
            "INSERT INTO users VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET entry = excluded.entry",
            (name, json.dumps(entry)),
        )

    def remove_user(self, name: str) -> bool:
        return self._db.run("DELETE FROM users WHERE name = ?", (name,)) == 1

    def ended(self) -> dict[str, int]:
        rows = self._db.all(
            "SELECT sid, expires FROM ended_sessions WHERE expires > ?", (time.time(),)
        )
        return {str(sid): int(expires) for sid, expires in rows}

    def close(self) -> None:
        self._db.close()

    def end(self, sid: str, expires: int) -> None:
        with self._db.transaction():
            self._db.run("DELETE FROM ended_sessions WHERE expires <= ?", (time.time(),))
            self._db.run(
                "INSERT INTO ended_sessions VALUES (?, ?) ON CONFLICT DO NOTHING", (sid, expires)
            )


class Users:
    """The dashboard's users: add, authenticate, and read a session cookie.

    They are kept in ``$DP2_HOME`` (JSON files) or, with DP2_DATABASE_URL, in
    PostgreSQL (:meth:`of` chooses); the session key is a file either way — a
    secret belongs in the deployment's secret store, not in the database.
    """

    def __init__(self, home: Path, database_url: str | None = None) -> None:
        self._records = _UserTables(database_url) if database_url else _UserFiles(home)
        self._key = secret_key_file(home / KEY_FILE)

    @classmethod
    def of(cls, settings: Settings) -> Users:
        """The deployment's users, where its settings keep them."""
        return cls(settings.home, settings.database_url)

    def close(self) -> None:
        """Release the database connection, if the users are in one."""
        self._records.close()

    def _load(self) -> dict[str, dict[str, Any]]:
        return self._records.users()

    def add(self, name: str, password: str, role: str, cvr: str | None = None) -> User:
        if role not in ROLES:
            raise Dp2Error(
                f"role {role!r} is not one of {ROLES}",
                reason_code="BAD_ROLE",
                hint="Use --role operator or --role authority.",
            )
        if role == "authority" and (cvr is None or not is_ascii_digits(cvr, 8)):
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
        self._records.put_user(
            name, {"role": role, "cvr": cvr, "password": _hash(password, os.urandom(16))}
        )
        return User(name, role, cvr)

    def remove(self, name: str) -> bool:
        """Remove a user (False if there was none): its sessions and tokens end with it."""
        return self._records.remove_user(name)

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
        claims = {"u": user.name, "exp": expires, "sid": secrets.token_hex(16)}
        return sign_claims(self._key, _SESSION_KIND, claims)

    def from_session(self, cookie: str | None, now: float | None = None) -> User | None:
        """The user of a valid, unexpired, not ended session cookie (None otherwise)."""
        claims = self._claims(_SESSION_KIND, cookie, now)
        return None if claims is None else self._user_of(claims)

    def end_session(self, cookie: str | None) -> None:
        """Logout: the session's id is refused from now on (until it would expire)."""
        claims = self._claims(_SESSION_KIND, cookie, None)
        if claims is None:
            return
        self._records.end(str(claims["sid"]), int(claims["exp"]))

    def csrf_token(self, cookie: str | None) -> str:
        """The token a state-changing form must carry: bound to this session."""
        claims = self._claims(_SESSION_KIND, cookie, None)
        sid = str(claims["sid"]) if claims else ""
        return hmac.new(self._key, f"csrf.{sid}".encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, cookie: str | None, given: str | None) -> None:
        if not given or not cookie or not hmac.compare_digest(self.csrf_token(cookie), given):
            raise CsrfRejected("this request carries no valid CSRF token for your session")

    def token(self, name: str, days: float = 30.0, now: float | None = None) -> str:
        """A bearer token for the trace API, as user ``name`` (who must exist)."""
        if name not in self._load():
            raise Dp2Error(
                f"no dashboard user called {name!r}",
                reason_code="UNKNOWN_USER",
                hint="Add it first: dp2 dashboard user add NAME --role ...",
            )
        expires = int((now or time.time()) + days * 86400)
        claims = {"u": name, "exp": expires, "sid": secrets.token_hex(16)}
        return sign_claims(self._key, _TOKEN_KIND, claims)

    def local_token(self, seconds: float = 300.0) -> str:
        """A short-lived operator token for the deployment's own tools (``dp2 trace``):
        whoever can read the dashboard key is the operator of this deployment."""
        expires = int(time.time() + seconds)
        claims = {"u": LOCAL_OPERATOR, "exp": expires, "sid": secrets.token_hex(16)}
        return sign_claims(self._key, _TOKEN_KIND, claims)

    def from_token(self, token: str | None, now: float | None = None) -> User | None:
        claims = self._claims(_TOKEN_KIND, token, now)
        if claims is None:
            return None
        if claims.get("u") == LOCAL_OPERATOR:
            return User(LOCAL_OPERATOR, "operator")
        return self._user_of(claims)

    def from_request(self, headers: Any, cookies: Any) -> User | None:
        """The caller of an HTTP request: a bearer token, else the session cookie."""
        authorization = str(headers.get("Authorization", ""))
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return self.from_token(credential.strip())
        return self.from_session(cookies.get(SESSION_COOKIE))

    def _claims(self, kind: str, text: str | None, now: float | None) -> dict[str, Any] | None:
        claims = read_claims(self._key, kind, text) if text else None
        if claims is None or claims.get("exp", 0) <= (now or time.time()):
            return None
        if str(claims.get("sid")) in self._records.ended():
            return None
        return claims

    def _user_of(self, claims: dict[str, Any]) -> User | None:
        entry = self._load().get(str(claims.get("u")))
        if entry is None:  # a deleted user's sessions and tokens end with it
            return None
        return User(str(claims["u"]), str(entry["role"]), entry.get("cvr"))


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically."""
    private_dir(path.parent)
    partial = path.with_suffix(".tmp")
    fd = create_private(partial, replace=True)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    partial.replace(path)
