"""One set of queries for both backends: the stores of the connectors and the mailbox.

Why: the connectors' durable queues (ESDH receipts and journal, print jobs, mail
forwarding), the reference mailbox and the apps' delegations must live in PostgreSQL
when a deployment runs several instances of them (DP2_DATABASE_URL), and in SQLite
on the embedded default. Writing every query twice would let the two drift; instead
each of these stores keeps one class and one set of queries, written in the SQL that
SQLite (3.35 or newer) and PostgreSQL share:

- ``?`` placeholders (turned into psycopg's ``%s`` here, once per query text);
- ``INSERT ... ON CONFLICT DO NOTHING`` for "keep the first", and ``RETURNING``;
- ``SUM(CASE WHEN ... THEN 1 ELSE 0 END)``, never a sum of booleans.

Only the tables differ: a store gives its SQLite DDL (``CREATE ... IF NOT EXISTS``,
plus named one-off upgrades run once by brokers.runtime.sqlite.migrate_once) and its
PostgreSQL migrations (brokers.runtime.postgres, versioned). ``Tables`` holds both.

Several instances, one queue: a queue that calls out (to an ESDH, a print provider,
a mail relay) is drained by one instance at a time, so the calls keep the queue's
order and none is made twice at once. :meth:`SqlStore.leads` says whether this
instance is the drainer: a session advisory lock in PostgreSQL (released by the
server when the instance's connection ends, so a killed instance hands over at once)
and an ``flock`` on a file next to the SQLite store (released by the kernel when the
process ends). Every instance still takes input (Kafka partitions, HTTP requests)
and writes it to the shared tables.

The trace store, evidence log, outbox and the others written before this module
keep their own PostgreSQL classes: their queries differ more than these do.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from brokers.runtime import sqlite
from brokers.runtime.postgres import LOCK_CLASS, Connection, Database, Migration
from brokers.runtime.private import touch_private

Params = Sequence[Any]
Row = tuple[Any, ...]


@dataclass(frozen=True)
class Tables:
    """A store's tables on each backend."""

    #: Run by SQLite's executescript at every open: ``CREATE ... IF NOT EXISTS`` only.
    sqlite: str
    #: The PostgreSQL schema's migrations, numbered from 1 (brokers.runtime.postgres).
    postgres: Sequence[Migration]
    #: (name, step) upgrades of SQLite files written by older releases, each run once.
    sqlite_upgrades: Sequence[tuple[str, Callable[[sqlite3.Connection], object]]] = field(
        default=()
    )


class SqlStore(Protocol):
    """A store's connection, the same for SQLite and PostgreSQL (see the module)."""

    backend: str

    def one(self, query: str, params: Params = ()) -> Row | None:
        """The first row of a query, or None."""
        ...

    def all(self, query: str, params: Params = ()) -> list[Row]:
        """Every row of a query."""
        ...

    def run(self, query: str, params: Params = ()) -> int:
        """Run a statement (committed, unless inside ``transaction``); the rows it changed."""
        ...

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """Statements inside the block commit together, or not at all."""
        ...

    def leads(self, role: str) -> bool:
        """Whether this instance is the one that drains ``role`` (see the module)."""
        ...

    def close(self) -> None:
        """Release the connection (and any lead); safe to call twice."""
        ...


