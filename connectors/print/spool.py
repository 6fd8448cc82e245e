"""The print connector's own folder for plaintext: documents being printed, rendered letters.

Why it exists: a letter may carry a 99.5 MB document, and the connector must neither
hold it whole (issue 15: every process under 200 MB) nor keep it in its SQLite queue.
Two private folders in the connector's data dir (0700, files 0600:
brokers.runtime.private) hold it instead:

- ``documents/<host>-<pid>/`` — a FileBlobStore of this process that
  connectors.delivery decrypts each blob-stored document into, a chunk at a time,
  once it has authenticated (as for the reference mailbox); the renderer reads it from
  there by path, after :meth:`Spool.document` has checked its size and SHA-256
  (connectors.documents). It holds only the letter in hand: the connector renders one
  letter at a time and empties it after each. One folder per process, because
  instances may share the data dir (several instances on PostgreSQL): at start an
  instance removes the folders that processes of its host no longer running left.
- ``spool/`` — the rendered letters, ``<uuid>.pdf`` (a name only from a version-4
  UUID, resolved inside the folder: connectors.folders). Each is written under a
  temporary name, flushed to disk and renamed, and the folder synced, *before* its job
  row is committed (connectors.print.store: the Kafka offset is committed after that),
  so a queued job always finds its PDF; the row keeps its name and SHA-256, checked
  again before the PDF is handed over (:meth:`Spool.check`). It is deleted once the
  provider has it; at start, whatever no queued job names (a crash between the rename
  and the commit, or between the hand-over and the delete) is deleted too, once it is
  older than :data:`SWEEP_AFTER_S` (a younger one may be another instance's letter
  between its rename and its commit).

Problems are :class:`SpoolError` (``PRINT_FILE_MISSING``, ``PRINT_FILE_CORRUPT``): the
job waits, its reason visible in /healthz, as when the provider is away.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

from brokers.runtime.blobstore import FileBlobStore
from brokers.runtime.private import private_dir
from connectors import documents
from connectors.folders import fsync_dir, inside, uuid_file_name, write_whole
from schemas.errors import Dp2Error
from schemas.models import BlobContent, File

_T = TypeVar("_T")
_PIECE = 1024 * 1024
PDF_SUFFIX = ".pdf"
#: A spool file no queued job names is left alone this long (another instance's commit).
SWEEP_AFTER_S = 600.0


class SpoolError(Dp2Error):
    """A rendered letter is not in the spool as its job says (lost or damaged on disk)."""

    reason_code = "PRINT_FILE_MISSING"
    hint = (
        "The connector's data folder lost or changed the rendered letter; restore it from "
        "a backup, or re-drive the message after removing its job from print.sqlite."
    )


class Spooled(NamedTuple):
    """A rendered letter in the spool: its file name, size and SHA-256 (hex)."""

    name: str
    size: int
    sha256: str


class Spool:
    """The two folders of the module docstring, under the connector's ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self._host = socket.gethostname()
        self._all_documents = data_dir / "documents"
        self.documents = FileBlobStore(self._all_documents / f"{self._host}-{os.getpid()}")
        self._letters = data_dir / "spool"

    # --- documents -------------------------------------------------------------------
    def document(self, file: File) -> bytes | Path:
        """A received file's bytes if inline, else the path of its checked plaintext."""
        content = file.content
        if not isinstance(content, BlobContent) or not documents.is_kept(file):
            return documents.read(file, None)  # inline, or BLOB_MISSING for one never opened
        for _ in documents.chunks(file, self.documents):  # BLOB_CORRUPT unless it is whole
            pass
        return self.documents.path_of(content.ref)

    def clear_documents(self) -> None:
        """Delete every decrypted document (the connector holds one letter at a time)."""
        shutil.rmtree(self.documents.root, ignore_errors=True)

    # --- rendered letters ------------------------------------------------------------
    def path(self, message_uuid: str) -> Path:
        """Where the rendered letter of ``message_uuid`` lies (UnsafePathError for a bad UUID)."""
        return inside(self._letters, uuid_file_name(message_uuid, PDF_SUFFIX))

    def write(self, message_uuid: str, fill: Callable[[BinaryIO], _T]) -> tuple[Spooled, _T]:
        """Write the letter of ``message_uuid`` with ``fill(file)``, durably (see above)."""
        name = uuid_file_name(message_uuid, PDF_SUFFIX)
        private_dir(self._letters)
        target, result = write_whole(self._letters, name, fill, private=True)
        fsync_dir(self._letters)
        size, digest = _measure(target)
        return Spooled(target.name, size, digest), result

    def check(self, message_uuid: str, sha256: str) -> Path:
        """The letter's path once its bytes are still the ones rendered (SpoolError else)."""
        path = self.path(message_uuid)
        try:
            _, digest = _measure(path)
        except FileNotFoundError:
            raise SpoolError(f"the rendered letter {path.name} is not in {path.parent}") from None
        if digest != sha256:
            raise SpoolError(
                f"the rendered letter {path.name} is not the one rendered (SHA-256 differs)",
                reason_code="PRINT_FILE_CORRUPT",
            )
        return path

    def remove(self, message_uuid: str) -> None:
        """The provider has it: the plaintext goes."""
        self.path(message_uuid).unlink(missing_ok=True)

    def sweep(self, kept: Iterable[str], now: float | None = None) -> list[str]:
        """Delete the spool's files but the ``kept`` names (queued jobs' letters) and the
        young ones, and the decrypted documents of this host's ended processes; the
        names deleted."""
        self.clear_documents()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._all_documents):
                host, _, pid = entry.name.rpartition("-")
                if host == self._host and pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(entry.path, ignore_errors=True)
        keep = set(kept)
        old = (time.time() if now is None else now) - SWEEP_AFTER_S
        gone: list[str] = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._letters):
                if (
                    entry.name not in keep
                    and entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < old
                ):
                    os.unlink(entry.path)
                    gone.append(entry.name)
        return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _measure(path: Path) -> tuple[int, str]:
    """Size and SHA-256 (hex) of the file at ``path``, read a piece at a time."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while piece := handle.read(_PIECE):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


__all__ = ["PDF_SUFFIX", "Spool", "SpoolError", "Spooled"]
