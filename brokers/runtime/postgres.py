"""How every DP2 store opens PostgreSQL: one connection per store, versioned migrations.

Why: a SQLite store lives inside one process, so a service whose store is SQLite
cannot run as several instances (each would see only the partitions it was given).
With ``DP2_DATABASE_URL`` set (brokers.runtime.settings), the stores keep their
tables in that PostgreSQL database instead, behind the same Protocols, and every
instance of a service shares them. SQLite stays the embedded default.

Each store has its own schema (``trace``, ``validator``, ...), named by the store,
so stores never see each other's tables and one database serves them all.

Migrations are versioned. A store lists its migrations in order, numbered from 1
(:class:`Migration`); :class:`Database` applies those the database lacks when it
connects, in one transaction under an advisory lock (two instances starting at once
apply each migration once), and records each as ``(store, version)`` in
``dp2.schema_migrations``. A migration once released is never edited: a change is
a new migration. A database holding a version this release does not know (written
by a newer DP2) is refused with SCHEMA_TOO_NEW rather than written.

Errors: a lost connection or an unreachable server (psycopg's OperationalError) is
:class:`StoreUnavailable`, which is retriable: the worker leaves its batch to be
tried again (brokers.runtime.worker), and the next use reconnects. The connection
is used from one asyncio task at a time, like the SQLite stores', and its calls
block: each is a few index lookups, as on SQLite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

from brokers.runtime.settings import redacted
from schemas.errors import Dp2Error

if TYPE_CHECKING:
    import psycopg

# psycopg is imported where a connection is made, not here: every service imports the
# stores' modules, and only a deployment with DP2_DATABASE_URL pays its ~10 MB.
Connection: TypeAlias = "psycopg.Connection[tuple[Any, ...]]"

#: The schema that holds DP2's own bookkeeping (the migrations done).
META_SCHEMA = "dp2"
#: The first key of DP2's advisory locks; the second names what is locked.
LOCK_CLASS = 0x0D92
_MIGRATION_LOCK = 0


class StoreUnavailable(Dp2Error):
    """The database does not answer (a restart, a failover, a network fault)."""

    retriable = True
    reason_code = "STORE_UNAVAILABLE"
    hint = "Check that the PostgreSQL server of DP2_DATABASE_URL runs and is reachable."


class SchemaTooNew(Dp2Error):
    """The database holds migrations of a newer DP2 release."""

    reason_code = "SCHEMA_TOO_NEW"
    hint = "Run the DP2 release that wrote this database, or a newer one."


@dataclass(frozen=True, slots=True)
class Migration:
    """One step of a store's schema: its number (1, 2, ...), a name and its SQL."""

    version: int
    name: str
    sql: str


class Database:
    """One store's connection to PostgreSQL, in the store's own schema.

    Connecting applies the store's migrations (see the module). ``use()`` and
    ``transaction()`` hand out the connection and translate connection failures
    into :class:`StoreUnavailable`; after one, the next use connects again.
    """

    closed_hint: ClassVar[str] = "Open the store again."

    def __init__(self, url: str, store: str, migrations: Sequence[Migration]) -> None:
        numbers = [m.version for m in migrations]
        if numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"the migrations of {store} are not numbered 1..n: {numbers}")
        self.store = store
        self._url = url
        self._migrations = tuple(migrations)
        self._conn: Connection | None = None
        self._closed = False
        self._connection()  # fail fast at start: no database, or one too new

    @property
    def version(self) -> int:
        """The newest migration this release knows for the store."""
        return len(self._migrations)

    @contextlib.contextmanager
    def use(self) -> Iterator[Connection]:
        """The connection, for statements that each stand alone (autocommit)."""
        with _translated(self):
            yield self._connection()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """The connection inside one transaction: committed when the block ends."""
        with _translated(self):
            conn = self._connection()
            with conn.transaction():
                yield conn

    def lock(self, conn: Connection, key: str) -> None:
        """Hold the store's advisory lock on ``key`` until the transaction ends."""
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, key))

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connection(self) -> Connection:
        if self._closed:
            raise Dp2Error(
                f"the {self.store} store is closed",
                reason_code="STORE_CLOSED",
                hint=self.closed_hint,
            )
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        import psycopg  # noqa: PLC0415 - only with DP2_DATABASE_URL (see the top)
        from psycopg import sql  # noqa: PLC0415

        try:
            conn: Connection = psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot connect to the {self.store} store at {redacted(self._url)}: {exc}"
            ) from exc
        try:
            migrate(conn, self.store, self._migrations)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.store)))
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn


@contextlib.contextmanager
def _translated(database: Database) -> Iterator[None]:
    import psycopg  # noqa: PLC0415 - only with DP2_DATABASE_URL (see the top)

    try:
        yield
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"the {database.store} store lost its database: {exc}") from exc


def migrate(conn: Connection, store: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations of ``store`` that the database lacks; the count applied."""
    from psycopg import sql  # noqa: PLC0415 - only with DP2_DATABASE_URL (see the top)

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, _MIGRATION_LOCK))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(META_SCHEMA)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " store TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (store, version))"
            ).format(sql.Identifier(META_SCHEMA))
        )
        row = conn.execute(
            sql.SQL(
                "SELECT COALESCE(MAX(version), 0) FROM {}.schema_migrations WHERE store = %s"
            ).format(sql.Identifier(META_SCHEMA)),
            (store,),
        ).fetchone()
        done = int(row[0]) if row else 0
        if done > len(migrations):
            raise SchemaTooNew(
                f"the {store} store's schema is at version {done}; "
                f"this DP2 knows versions up to {len(migrations)}"
            )
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(store)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(store)))
        for migration in migrations[done:]:
            conn.execute(migration.sql.encode())  # bytes: run as given, several statements
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_migrations (store, version, name) VALUES (%s, %s, %s)"
                ).format(sql.Identifier(META_SCHEMA)),
                (store, migration.version, migration.name),
            )
    return len(migrations) - done


def applied(conn: Connection, store: str) -> list[tuple[int, str]]:
    """The (version, name) of the store's migrations done, oldest first."""
    from psycopg import sql  # noqa: PLC0415 - only with DP2_DATABASE_URL (see the top)

    rows = conn.execute(
        sql.SQL(
            "SELECT version, name FROM {}.schema_migrations WHERE store = %s ORDER BY version"
        ).format(sql.Identifier(META_SCHEMA)),
        (store,),
    ).fetchall()
    return [(int(version), str(name)) for version, name in rows]
