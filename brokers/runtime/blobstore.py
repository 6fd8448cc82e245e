"""Blob store for the claim check: large documents travel beside Kafka, not through it.

Why it exists: a message may carry up to 99.5 MB of documents, far above what a
Kafka record should hold. Above a threshold, brokers.security puts the *encrypted*
file into a blob store and the envelope carries only ``BlobContent(ref, sha256,
size)``. The store never sees plaintext, so it needs no access control beyond
availability, and a wrong or damaged blob is caught by the SHA-256 in the signed
envelope (``BLOB_CORRUPT`` in brokers.security) rather than here.

The seam is the small :class:`BlobStore` protocol. :class:`FileBlobStore` is the
default (a folder, shared by the services of one deployment);
:class:`MemoryBlobStore` keeps blobs in a dict for tests and single-process tools.

Blobs are ciphertext, yet they are kept like the stores: files 0600 in folders made
0700 (brokers.runtime.private), so other local users cannot even list them.

References are content addresses, ``sha256:<64 lowercase hex>`` of the stored
bytes, so ``put`` is idempotent and two services agree on a name without talking.

Large blobs stream: ``put_chunks`` stores an iterable of pieces (the sealer encrypts
a chunk at a time straight into it), ``size`` is what the store holds without reading
it, and ``chunks`` reads a blob in pieces of ``READ_SIZE``; :func:`held` measures a
blob's size and SHA-256 that way, and :func:`verified_chunks` streams a blob whose
size and SHA-256 are known, holding its last piece back until the digest matches
(``BLOB_CORRUPT`` otherwise), so a reader never gets all of a changed blob. Nothing
here reads a whole blob into memory but ``get``, which is for small blobs and tools.

A receiver may keep its *plaintext* documents in a store of its own with the same
seam (the reference mailbox does, in a private folder next to its SQLite:
connectors.mailbox); the deployment's shared store holds ciphertext only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from brokers.runtime.private import FILE_MODE, private_dir
from schemas.errors import Dp2Error

_REF = re.compile(r"sha256:([0-9a-f]{64})")
REF_PREFIX: Final = "sha256:"
#: How many bytes ``chunks`` reads at a time (a few per MB of blob, little memory).
READ_SIZE: Final = 1024 * 1024


class BlobMissingError(Dp2Error):
    """No blob under this reference (never stored, deleted, or not a reference at all)."""

    reason_code = "BLOB_MISSING"
    hint = (
        "Make the sender and the reader share one blob store (DP2_HOME/blobs), "
        "and keep blobs until every message that references them is delivered."
    )


class BlobCorruptError(Dp2Error):
    """A blob that is not the size or SHA-256 it should be (damaged or substituted)."""

    reason_code = "BLOB_CORRUPT"
    hint = "The store holds damaged or substituted bytes; have the sender resend."


def blob_ref(data: bytes) -> str:
    """The content address of `data`: ``sha256:`` and the lowercase hex digest."""
    return REF_PREFIX + hashlib.sha256(data).hexdigest()


def _digest_of(ref: str) -> str:
    match = _REF.fullmatch(ref)
    if match is None:
        raise BlobMissingError(
            "the blob reference is not of the form sha256:<64 lowercase hex digits>",
            hint="Use the reference exactly as BlobStore.put returned it.",
        )
    return match.group(1)


class BlobStore(Protocol):
    """Where encrypted documents above the claim-check threshold are kept."""

    def put(self, data: bytes) -> str:
        """Store `data` (idempotent) and return its reference."""
        ...

    def get(self, ref: str) -> bytes:
        """The bytes stored under `ref`; raises BlobMissingError (BLOB_MISSING)."""
        ...

    def put_chunks(self, chunks: Iterable[bytes]) -> str:
        """Store the concatenation of `chunks` (idempotent) without joining them; its ref."""
        ...

    def size(self, ref: str) -> int:
        """How many bytes are stored under `ref`, without reading them (BLOB_MISSING)."""
        ...

    def chunks(self, ref: str) -> Iterator[bytes]:
        """The bytes under `ref` in pieces of at most READ_SIZE; BLOB_MISSING raised at once."""
        ...


def held(store: BlobStore, ref: str) -> tuple[int, bytes]:
    """(size, SHA-256 digest) of what `store` holds under `ref`, read a piece at a time."""
    digest = hashlib.sha256()
    size = 0
    for piece in store.chunks(ref):
        digest.update(piece)
        size += len(piece)
    return size, digest.digest()


def verified_chunks(store: BlobStore, ref: str, sha256: bytes, size: int) -> Iterator[bytes]:
    """The blob `ref` in pieces, checked against its `size` (before the first piece) and
    `sha256` (before the last): BlobCorruptError where it differs, BLOB_MISSING at once."""
    if store.size(ref) != size:
        raise BlobCorruptError(f"the blob {ref} is not the {size:,} bytes it should be")
    return _verified(store.chunks(ref), ref, sha256)


def _verified(pieces: Iterator[bytes], ref: str, sha256: bytes) -> Iterator[bytes]:
    digest = hashlib.sha256()
    held_back: bytes | None = None
    for piece in pieces:
        digest.update(piece)
        if held_back is not None:
            yield held_back
        held_back = piece
    if not hmac.compare_digest(digest.digest(), sha256):
        raise BlobCorruptError(f"the blob {ref} does not match its SHA-256")
    if held_back:
        yield held_back


class FileBlobStore:
    """Blobs as files under `root`, fanned out by the first two hex digits of the digest.

    ``root/ab/abcdef...`` holds the blob ``sha256:abcdef...``. A blob is written to a
    temporary file in the same folder, flushed to disk and renamed into place, so a
    reader never sees half a blob and a crash leaves at most a stray ``.tmp`` file.
    The blob is durable before ``put`` returns: the sender publishes the envelope
    that references it right after.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_of(self, ref: str) -> Path:
        """Where the blob `ref` lives (or would live) on disk."""
        digest = _digest_of(ref)
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        ref = blob_ref(data)
        path = self.path_of(ref)
        try:
            if path.stat().st_size == len(data):
                return ref  # same address and size: the same bytes are already there
        except FileNotFoundError:
            pass
        private_dir(path.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), FILE_MODE)  # mkstemp's 0600, whatever the umask
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return ref

    def get(self, ref: str) -> bytes:
        try:
            return self.path_of(ref).read_bytes()
        except FileNotFoundError:
            raise BlobMissingError(f"no blob {ref} in {self.root}") from None

    def put_chunks(self, chunks: Iterable[bytes]) -> str:
        """Written to a temporary file while hashed, then renamed to its address."""
        private_dir(self.root)
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming.", suffix=".tmp", dir=self.root)
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as handle:
                os.fchmod(handle.fileno(), FILE_MODE)
                for piece in chunks:
                    digest.update(piece)
                    handle.write(piece)
                handle.flush()
                os.fsync(handle.fileno())
            ref = REF_PREFIX + digest.hexdigest()
            path = self.path_of(ref)
            private_dir(path.parent)
            os.replace(tmp, path)  # the same address holds the same bytes: replacing is safe
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return ref

    def size(self, ref: str) -> int:
        try:
            return self.path_of(ref).stat().st_size
        except FileNotFoundError:
            raise BlobMissingError(f"no blob {ref} in {self.root}") from None

    def chunks(self, ref: str) -> Iterator[bytes]:
        try:
            handle = self.path_of(ref).open("rb")
        except FileNotFoundError:
            raise BlobMissingError(f"no blob {ref} in {self.root}") from None
        return _read_pieces(handle)


class MemoryBlobStore:
    """Blobs in a dict: for tests and tools that seal and open in one process."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        ref = blob_ref(data)
        self._blobs[ref] = bytes(data)
        return ref

    def get(self, ref: str) -> bytes:
        _digest_of(ref)
        try:
            return self._blobs[ref]
        except KeyError:
            raise BlobMissingError(f"no blob {ref} in this in-memory store") from None

    def put_chunks(self, chunks: Iterable[bytes]) -> str:
        return self.put(b"".join(chunks))

    def size(self, ref: str) -> int:
        return len(self.get(ref))

    def chunks(self, ref: str) -> Iterator[bytes]:
        data = memoryview(self.get(ref))
        return (bytes(data[i : i + READ_SIZE]) for i in range(0, max(len(data), 1), READ_SIZE))


def _read_pieces(handle: BinaryIO) -> Iterator[bytes]:
    with handle:
        while piece := handle.read(READ_SIZE):
            yield piece


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
