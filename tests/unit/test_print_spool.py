"""The print connector's spool (connectors.print.spool) and its job queue's spool columns."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from brokers.runtime.blobstore import BlobCorruptError, BlobMissingError
from connectors.folders import UnsafePathError
from connectors.print.spool import SWEEP_AFTER_S, Spool, SpoolError
from connectors.print.store import PrintStore
from schemas.models import BlobContent, File, InlineContent

#: The job table as it was before the spool: the PDF a BLOB in the row.
OLD_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message_uuid TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL, sender_id TEXT, recipient_ref TEXT, pages INTEGER NOT NULL DEFAULT 0,
    pdf BLOB, meta TEXT, reason_code TEXT, reason_text TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0, last_error TEXT,
    created_at TEXT NOT NULL, done_at TEXT);
CREATE INDEX jobs_due ON jobs (state, next_at);
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_letter_is_written_whole_and_private_and_checked_before_it_goes(tmp_path: Path) -> None:
    """A rendered letter lands as <uuid>.pdf, 0600 in a 0700 folder, with its size and
    SHA-256; a changed or missing one is refused by check, a bad UUID names no file."""
    spool = Spool(tmp_path)
    message_uuid = str(uuid.uuid4())
    spooled, result = spool.write(message_uuid, lambda out: out.write(b"%PDF-1.7 letter"))
    path = spool.path(message_uuid)
    assert spooled.name == f"{message_uuid}.pdf" == path.name and result == 15
    assert spooled.size == 15 and spooled.sha256 == hashlib.sha256(b"%PDF-1.7 letter").hexdigest()
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no partial file left"
    assert spool.check(message_uuid, spooled.sha256) == path
    path.write_bytes(b"%PDF-1.7 changed")
    with pytest.raises(SpoolError) as caught:
        spool.check(message_uuid, spooled.sha256)
    assert caught.value.reason_code == "PRINT_FILE_CORRUPT"
    spool.remove(message_uuid)
    with pytest.raises(SpoolError) as caught:
        spool.check(message_uuid, spooled.sha256)
    assert caught.value.reason_code == "PRINT_FILE_MISSING"
    with pytest.raises(UnsafePathError):
        spool.path("../escaped")


def test_a_failed_render_leaves_nothing_and_a_sweep_keeps_only_the_queued(tmp_path: Path) -> None:
    """A render that raises leaves no file; the sweep at start deletes every spool file no
    queued job names once it is old (a young one may be another instance's, between its
    rename and its commit), partial ones too, this process's decrypted documents and
    those of ended processes on this host, never a running one's."""
    spool = Spool(tmp_path)

    def broken(out: object) -> None:
        raise RuntimeError("renderer failed")

    with pytest.raises(RuntimeError):
        spool.write(str(uuid.uuid4()), broken)
    assert not list((tmp_path / "spool").iterdir())
    kept, orphan = str(uuid.uuid4()), str(uuid.uuid4())
    for each in (kept, orphan):
        spool.write(each, lambda out: out.write(b"pdf"))
    (tmp_path / "spool" / f".{orphan}.pdf.0123.part").write_bytes(b"half")
    spool.documents.put_chunks([b"a decrypted document"])
    host = socket.gethostname()
    ended = tmp_path / "documents" / f"{host}-{_ended_pid()}"
    running = tmp_path / "documents" / f"{host}-1"  # init: always running
    for folder in (ended, running):
        folder.mkdir(parents=True)
        (folder / "doc").write_bytes(b"another process's document")
    assert spool.sweep([f"{kept}.pdf"]) == [], "young files may be another instance's"
    gone = spool.sweep([f"{kept}.pdf"], now=time.time() + SWEEP_AFTER_S + 1)
    assert sorted(gone) == sorted([f"{orphan}.pdf", f".{orphan}.pdf.0123.part"])
    assert not ended.exists() and (running / "doc").exists()
    assert [p.name for p in (tmp_path / "spool").iterdir()] == [f"{kept}.pdf"]
    assert not spool.documents.root.exists() or not any(spool.documents.root.rglob("*"))


def _ended_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_kept_document_is_read_by_path_only_once_it_is_whole(tmp_path: Path) -> None:
    """An inline file gives its bytes; a kept one its path once size and SHA-256 match
    (BLOB_CORRUPT when they do not), one never opened is BLOB_MISSING."""
    spool = Spool(tmp_path)
    data = b"%PDF-1.7 " + bytes(range(256)) * 100
    ref = spool.documents.put_chunks([data])
    digest = hashlib.sha256(data).digest()
    claim = BlobContent(ref=ref, sha256=digest, size=len(data))
    kept = File(encodingFormat="application/pdf", filename="a.pdf", content=claim)
    inline = File(encodingFormat="text/plain", filename="b.txt", content=InlineContent(data=b"hej"))
    assert spool.document(inline) == b"hej"
    path = spool.document(kept)
    assert isinstance(path, Path) and path.read_bytes() == data
    path.write_bytes(data[:-1] + b"!")
    with pytest.raises(BlobCorruptError):
        spool.document(kept)
    sealed = File(
        encodingFormat="application/pdf", filename="c.pdf", content=claim, nonce=b"n" * 12
    )
    with pytest.raises(BlobMissingError):
        spool.document(sealed)
    spool.clear_documents()
    with pytest.raises(BlobMissingError):
        spool.document(kept)


def test_a_queue_from_before_the_spool_keeps_its_letters(tmp_path: Path) -> None:
    """A queue whose waiting PDF is a BLOB gets the spool columns; its job says so (no
    file), keeps its BLOB until spooled, and names its file from then until handed over."""
    path = tmp_path / "print.sqlite"
    message_uuid = str(uuid.uuid4())
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    old.execute(
        "INSERT INTO jobs (message_uuid, state, pages, pdf, meta, created_at)"
        " VALUES (?, 'queued', 2, ?, ?, '2026-03-12T10:00:00Z')",
        (message_uuid, b"%PDF-1.7 old", json.dumps({"pages": 2})),
    )
    old.commit()
    old.close()
    store = PrintStore(path)
    try:
        [job] = store.due(now=1e12)
        assert job.pdf_file is None and job.pdf_sha256 is None and job.meta == {"pages": 2}
        assert store.pdf(message_uuid) == b"%PDF-1.7 old" and store.spooled_files() == []
        store.spooled(message_uuid, f"{message_uuid}.pdf", "ab" * 32)
        [job] = store.due(now=1e12)
        assert (job.pdf_file, job.pdf_sha256) == (f"{message_uuid}.pdf", "ab" * 32)
        assert store.pdf(message_uuid) == b"", "the BLOB goes once the file is there"
        assert store.spooled_files() == [f"{message_uuid}.pdf"]
        store.handed(message_uuid)
        assert store.spooled_files() == []
    finally:
        store.close()
    again = PrintStore(path)  # the migration runs once; a new queue row names its file
    try:
        fresh = str(uuid.uuid4())
        again.queue(
            fresh,
            sender_id="55133018",
            recipient_ref="psn-x",
            pages=3,
            pdf_file=f"{fresh}.pdf",
            pdf_sha256="cd" * 32,
            meta={"pages": 3},
        )
        assert again.spooled_files() == [f"{fresh}.pdf"]
    finally:
        again.close()
