"""brokers.runtime.postgres on a real server: versioned migrations, one schema per store,
and a lost connection that is retriable and reconnects."""

from __future__ import annotations

import psycopg
import pytest

from brokers.runtime import postgres
from brokers.runtime.postgres import Database, Migration, SchemaTooNew, StoreUnavailable
from brokers.runtime.settings import Settings
from schemas.errors import ConfigError

pytestmark = pytest.mark.postgres

V1 = Migration(
    1, "things", "CREATE TABLE things (id TEXT PRIMARY KEY); CREATE INDEX i ON things (id);"
)
V2 = Migration(2, "things have a size", "ALTER TABLE things ADD COLUMN size INTEGER")


def test_migrations_apply_once_in_order_and_per_store(database_url: str) -> None:
    """Each migration runs once, is recorded by store and version, and stores keep apart."""
    Database(database_url, "alpha", [V1]).close()
    alpha, beta = Database(database_url, "alpha", [V1, V2]), Database(database_url, "beta", [V1])
    with alpha.use() as conn:
        conn.execute("INSERT INTO things VALUES ('a', 1)")  # version 2's column is there
        assert postgres.applied(conn, "alpha") == [(1, "things"), (2, "things have a size")]
    with beta.use() as conn:  # its own schema, its own table
        assert conn.execute("SELECT COUNT(*) FROM things").fetchone() == (0,)
        assert postgres.applied(conn, "beta") == [(1, "things")]
    alpha.close()
    beta.close()


def test_a_database_of_a_newer_release_is_refused(database_url: str) -> None:
    """A store whose database is at a version this code does not know fails at start."""
    Database(database_url, "alpha", [V1, V2]).close()
    with pytest.raises(SchemaTooNew):
        Database(database_url, "alpha", [V1])


def test_migrations_must_be_numbered_from_one() -> None:
    """A store listing migrations out of order is a programming error, found at once."""
    with pytest.raises(ValueError, match="numbered"):
        Database("postgresql://nobody@127.0.0.1:1/none", "alpha", [V2])


def test_no_server_is_a_retriable_store_unavailable() -> None:
    """A server that does not answer is STORE_UNAVAILABLE, retriable, without the password."""
    with pytest.raises(StoreUnavailable) as caught:
        Database("postgresql://dp2:secret@127.0.0.1:1/none", "alpha", [V1])
    assert caught.value.retriable and caught.value.reason_code == "STORE_UNAVAILABLE"
    assert "secret" not in str(caught.value)


def test_a_lost_connection_is_retriable_and_the_next_use_reconnects(
    database_url: str, postgres: str
) -> None:
    """When the server drops the store's connection, one call fails retriably, the next works."""
    db = Database(database_url, "alpha", [V1])
    with db.use() as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(postgres, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreUnavailable), db.use() as conn:
        conn.execute("SELECT 1")
    with db.transaction() as conn:
        conn.execute("INSERT INTO things VALUES ('after')")
    db.close()
    db.close()


def test_the_setting_takes_only_a_postgresql_url() -> None:
    """DP2_DATABASE_URL unset is SQLite (None); a URL of another kind fails fast, redacted."""
    assert Settings.from_env({}).database_url is None
    url = "postgresql://dp2:secret@db:5432/dp2"
    settings = Settings.from_env({"DP2_DATABASE_URL": url})
    assert settings.database_url == url and "secret" not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"DP2_DATABASE_URL": "mysql://dp2:secret@db/dp2"})
    assert "DP2_DATABASE_URL" in str(caught.value) and "secret" not in str(caught.value)
