"""Opening one sealed file: its plaintext inline, or a chunk at a time into a store.

Why it exists apart from brokers.security.sealing: opening a file is where a big
document either costs its size in memory or does not. sealing.open_envelope unwraps
the content key and derives each file's associated data; this module turns one
sealed file into plaintext with that key, in one of two ways:

- :func:`open_bytes`: the whole plaintext (inline files, and blob-stored files for
  a receiver that keeps its post in memory or in one record);
- :func:`open_into`: a blob-stored file decrypted a chunk at a time into the
  receiver's own plaintext store (``documents``), where it stays by reference.

Either way the blob's size is checked before it is read and its SHA-256 as it is
read; a blob whose chunks stop decrypting is read to its end, so that damaged or
substituted bytes are BLOB_CORRUPT and only authentic ones that do not open
DECRYPTION_FAILED. Nothing unverified leaves here: :func:`open_bytes` returns only
after the last check, and :func:`open_into` lets the store rename its temporary file
to the plaintext's address only when every check held (a failure raises inside
``put_chunks``, which then removes the temporary file).
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Iterator
from dataclasses import dataclass

from brokers.runtime.blobstore import REF_PREFIX, BlobStore
from brokers.security import streaming
from brokers.security.signing import SecurityError
from schemas.models import BlobContent, File, InlineContent


@dataclass(frozen=True, slots=True)
class FileKey:
    """What opening one file needs besides the file: its key, AAD, slot and blob store."""

    key: bytes
    aad: bytes
    algorithm: str
    index: int
    blob_store: BlobStore


def open_bytes(source: FileKey, file: File) -> bytes:
    """The whole plaintext of one sealed file, its ciphertext read in pieces."""
    assert file.nonce is not None  # noqa: S101 - open_envelope checked
    content = file.content
    if isinstance(content, InlineContent):
        try:
            return streaming.decrypt(
                source.key, file.nonce, content.data, source.aad, source.algorithm
            )
        except streaming.ChunkError:
            raise undecryptable(not_decrypting(f"file {source.index}")) from None
    plaintext = io.BytesIO()
    for chunk in _blob_plaintext(source, file, content):
        plaintext.write(chunk)
    return plaintext.getvalue()


def open_into(source: FileKey, file: File, documents: BlobStore) -> BlobContent:
    """A blob-stored file's plaintext put into `documents` a chunk at a time: the ref,
    SHA-256 and size of the plaintext there."""
    content = file.content
    assert isinstance(content, BlobContent) and file.nonce is not None  # noqa: S101 - callers
    size = 0

    def counted() -> Iterator[bytes]:
        nonlocal size
        for chunk in _blob_plaintext(source, file, content):
            size += len(chunk)
            yield chunk

    ref = documents.put_chunks(counted())
    return BlobContent(ref=ref, sha256=bytes.fromhex(ref.removeprefix(REF_PREFIX)), size=size)


def _blob_plaintext(source: FileKey, file: File, content: BlobContent) -> Iterator[bytes]:
    """The plaintext of a blob-stored file a chunk at a time; raises before its end
    (BLOB_CORRUPT, DECRYPTION_FAILED) unless the whole blob was authentic."""
    assert file.nonce is not None  # noqa: S101 - callers checked
    index, store = source.index, source.blob_store
    if store.size(content.ref) != content.size:
        raise corrupt(index, content.ref)
    digest = hashlib.sha256()

    def pieces() -> Iterator[bytes]:
        for piece in store.chunks(content.ref):
            digest.update(piece)
            yield piece

    stream = pieces()
    try:
        yield from streaming.decrypt_chunks(
            source.key, file.nonce, stream, source.aad, source.algorithm
        )
    except streaming.ChunkError:
        for _ in stream:  # the rest, hashed: corrupt bytes, or an authentic blob that fails
            pass
        if not hmac.compare_digest(digest.digest(), content.sha256):
            raise corrupt(index, content.ref) from None
        raise undecryptable(not_decrypting(f"file {index}")) from None
    if not hmac.compare_digest(digest.digest(), content.sha256):
        raise corrupt(index, content.ref)


def corrupt(index: int, ref: str) -> SecurityError:
    return SecurityError(
        f"the blob of file {index} ({ref}) does not match its size and SHA-256",
        reason_code="BLOB_CORRUPT",
        hint="The blob store holds damaged or substituted bytes; have the sender resend.",
    )


def not_decrypting(what: str) -> str:
    return f"the {what} does not decrypt: wrong key, or the ciphertext or its header changed"


def undecryptable(message: str) -> SecurityError:
    return SecurityError(
        message,
        reason_code="DECRYPTION_FAILED",
        hint=(
            "Open with the private key of the provider named in Encryption.recipientKeyId; "
            "if that is right, the envelope was changed after sealing and must be resent."
        ),
    )
