"""The claim check, held to what the blob store holds: the validator's one read of the store.

Why it exists: an envelope's ``BlobContent`` only *claims* a size and a SHA-256. The
limits in brokers.validator.rules add up those claims; here the same limit is held to
what the store really has, and every claim to its blob, before anything is accepted:

| code | what was wrong |
|---|---|
| BLOB_MISSING | no blob under a file's ref in this deployment's store (DP2_HOME/blobs) |
| MESSAGE_TOO_LARGE | the blobs as stored (plus the inline files) are over the sender's limit |
| BLOB_CORRUPT | a stored blob's size or SHA-256 is not the one its file claims |
| BLOB_STORE_UNAVAILABLE | the store could not be read (retried, never a rejection) |

Sizes come from the store without reading a blob (``BlobStore.size``), so a blob far
over the limit is refused unread; only blobs within it are hashed, a piece at a time
(``blobstore.held``), so memory stays flat whatever size a blob is. The signature
has been checked by then, so only a signed sender can make the validator read.
"""

from __future__ import annotations

import hmac

from brokers.runtime.blobstore import BlobMissingError, BlobStore, held
from brokers.security import sealing
from brokers.validator.rules import document_size, reject, size_limit, too_large
from schemas.errors import Dp2Error
from schemas.models import BlobContent, Envelope, File, InlineContent


class BlobStoreUnavailableError(Dp2Error):
    """The blob store could not be read just now (a full or failing disk, a lost mount)."""

    retriable = True
    reason_code = "BLOB_STORE_UNAVAILABLE"
    hint = "Operators: check DP2_HOME/blobs (mounted, readable); the record is retried."


def check_held(envelope: Envelope, store: BlobStore) -> None:
    """Raise a Rejection unless every blob-stored file is in `store` exactly as claimed
    and the documents, as stored, are within the sender's limit."""
    files = sealing.files_of(envelope.body)
    blobs = [f.content for f in files if isinstance(f.content, BlobContent)]
    if not blobs:
        return
    try:
        stored = {blob.ref: _size(store, blob.ref) for blob in blobs}
        total = sum(
            document_size(
                stored[f.content.ref] if isinstance(f.content, BlobContent) else _inline(f),
                envelope,
            )
            for f in files
        )
        limit = size_limit(envelope)
        if total > limit:  # refused unread, however large the blobs are
            raise too_large(total, limit)
        for index, file in enumerate(files):
            blob = file.content
            if not isinstance(blob, BlobContent):
                continue
            if stored[blob.ref] != blob.size:
                raise _corrupt(index, f"holds {stored[blob.ref]:,} bytes, not {blob.size:,}")
            size, digest = held(store, blob.ref)
            if size != blob.size or not hmac.compare_digest(digest, blob.sha256):
                raise _corrupt(index, "holds bytes with another SHA-256 than claimed")
    except OSError as exc:
        raise BlobStoreUnavailableError(f"the blob store could not be read: {exc}") from exc


def _size(store: BlobStore, ref: str) -> int:
    try:
        return store.size(ref)
    except BlobMissingError as exc:
        raise reject(
            "BLOB_MISSING",
            f"no blob {ref[:71]} is in this deployment's blob store",
            "Send through the DP2 SDK with the deployment's blob store (DP2_HOME/blobs); "
            "the blob must be stored before the envelope that references it is sent.",
        ) from exc


def _inline(file: File) -> int:
    assert isinstance(file.content, InlineContent)  # noqa: S101 - the union has two members
    return len(file.content.data)


def _corrupt(index: int, problem: str) -> Dp2Error:
    return reject(
        "BLOB_CORRUPT",
        f"the blob store's blob for file {index} {problem}",
        "Store the encrypted file again and send a new message that claims its real "
        "size and SHA-256 (the DP2 SDK does both).",
    )
