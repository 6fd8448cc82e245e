"""The chunked file format: documents encrypted and decrypted a chunk at a time.

Why it exists: a sealed file used to be one AES-256-GCM message over the whole
document (``AES-256-GCM``), so sealing a 99.5 MB letter held its ciphertext in memory
next to its plaintext, and opening one had to read the whole blob before the tag could
be checked. Envelopes sealed now name :data:`CHUNKED` as their ``contentAlgorithm``:

- The plaintext is cut into chunks of :data:`CHUNK_SIZE` (64 KiB); every chunk but the
  last is full, and the last holds 1..64 KiB (0 bytes only when the whole file is
  empty: then it is the only chunk). Each chunk is AES-256-GCM under the message's
  content key, so the ciphertext is the chunks' ``ciphertext || tag`` one after the
  other: ``size = plaintext + 16 * max(1, ceil(plaintext / 64 KiB))``.
- Chunk ``i``'s nonce is the file's random 12-byte ``File.nonce`` XOR
  ``0^7 || be32(i) || last`` (``last`` = 1 on the final chunk, else 0): TLS 1.3's
  per-record nonce with the STREAM construction's final flag, so chunks cannot be
  reordered, dropped, repeated or cut off at a chunk boundary without a tag failing.
- Each chunk's associated data is the file's (brokers.security.sealing: a label of its
  own, ``dp2-file-chunked-v1``, then message UUID, sender, recipient and file index).

Every chunk is authenticated before its plaintext is released, so a reader may write
the plaintext out as it goes; the one that ends early (truncation) fails on its last
chunk. Envelopes sealed before this format (``AES-256-GCM``, one GCM message per file)
still open: :func:`decrypt_chunks` reads them through GCM's incremental interface,
holding back the 16-byte tag, so they too are read a chunk at a time and their
plaintext is released only after the tag is checked.

Pure functions over bytes; the blob store streams in brokers.runtime.blobstore.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: One GCM message per file (envelopes sealed before the chunked format).
ONE_SHOT: Final = "AES-256-GCM"
#: 64 KiB chunks, each its own GCM message (see the module docstring).
CHUNKED: Final = "AES-256-GCM-CHUNKED-64K"
ALGORITHMS: Final = frozenset({ONE_SHOT, CHUNKED})
CHUNK_SIZE: Final = 64 * 1024
TAG_SIZE: Final = 16
NONCE_SIZE: Final = 12
_PIECE: Final = CHUNK_SIZE + TAG_SIZE


class ChunkError(Exception):
    """A ciphertext that does not decrypt: wrong key, changed, reordered or cut off."""


def ciphertext_size(plaintext_size: int, algorithm: str = CHUNKED) -> int:
    """How many bytes `plaintext_size` bytes take once sealed with `algorithm`."""
    if algorithm == ONE_SHOT:
        return plaintext_size + TAG_SIZE
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return plaintext_size + TAG_SIZE * chunks


def plaintext_size(size: int, algorithm: str | None) -> int:
    """The document bytes in `size` bytes of ciphertext of `algorithm` (an unknown
    algorithm, or a size no ciphertext has, counts as it is: limits stay safe)."""
    if algorithm == ONE_SHOT:
        return max(size - TAG_SIZE, 0)
    if algorithm == CHUNKED and size >= TAG_SIZE:
        return size - TAG_SIZE * -(-size // _PIECE)
    return size


def _nonce(base: bytes, index: int, last: bool) -> bytes:
    mask = index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
    return base[:7] + bytes(a ^ b for a, b in zip(base[7:], mask, strict=True))


def encrypt_chunks(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> Iterator[bytes]:
    """The chunked ciphertext of `plaintext`, one encrypted chunk at a time."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"the nonce must be {NONCE_SIZE} bytes")
    aead = AESGCM(key)
    view = memoryview(plaintext)
    count = max(1, -(-len(view) // CHUNK_SIZE))
    for index in range(count):
        chunk = view[index * CHUNK_SIZE : (index + 1) * CHUNK_SIZE]
        yield aead.encrypt(_nonce(nonce, index, index == count - 1), chunk, aad)


def encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """The whole chunked ciphertext (small, inline files)."""
    return b"".join(encrypt_chunks(key, nonce, plaintext, aad))


def decrypt_chunks(
    key: bytes, nonce: bytes, ciphertext: Iterable[bytes], aad: bytes, algorithm: str
) -> Iterator[bytes]:
    """The plaintext of `ciphertext` (read in pieces of any size), a chunk at a time.

    Raises ChunkError where the ciphertext stops being authentic: for CHUNKED, before
    the plaintext of that chunk is yielded; for ONE_SHOT, at the end, having yielded
    unauthenticated plaintext — callers keep it until the iterator is exhausted.
    """
    if len(nonce) != NONCE_SIZE:
        raise ChunkError(f"the nonce is not {NONCE_SIZE} bytes")
    if algorithm == ONE_SHOT:
        return _decrypt_one_shot(key, nonce, ciphertext, aad)
    if algorithm == CHUNKED:
        return _decrypt_chunked(key, nonce, ciphertext, aad)
    raise ChunkError(f"unknown content algorithm {algorithm!r}")


def decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes, algorithm: str) -> bytes:
    """The whole plaintext of a small ciphertext (inline files)."""
    return b"".join(decrypt_chunks(key, nonce, [ciphertext], aad, algorithm))


def _decrypt_chunked(
    key: bytes, nonce: bytes, ciphertext: Iterable[bytes], aad: bytes
) -> Iterator[bytes]:
    aead = AESGCM(key)
    pending = bytearray()
    index = 0

    def opened(piece: bytes, last: bool) -> bytes:
        try:
            return aead.decrypt(_nonce(nonce, index, last), piece, aad)
        except InvalidTag:
            raise ChunkError(f"chunk {index} does not decrypt") from None

    for data in ciphertext:
        pending += data
        start = 0
        # Keep more than a piece back: only the end of the input says which one is last.
        while len(pending) - start > _PIECE:
            yield opened(bytes(pending[start : start + _PIECE]), last=False)
            start += _PIECE
            index += 1
        del pending[:start]
    if len(pending) < TAG_SIZE or (index > 0 and len(pending) == TAG_SIZE):
        raise ChunkError("the ciphertext ends inside a chunk, or with an empty one")
    yield opened(bytes(pending), last=True)


def _decrypt_one_shot(
    key: bytes, nonce: bytes, ciphertext: Iterable[bytes], aad: bytes
) -> Iterator[bytes]:
    decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
    decryptor.authenticate_additional_data(aad)
    tail = b""  # the last 16 bytes seen: the tag, once the input ends
    for data in ciphertext:
        joined = tail + data
        tail = joined[-TAG_SIZE:]
        body = joined[: len(joined) - len(tail)]
        if body:
            yield decryptor.update(body)
    if len(tail) < TAG_SIZE:
        raise ChunkError("the ciphertext is shorter than its tag")
    try:
        yield decryptor.finalize_with_tag(tail)
    except InvalidTag:
        raise ChunkError("the ciphertext does not decrypt") from None