class SqliteStore:
    """:class:`SqlStore` on one SQLite file (the embedded default)."""

    backend = "sqlite"

    def __init__(self, path: Path | str, tables: Tables, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.connection = sqlite.connect(str(path))
        if durable:  # a queue that is not rebuilt from Kafka: survive power loss too
            self.connection.execute("PRAGMA synchronous=FULL")
        self.connection.executescript(tables.sqlite)
        self.connection.commit()
        for name, step in tables.sqlite_upgrades:
            sqlite.migrate_once(self.connection, name, functools.partial(step, self.connection))
        self._depth = 0
        self._locks: dict[str, IO[bytes]] = {}

    def one(self, query: str, params: Params = ()) -> Row | None:
        cursor = self.connection.execute(query, params)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()  # an UPDATE ... RETURNING of several rows runs to its end here
        self._commit()
        return None if row is None else tuple(row)

    def all(self, query: str, params: Params = ()) -> list[Row]:
        rows = [tuple(row) for row in self.connection.execute(query, params).fetchall()]
        self._commit()  # an UPDATE ... RETURNING is a write
        return rows

    def run(self, query: str, params: Params = ()) -> int:
        count = self.connection.execute(query, params).rowcount
        self._commit()
        return count

    def _commit(self) -> None:
        if self._depth == 0 and self.connection.in_transaction:
            self.connection.commit()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:
            yield  # already inside one: the outer block commits
            return
        self._depth = 1
        try:
            with self.connection:
                yield
        finally:
            self._depth = 0

    def leads(self, role: str) -> bool:
        if role in self._locks:
            return True
        if str(self.path) in {"", ":memory:"}:
            return True  # nobody else can open it
        lock_path = self.path.with_name(f"{self.path.name}.{role}.lock")
        touch_private(lock_path)
        handle = lock_path.open("rb")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._locks[role] = handle
        return True

    def close(self) -> None:
        for handle in self._locks.values():
            handle.close()
        self._locks.clear()
        self.connection.close()


@functools.lru_cache(maxsize=512)
def _pg(query: str) -> bytes:
    """The query in psycopg's placeholders: ``?`` becomes ``%s``, a literal ``%`` doubles."""
    return query.replace("%", "%%").replace("?", "%s").encode()


class PostgresStore:
    """:class:`SqlStore` on PostgreSQL, in the store's own schema, shared by instances."""

    backend = "postgres"

    def __init__(self, url: str, store: str, tables: Tables) -> None:
        self.database = Database(url, store, tables.postgres)
        self._tx: Connection | None = None
        self._leading: dict[str, Connection] = {}

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Connection]:
        if self._tx is not None:
            yield self._tx
        else:
            with self.database.use() as conn:
                yield conn

    def one(self, query: str, params: Params = ()) -> Row | None:
        with self._conn() as conn:
            row = conn.execute(_pg(query), params).fetchone()
        return None if row is None else tuple(row)

    def all(self, query: str, params: Params = ()) -> list[Row]:
        with self._conn() as conn:
            return [tuple(row) for row in conn.execute(_pg(query), params).fetchall()]

    def run(self, query: str, params: Params = ()) -> int:
        with self._conn() as conn:
            return conn.execute(_pg(query), params).rowcount

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        if self._tx is not None:
            yield
            return
        with self.database.transaction() as conn:
            self._tx = conn
            try:
                yield
            finally:
                self._tx = None

    def leads(self, role: str) -> bool:
        with self.database.use() as conn:
            if self._leading.get(role) is conn:
                return True  # the lock lives as long as this connection (a session lock)
            key = f"{self.database.store}/{role}"
            row = conn.execute(
                "SELECT pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, key)
            ).fetchone()
            if row is None or not row[0]:
                self._leading.pop(role, None)
                return False
            self._leading[role] = conn
            return True

    def close(self) -> None:
        # Closing the connection releases the session's locks too, but only once the
        # server has noticed the client went: another instance asking at once could
        # still be refused. Unlocking first hands the lead over before close returns.
        if self._leading:
            # (A broken connection holds no locks: nothing to unlock.)
            with contextlib.suppress(Exception), self.database.use() as conn:
                conn.execute("SELECT pg_advisory_unlock_all()")
        self._leading.clear()
        self.database.close()


def open_store(
    database_url: str | None,
    path: Path,
    store: str,
    tables: Tables,
    *,
    durable: bool = False,
) -> SqlStore:
    """PostgreSQL schema ``store`` when a database URL is set, else the SQLite file `path`."""
    if database_url:
        return PostgresStore(database_url, store, tables)
    return SqliteStore(path, tables, durable=durable)


def schema_name(*parts: str) -> str:
    """A store's PostgreSQL schema from its parts (``esdh``, the connector's name):
    lower case, with characters other than letters, digits and ``_`` as ``_``."""
    joined = "_".join(parts).lower()
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in joined)


__all__ = [
    "PostgresStore",
    "SqlStore",
    "SqliteStore",
    "Tables",
    "open_store",
    "schema_name",
]
