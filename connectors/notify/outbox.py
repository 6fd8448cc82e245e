"""The notifier's outbox: every notification's row, in SQLite or PostgreSQL, claimed to send.

Why it exists: it is what makes notifications exactly-once (connectors.notify.notifier):
each (message UUID, channel) is one row, inserted once however often DELIVERED
arrives, and its state says what has been done — ``pending``, ``sending``,
``handed`` (the channel took it; NOTIFIED is not on Kafka yet), ``sent`` or
``failed``. ``handed`` is written the moment the SMTP server or SMS provider says
yes, before NOTIFIED is produced: a notifier killed after that is never sending the
row again — the next dispatch (of any notifier) only announces it
(:meth:`NotificationOutbox.unannounced`). So the window in which a crash repeats a
notification is one local commit, whatever the number of sends in flight.

Several notifiers may share one outbox (PostgreSQL with DP2_DATABASE_URL, schema
``notify``; or two processes on one SQLite file). The rule that keeps each row sent
once is the **claim**: before a send, one statement moves the rows from
``pending`` (or from an expired ``sending``) to ``sending`` with this outbox's
``owner`` and a lease, and answers with the keys it moved; only those are sent. A
second notifier's claim of the same rows moves nothing (PostgreSQL re-checks the
row after the first claim commits; SQLite serialises writers). While a send is in
flight its owner renews the lease; every later change of the row (sent, failed, back
to pending) is made only by the owner of the claim. A notifier that crashed leaves
its rows ``sending``: once the lease runs out another notifier — or the same one,
restarted — claims them and sends again with the same idempotency key, as after any
crash. Its own ``sending`` rows are never due to a notifier (its sends in flight hold
them); a send that failed half-way gives its rows back (:meth:`~NotificationOutbox.defer`),
due again at once.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Protocol

from brokers.runtime import sqlite
from brokers.runtime.postgres import Database, Migration
from brokers.runtime.settings import Settings


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    message_uuid: str
    recipient_ref: str
    channel: str
    address: str
    language: str
    sender_label: str | None
    label: str | None
    nemsms_text: str | None
    state: str
    attempts: int
    next_at: float
    first_failure_at: float | None


@dataclass(frozen=True, slots=True)
class Handed:
    """A row the channel took, with what its NOTIFIED says."""

    key: str
    message_uuid: str
    recipient_ref: str
    channel: str
    provider: str
    shown: str
    digest_size: int


class NotificationOutbox(Protocol):
    """The durable record of every notification (see the module)."""

    owner: str  # who claims: one per outbox object, so one per notifier process

    def add(self, row: Row) -> bool:
        """Record a notification unless its key is recorded; True when it is new."""
        ...

    def due_groups(
        self, now: float, digest: bool = True, limit: int | None = None
    ) -> list[list[Row]]:
        """Every claimable row of a (recipient, channel) pair whose first row is due;
        without ``digest`` every due row on its own. The pairs longest due come first,
        at most ``limit`` of them. Rows this outbox is sending are not due: its sends
        in flight hold them (a send that failed gives them back with :meth:`defer`)."""
        ...

    def claim(self, keys: Sequence[str], now: float, until: float) -> list[str]:
        """Take the claimable rows of ``keys`` for sending until ``until``; the keys taken."""
        ...

    def defer(self, keys: Sequence[str], now: float, next_at: float) -> list[str]:
        """Put the claimable rows of ``keys`` back to pending, due at ``next_at``."""
        ...

    def settle(self, keys: Sequence[str], state: str, **fields: Any) -> int:
        """Set the state (and columns) of the rows of ``keys`` this outbox claimed."""
        ...

    def renew(self, until: float) -> int:
        """Extend the lease of every row this outbox is sending."""
        ...

    def unannounced(self, now: float) -> list[Handed]:
        """Rows a channel took whose NOTIFIED is not on Kafka yet: this notifier's, and
        those of a notifier whose claim ran out (it died before announcing them)."""
        ...

    def announced(self, keys: Sequence[str]) -> int:
        """NOTIFIED of these handed rows is on Kafka: they are ``sent``."""
        ...

    def retry_backlog(self) -> int:
        """Notifications that failed at least once and wait for another try."""
        ...

    def close(self) -> None:
        """Release the outbox; safe to call twice."""
        ...


_COLUMNS = (
    "key, message_uuid, recipient_ref, channel, address, language, sender_label, label,"
    " nemsms_text, state, attempts, next_at, first_failure_at"
)
_NEW_COLUMNS = "key, message_uuid, recipient_ref, channel, address, language, sender_label,"
_NEW_COLUMNS += " label, nemsms_text, next_at"
#: Rows a claim may take (parameters: owner, now).
_CLAIMABLE = (
    "(state = 'pending' OR (state = 'sending'"
    " AND (owner = ? OR lease_until IS NULL OR lease_until < ?)))"
)
_SETTLED_FIELDS = frozenset(
    {"next_at", "first_failure_at", "reason_code", "provider", "shown", "digest_size"}
)


class _SharedOutbox(ABC):
    """The rules of both backends, in SQL with ``?`` placeholders (translated for psycopg)."""

    owner: str

    @abstractmethod
    def _run(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Implemented by each backend."""

    @abstractmethod
    def _count(self, query: str, params: Sequence[Any]) -> int:
        """Implemented by each backend."""

    def add(self, row: Row) -> bool:
        values = astuple(row)
        new = (*values[:9], row.next_at)
        return (
            self._count(
                f"INSERT INTO outbox ({_NEW_COLUMNS}) VALUES ({_marks(10)})"  # noqa: S608 - ours
                " ON CONFLICT (key) DO NOTHING",
                new,
            )
            == 1
        )

    def due_groups(
        self, now: float, digest: bool = True, limit: int | None = None
    ) -> list[list[Row]]:
        # No owner matches "": only a claim whose lease ran out is due again.
        bound = "" if limit is None else f" LIMIT {int(limit)}"
        due = self._run(
            "SELECT recipient_ref, channel FROM outbox"  # noqa: S608 - ours
            f" WHERE {_CLAIMABLE} AND next_at <= ?"
            f" GROUP BY recipient_ref, channel ORDER BY MIN(next_at){bound}",
            ("", now, now),
        )
        groups = []
        for recipient_ref, channel in due:
            rows = [
                Row(*r)
                for r in self._run(
                    f"SELECT {_COLUMNS} FROM outbox WHERE recipient_ref = ? AND channel = ?"  # noqa: S608 - ours
                    f" AND {_CLAIMABLE} ORDER BY key",
                    (recipient_ref, channel, "", now),
                )
            ]
            # A NemSMS is its own message: never folded into a digest.
            plain = [r for r in rows if r.nemsms_text is None]
            groups += [[r] for r in rows if r.nemsms_text is not None and r.next_at <= now]
            if not digest:
                groups += [[r] for r in plain if r.next_at <= now]
            elif plain and min(r.next_at for r in plain) <= now:
                groups.append(plain)
        return groups

    def claim(self, keys: Sequence[str], now: float, until: float) -> list[str]:
        if not keys:
            return []
        rows = self._run(
            "UPDATE outbox SET state = 'sending', owner = ?, lease_until = ?,"  # noqa: S608 - ours
            f" attempts = attempts + 1 WHERE key IN ({_marks(len(keys))}) AND {_CLAIMABLE}"
            " RETURNING key",
            (self.owner, until, *keys, self.owner, now),
        )
        return sorted(str(r[0]) for r in rows)

    def defer(self, keys: Sequence[str], now: float, next_at: float) -> list[str]:
        if not keys:
            return []
        rows = self._run(
            "UPDATE outbox SET state = 'pending', owner = NULL, lease_until = NULL,"  # noqa: S608 - ours
            f" next_at = ? WHERE key IN ({_marks(len(keys))}) AND {_CLAIMABLE} RETURNING key",
            (next_at, *keys, self.owner, now),
        )
        return sorted(str(r[0]) for r in rows)

    def settle(self, keys: Sequence[str], state: str, **fields: Any) -> int:
        if not keys:
            return 0
        unknown = set(fields) - _SETTLED_FIELDS
        if unknown:
            raise ValueError(f"not a column an outbox row may change: {sorted(unknown)}")
        # A handed row stays its claimant's to announce while the claim holds (another
        # notifier announces it only once the claim ran out: its claimant died).
        released = [] if state == "handed" else ["owner = NULL", "lease_until = NULL"]
        assignments = ", ".join(["state = ?", *released, *(f"{n} = ?" for n in fields)])
        return self._count(
            f"UPDATE outbox SET {assignments} WHERE key IN ({_marks(len(keys))})"  # noqa: S608 - names are ours
            " AND state = 'sending' AND owner = ?",
            (state, *fields.values(), *keys, self.owner),
        )

    def renew(self, until: float) -> int:
        return self._count(
            "UPDATE outbox SET lease_until = ? WHERE state IN ('sending', 'handed') AND owner = ?",
            (until, self.owner),
        )

    def unannounced(self, now: float) -> list[Handed]:
        rows = self._run(
            "SELECT key, message_uuid, recipient_ref, channel, provider, shown, digest_size"
            " FROM outbox WHERE state = 'handed'"
            " AND (owner = ? OR lease_until IS NULL OR lease_until < ?) ORDER BY key",
            (self.owner, now),
        )
        return [
            Handed(r[0], r[1], r[2], r[3], r[4] or "", r[5] or "", int(r[6] or 1)) for r in rows
        ]

    def announced(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        return self._count(
            "UPDATE outbox SET state = 'sent', owner = NULL, lease_until = NULL"  # noqa: S608 - ours
            f" WHERE key IN ({_marks(len(keys))}) AND state = 'handed'",
            tuple(keys),
        )

    def retry_backlog(self) -> int:
        rows = self._run(
            "SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND first_failure_at IS NOT NULL",
            (),
        )
        return int(rows[0][0])


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _owner(owner: str | None) -> str:
    return owner or uuid.uuid4().hex[:16]


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,            -- message UUID | channel: the idempotency key
    message_uuid TEXT NOT NULL,
    recipient_ref TEXT NOT NULL,
    channel TEXT NOT NULL,
    address TEXT NOT NULL,
    language TEXT NOT NULL,
    sender_label TEXT,
    label TEXT,
    nemsms_text TEXT,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | sending | handed | sent | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    first_failure_at REAL,
    reason_code TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at);
