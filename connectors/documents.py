"""The documents of a received message: inline bytes, or kept in the receiver's own store.

Why it exists: a receiver that keeps a plaintext store of its own (the reference
mailbox: a private folder next to its SQLite) hands it to connectors.delivery, which
then decrypts each blob-stored document a chunk at a time into that store
(brokers.security.sealing.open_envelope ``documents``) instead of into memory. In
the plain envelope such a file's content is a ``BlobContent`` *without a nonce*: the
ref, SHA-256 and size of its plaintext in that store. Every other file is
``InlineContent``, as before. Whoever reads a received document goes through here
and need not care which it is:

- :func:`chunks` streams it, checked against its size before the first piece and its
  SHA-256 before the last (``BLOB_CORRUPT``), so a reader never gets all of a
  changed file — for HTTP responses and copies to disk;
- :func:`read` gives it whole, for small files and renderers that need bytes;
- :func:`size_of` says how large it is without reading it.

A kept file without its store is ``BLOB_MISSING`` (brokers.runtime.blobstore).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from brokers.runtime.blobstore import BlobMissingError, BlobStore, verified_chunks
from schemas.models import BlobContent, File, InlineContent


def is_kept(file: File) -> bool:
    """True when the file's plaintext is in the receiver's store, not in the envelope."""
    return isinstance(file.content, BlobContent) and file.nonce is None


def size_of(file: File) -> int:
    """The document's size in bytes (its plaintext: the file must be opened)."""
    content = file.content
    return content.size if isinstance(content, BlobContent) else len(content.data)


def chunks(file: File, documents: BlobStore | None) -> Iterator[bytes]:
    """The document's bytes in pieces, checked as they are read (see the module docstring)."""
    content = file.content
    if isinstance(content, InlineContent):
        return iter((content.data,))
    if documents is None or file.nonce is not None:
        raise BlobMissingError(
            f"file {file.filename!r} is not in a store this reader has",
            hint="Read a received message's documents with the receiver's own store.",
        )
    return verified_chunks(documents, content.ref, content.sha256, content.size)


def read(file: File, documents: BlobStore | None) -> bytes:
    """The document's bytes whole (small files; big ones stream with :func:`chunks`)."""
    content = file.content
    if isinstance(content, InlineContent):
        return content.data
    whole = io.BytesIO()
    for piece in chunks(file, documents):
        whole.write(piece)
    return whole.getvalue()
