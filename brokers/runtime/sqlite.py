"""How every DP2 projection store opens SQLite: one place for one durability decision.

The stores (trace, validator's submission log, router's schedule, mailboxes) are
projections of Kafka topics. They use WAL (readers never block the writer) and
``synchronous=NORMAL``: a commit survives a crash of the process, and only an OS
crash or power loss can drop the last few commits — which replaying the topic
restores. ``FULL`` would fsync every commit, and measured six fsyncs per message
through the pipeline; that cost belongs to Kafka (acks=all), not to projections.

A new store file is created 0600 before SQLite opens it (brokers.runtime.private):
stores hold personal data, and SQLite gives its -wal and -shm files the mode of the
database file.

Stores written before message UUIDs were folded to lower case are migrated when
opened (``migrate_once`` with ``lowercase_column``), merging rows that turn out to
be the same message.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from brokers.runtime.private import touch_private

#: Tries at switching a new file to WAL while another process does the same.
WAL_ATTEMPTS = 100


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection for one store, used from one asyncio task."""
    if str(path) not in {"", ":memory:"}:
        # No such folder: sqlite3.connect says so below, in its own words.
        with contextlib.suppress(FileNotFoundError):
            touch_private(Path(path))
    db = sqlite3.connect(str(path))
    # Two processes opening one new file at once (dp2 up --instances 2) both switch it
    # to WAL; SQLite answers the second "database is locked" at once, without the busy
    # wait, so it tries again for a few seconds (the first is done in milliseconds).
    for attempt in range(WAL_ATTEMPTS):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_ATTEMPTS - 1:
                db.close()
                raise
            time.sleep(0.05)
    db.execute("PRAGMA synchronous=NORMAL")
    return db


def migrate_once(db: sqlite3.Connection, name: str, step: Callable[[], object]) -> bool:
    """Run ``step`` in one transaction unless the store has run migration ``name`` before.

    The names done are kept in the store's own ``dp2_migrations`` table, so a migration
    that scans a large table costs that scan once, not at every start. False when the
    migration had run already. Two processes opening one new file at once (``dp2 up
    --instances 2``) run it once: the check is repeated under SQLite's write lock
    (``BEGIN IMMEDIATE``), so the second waits for the first and then finds it done.
    """
    db.execute("CREATE TABLE IF NOT EXISTS dp2_migrations (name TEXT PRIMARY KEY, at TEXT)")
    db.commit()
    done = "SELECT 1 FROM dp2_migrations WHERE name = ?"
    if db.execute(done, (name,)).fetchone():
        return False  # the usual case, without taking the lock
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute(done, (name,)).fetchone():
            db.rollback()
            return False
        step()
        db.execute("INSERT INTO dp2_migrations VALUES (?, datetime('now'))", (name,))
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return True


def lowercase_column(
    db: sqlite3.Connection, table: str, column: str, *, keep_first: str | None = None
) -> list[str]:
    """Fold the message UUIDs of ``table.column`` to lower case (DESIGN.md: one canonical form).

    SQLite's ``lower()`` folds ASCII only, as schemas.values.canonical_uuid does. For a
    unique column, rows that become the same UUID are merged first: the row that
    ``keep_first`` (an ORDER BY expression) puts first stays, the others are deleted.
    Returns the lower-cased UUIDs that changed, for stores that derive rows from them.
    ``table``, ``column`` and ``keep_first`` are the store's own SQL, never input.
    """
    changed = [
        str(row[0])
        for row in db.execute(
            f"SELECT DISTINCT lower({column}) FROM {table} WHERE {column} != lower({column})"  # noqa: S608 - the store's own names
        )
    ]
    if not changed:
        return []
    if keep_first is not None:
        db.execute(
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM (SELECT rowid, row_number()"  # noqa: S608 - the store's own names
            f" OVER (PARTITION BY lower({column}) ORDER BY {keep_first}) AS n FROM {table})"
            " WHERE n > 1)"
        )
    db.execute(f"UPDATE {table} SET {column} = lower({column}) WHERE {column} != lower({column})")  # noqa: S608 - the store's own names
    return changed
