"""A real PostgreSQL for the tests, started from the distribution's binaries.

Where the server comes from, in order:

1. ``DP2_TEST_DATABASE_URL`` — a server you already run (a database URL whose user
   may create databases); each test gets a fresh database on it;
2. otherwise ``initdb`` and ``pg_ctl`` from PATH or from Debian's
   ``/usr/lib/postgresql/<version>/bin`` (``make test`` installs the ``postgresql``
   package when neither has them): a throw-away cluster in a temporary folder, on a
   free port of 127.0.0.1, trust authentication, stopped and removed at the end.

PostgreSQL refuses to run as root. As root (CI runs so), the cluster belongs to the
``postgres`` system user that Debian's package creates, or to ``nobody``; its folder
is made for that user, and initdb, pg_ctl and the server run as it
(``subprocess`` switches the user; no sudo needed). Durability is off (fsync,
synchronous commit): a test database need not survive a power cut.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

DEBIAN_BINARIES = Path("/usr/lib/postgresql")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries: say how to get them."""


def find_bin_dir() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's newest version."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(
        (p.parent for p in DEBIAN_BINARIES.glob("*/bin/initdb")),
        key=lambda folder: int(folder.parent.name) if folder.parent.name.isdigit() else 0,
    )
    if not versions:
        raise PostgresUnavailable(
            "no initdb on PATH nor in /usr/lib/postgresql/*/bin: install Debian's "
            "postgresql package (make test does), or set DP2_TEST_DATABASE_URL"
        )
    return versions[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> str | None:
    """The user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresUnavailable("running as root, and no postgres or nobody user to run as")


class PostgresServer:
    """A throw-away PostgreSQL cluster; ``url`` is its superuser's maintenance database."""

    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.port = _free_port()
        self.user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="dp2-postgres-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            user=self.user,
            capture_output=True,
            text=True,
            check=False,
            cwd=self.root,
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise PostgresUnavailable(
                f"{args[0]} failed ({done.returncode}): {done.stderr or done.stdout}\n{log}"
            )

    def start(self) -> None:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            " -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self) -> None:
        with contextlib.suppress(PostgresUnavailable):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a server for the session: DP2_TEST_DATABASE_URL, or one started here."""
    external = os.environ.get("DP2_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = PostgresServer()
    try:
        server.start()
        yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server for one test; dropped afterwards."""
    name = f"dp2_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = psycopg.conninfo.conninfo_to_dict(server_url)
    parts["dbname"] = name
    try:
        yield _as_url(parts)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _as_url(parts: dict[str, object]) -> str:
    """A postgresql:// URL of libpq connection parameters (what DP2_DATABASE_URL holds)."""
    user = quote(str(parts.get("user", "postgres")))
    password = parts.get("password")
    auth = f"{user}:{quote(str(password))}@" if password else f"{user}@"
    host = parts.get("host", "127.0.0.1")
    port = parts.get("port", 5432)
    return f"postgresql://{auth}{host}:{port}/{quote(str(parts['dbname']))}"
