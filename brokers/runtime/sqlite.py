"""How every DP2 projection store opens SQLite: one place for one durability decision.

The stores (trace, validator's submission log, router's schedule, mailboxes) are
projections of Kafka topics. They use WAL (readers never block the writer) and
``synchronous=NORMAL``: a commit survives a crash of the process, and only an OS
crash or power loss can drop the last few commits — which replaying the topic
restores. ``FULL`` would fsync every commit, and measured six fsyncs per message
through the pipeline; that cost belongs to Kafka (acks=all), not to projections.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: Path | str) -> sqlite3.Connection:
    """A connection for one store, used from one asyncio task."""
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db