"""


class Outbox(_SharedOutbox):
    """`NotificationOutbox` in one SQLite file (the embedded default; processes may share
    it: SQLite runs one writer at a time, so a claim is one atomic statement)."""

    def __init__(self, path: Path | str, owner: str | None = None) -> None:
        self.owner = _owner(owner)
        self._db = sqlite.connect(path)
        self._db.executescript(_SQLITE_SCHEMA)
        sqlite.migrate_once(self._db, "outbox-claims", self._add_claims)
        sqlite.migrate_once(self._db, "outbox-handed", self._add_handed)

    def _add_columns(self, columns: Sequence[tuple[str, str]]) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for name, kind in columns:
            if name not in present:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {kind}")

    def _add_claims(self) -> None:
        """An outbox from before claims: rows get an owner and a lease (none: expired)."""
        self._add_columns((("owner", "TEXT"), ("lease_until", "REAL")))

    def _add_handed(self) -> None:
        """An outbox from before ``handed``: rows get what their NOTIFIED says."""
        self._add_columns((("provider", "TEXT"), ("shown", "TEXT"), ("digest_size", "INTEGER")))

    def _run(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._db:
            return self._db.execute(query, tuple(params)).fetchall()

    def _count(self, query: str, params: Sequence[Any]) -> int:
        with self._db:
            return self._db.execute(query, tuple(params)).rowcount

    def close(self) -> None:
        self._db.close()


MIGRATIONS = (
    Migration(
        1,
        "outbox",
        """
        CREATE TABLE outbox (
            key              TEXT COLLATE "C" PRIMARY KEY,  -- message UUID | channel
            message_uuid     TEXT NOT NULL,
            recipient_ref    TEXT NOT NULL,
            channel          TEXT NOT NULL,
            address          TEXT NOT NULL,
            language         TEXT NOT NULL,
            sender_label     TEXT,
            label            TEXT,
            nemsms_text      TEXT,
            state            TEXT NOT NULL DEFAULT 'pending',
            attempts         INTEGER NOT NULL DEFAULT 0,
            next_at          DOUBLE PRECISION NOT NULL,  -- seconds since the epoch
            first_failure_at DOUBLE PRECISION,
            reason_code      TEXT,
            owner            TEXT,              -- the notifier that claimed it
            lease_until      DOUBLE PRECISION   -- its claim holds until then
        );
        CREATE INDEX outbox_due ON outbox (state, next_at);
        CREATE INDEX outbox_pairs ON outbox (recipient_ref, channel);
        """,
    ),
    Migration(
        2,
        "handed: taken by the channel, NOTIFIED not yet produced",
        """
        ALTER TABLE outbox ADD COLUMN provider TEXT;      -- who took it
        ALTER TABLE outbox ADD COLUMN shown TEXT;         -- what the trace may show
        ALTER TABLE outbox ADD COLUMN digest_size INTEGER;
        """,
    ),
)


class PgOutbox(_SharedOutbox):
    """`NotificationOutbox` in PostgreSQL, shared by every notifier instance."""

    def __init__(self, url: str, owner: str | None = None) -> None:
        self.owner = _owner(owner)
        self._db = Database(url, "notify", MIGRATIONS)

    def _run(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._db.use() as conn:
            return conn.execute(_pg(query), tuple(params)).fetchall()

    def _count(self, query: str, params: Sequence[Any]) -> int:
        with self._db.use() as conn:
            return conn.execute(_pg(query), tuple(params)).rowcount

    def close(self) -> None:
        self._db.close()


def _pg(query: str) -> str:
    """The outbox's SQL (``?`` placeholders) for psycopg (``%s``)."""
    return query.replace("?", "%s")


def open_outbox(settings: Settings, path: Path) -> NotificationOutbox:
    """PostgreSQL when DP2_DATABASE_URL is set, else the SQLite file ``path``."""
    if settings.database_url:
        return PgOutbox(settings.database_url)
    return Outbox(path)
