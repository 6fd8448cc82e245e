"""Issue 15, big input: the pure parts behind tests/integration/test_big_input.py.

The chunked file format, blob stores that stream, the claim check held to what the
store holds, the header budget, the bounded certificate cache, MeMo read from a file
with its base64 decoded as it streams, and request bodies refused as they stream in.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from brokers.runtime import headers
from brokers.runtime.blobstore import (
    READ_SIZE,
    BlobCorruptError,
    BlobMissingError,
    BlobStore,
    FileBlobStore,
    MemoryBlobStore,
    blob_ref,
    held,
    verified_chunks,
)
from brokers.runtime.lru import Lru
from brokers.security import sealing, signing, streaming
from brokers.security.pseudonyms import Pseudonymizer
from brokers.security.signing import SecurityError
from brokers.validator import blobs as held_blobs
from brokers.validator.rules import MAX_AUTHORITY_BYTES, Rejection, check_limits
from connectors import documents
from connectors.bodies import BodyTooLargeError, read_limited, spool
from connectors.sdk import Document, build_message
from schemas import memo
from schemas.errors import Dp2Error
from schemas.models import BlobContent, Envelope, File
from schemas.vocabulary import MESSAGE_UUID_HEADER, SIGNER_CERT_HEADER, TRACEPARENT_HEADER

KEY = AESGCM.generate_key(bit_length=256)
NONCE = os.urandom(12)
AAD = b"aad"
CHUNK = streaming.CHUNK_SIZE
PROVIDER = x25519.X25519PrivateKey.generate()
PSEUDONYMS = Pseudonymizer(b"unit-test-pseudonym-key-32-bytes")


# --- the chunked format ----------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
def test_chunked_files_round_trip_in_pieces_of_any_size(size: int) -> None:
    """A file encrypts to the size the format says and decrypts back from pieces of
    any length, and plaintext_size inverts ciphertext_size."""
    plaintext = os.urandom(size)
    ciphertext = streaming.encrypt(KEY, NONCE, plaintext, AAD)
    assert len(ciphertext) == streaming.ciphertext_size(size)
    assert streaming.plaintext_size(len(ciphertext), streaming.CHUNKED) == size
    for piece in (1000, CHUNK + 16, 1 << 20):
        pieces = [ciphertext[i : i + piece] for i in range(0, len(ciphertext), piece)]
        opened = streaming.decrypt_chunks(KEY, NONCE, pieces, AAD, streaming.CHUNKED)
        assert b"".join(opened) == plaintext


def test_a_chunked_file_cut_reordered_or_changed_does_not_decrypt() -> None:
    """Cut at a chunk boundary, two chunks swapped, a flipped byte or another AAD each
    raise ChunkError."""
    ciphertext = streaming.encrypt(KEY, NONCE, os.urandom(3 * CHUNK), AAD)
    piece = CHUNK + streaming.TAG_SIZE
    first, second, third = (ciphertext[i * piece : (i + 1) * piece] for i in range(3))
    flipped = bytearray(ciphertext)
    flipped[piece + 5] ^= 1
    for bad, aad in (
        (first + second, AAD),  # the new last chunk was not sealed as the last
        (second + first + third, AAD),
        (bytes(flipped), AAD),
        (ciphertext, b"other"),
        (ciphertext + streaming.encrypt(KEY, NONCE, b"", AAD), AAD),
    ):
        with pytest.raises(streaming.ChunkError):
            b"".join(streaming.decrypt_chunks(KEY, NONCE, [bad], aad, streaming.CHUNKED))


def test_a_one_shot_file_of_the_old_format_still_decrypts_in_pieces() -> None:
    """AES-256-GCM over a whole file (the format before chunks) decrypts streamed, and a
    changed tag raises ChunkError."""
    plaintext = os.urandom(2 * CHUNK + 3)
    ciphertext = AESGCM(KEY).encrypt(NONCE, plaintext, AAD)
    pieces = [ciphertext[i : i + 7000] for i in range(0, len(ciphertext), 7000)]
    assert b"".join(streaming.decrypt_chunks(KEY, NONCE, pieces, AAD, "AES-256-GCM")) == plaintext
    with pytest.raises(streaming.ChunkError):
        b"".join(streaming.decrypt_chunks(KEY, NONCE, [ciphertext[:-1] + b"x"], AAD, "AES-256-GCM"))


# --- blob stores that stream -----------------------------------------------------------------
@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Each blob store implementation."""
    return FileBlobStore(tmp_path / "blobs") if request.param == "file" else MemoryBlobStore()


def test_blobs_stream_in_and_out(store: BlobStore) -> None:
    """put_chunks stores what put stores, under the same ref; size and held read the
    stored bytes without get; a missing blob is BLOB_MISSING at once."""
    data = os.urandom(3 * 1024 * 1024 + 5)
    pieces = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    ref = store.put_chunks(iter(pieces))
    assert ref == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.size(ref) == len(data)
    assert b"".join(store.chunks(ref)) == data
    assert held(store, ref) == (len(data), hashlib.sha256(data).digest())
    missing = "sha256:" + "0" * 64
    for call in (store.size, store.chunks):
        with pytest.raises(BlobMissingError):
            call(missing)


# --- sealing and opening large files ---------------------------------------------------------
def big_letter(size: int) -> Envelope:
    return build_message(
        sender_cvr="29189846",
        sender_label="Aarhus Kommune",
        recipient_id="0101901234",
        label="Stor sag",
        documents=[Document("sag.pdf", "application/pdf", os.urandom(size))],
    )


def seal(plain: Envelope, store: BlobStore) -> Envelope:
    return sealing.seal_envelope(plain, PROVIDER.public_key(), "kid", PSEUDONYMS, store)


def blob_of(envelope: Envelope) -> BlobContent:
    content = sealing.files_of(envelope.body)[0].content
    assert isinstance(content, BlobContent)
    return content


def test_a_large_file_is_sealed_chunked_into_the_store_and_opens(store: BlobStore) -> None:
    """A 2 MB document goes to the store as the chunked ciphertext it claims (size and
    SHA-256) and opens back exactly."""
    plain = big_letter(2_000_000)
    sealed = seal(plain, store)
    assert sealed.encryption is not None
    assert sealed.encryption.contentAlgorithm == streaming.CHUNKED
    blob = blob_of(sealed)
    assert blob.size == streaming.ciphertext_size(2_000_000) == store.size(blob.ref)
    assert held(store, blob.ref) == (blob.size, blob.sha256)
    opened = sealing.open_envelope(sealed, PROVIDER, store)
    assert sealing.files_of(opened.body)[0] == sealing.files_of(plain.body)[0]


def test_an_envelope_sealed_in_the_one_shot_format_still_opens(store: BlobStore) -> None:
    """A file sealed as one AES-256-GCM message (before chunks), inline or in the store,
    opens as it did."""
    plain = big_letter(700_000)
    sealed = seal(plain, store)
    assert sealed.encryption is not None
    key = sealing.unwrap_content_key(sealed.encryption, PROVIDER, sealed.header.messageUUID)
    binding = sealing._binding(sealed.header)
    document = sealing.files_of(plain.body)[0].content.data  # type: ignore[union-attr]

    def one_shot(index: int, file: File) -> File:
        assert file.nonce is not None
        aad = sealing._file_aad(binding, index, streaming.ONE_SHOT)
        ciphertext = AESGCM(key).encrypt(file.nonce, document, aad)
        ref = store.put(ciphertext)
        digest = hashlib.sha256(ciphertext).digest()
        content = BlobContent(ref=ref, sha256=digest, size=len(ciphertext))
        return dataclasses.replace(file, content=content)

    old = dataclasses.replace(
        sealed,
        body=sealing.map_files(sealed.body, one_shot),
        encryption=dataclasses.replace(sealed.encryption, contentAlgorithm="AES-256-GCM"),
    )
    opened = sealing.open_envelope(old, PROVIDER, store)
    assert sealing.files_of(opened.body)[0] == sealing.files_of(plain.body)[0]


def test_a_blob_changed_in_the_store_is_blob_corrupt_when_opened(tmp_path: Path) -> None:
    """Bytes changed under a blob's name, or cut short, are BLOB_CORRUPT at the mailbox,
    not a decryption failure; nothing is returned."""
    store = FileBlobStore(tmp_path / "blobs")
    sealed = seal(big_letter(1_000_000), store)
    path = store.path_of(blob_of(sealed).ref)
    original = path.read_bytes()
    for damaged in (original[:100] + bytes([original[100] ^ 1]) + original[101:], original[:-1]):
        path.write_bytes(damaged)
        with pytest.raises(SecurityError) as caught:
            sealing.open_envelope(sealed, PROVIDER, store)
        assert caught.value.reason_code == "BLOB_CORRUPT"


def test_a_blob_opens_a_chunk_at_a_time_into_the_receivers_own_store(tmp_path: Path) -> None:
    """Given a receiver's store, a blob-stored file opens into it, named by the ref, SHA-256
    and size of its plaintext (no nonce), and reads back exactly, checked as it streams."""
    shared, kept = FileBlobStore(tmp_path / "blobs"), FileBlobStore(tmp_path / "documents")
    plain = big_letter(1_500_000)
    document = sealing.files_of(plain.body)[0].content.data  # type: ignore[union-attr]
    opened = sealing.open_envelope(seal(plain, shared), PROVIDER, shared, documents=kept)
    [file] = sealing.files_of(opened.body)
    assert file.nonce is None and documents.is_kept(file)
    assert file.content == BlobContent(
        ref=blob_ref(document), sha256=hashlib.sha256(document).digest(), size=len(document)
    )
    assert documents.size_of(file) == len(document)
    assert b"".join(documents.chunks(file, kept)) == document == documents.read(file, kept)
    with pytest.raises(Dp2Error) as caught:
        documents.read(file, None)  # a kept file without its store
    assert caught.value.reason_code == "BLOB_MISSING"


def test_a_changed_blob_leaves_nothing_in_the_receivers_store(tmp_path: Path) -> None:
    """A blob changed in the shared store is BLOB_CORRUPT when opened into a receiver's
    store, and that store holds no file afterwards, not even a temporary one."""
    shared, kept = FileBlobStore(tmp_path / "blobs"), FileBlobStore(tmp_path / "documents")
    sealed = seal(big_letter(1_000_000), shared)
    path = shared.path_of(blob_of(sealed).ref)
    original = path.read_bytes()
    path.write_bytes(original[:-10] + bytes([original[-10] ^ 1]) + original[-9:])
    with pytest.raises(SecurityError) as caught:
        sealing.open_envelope(sealed, PROVIDER, shared, documents=kept)
    assert caught.value.reason_code == "BLOB_CORRUPT"
    assert [p for p in (tmp_path / "documents").rglob("*") if p.is_file()] == []


def test_a_kept_file_changed_is_never_read_whole(tmp_path: Path) -> None:
    """verified_chunks refuses a file of another size at once, and one whose SHA-256 does
    not match before its last piece (BLOB_CORRUPT): a reader never gets all of it."""
    kept = FileBlobStore(tmp_path / "documents")
    data = os.urandom(READ_SIZE * 2 + 10)
    ref = kept.put(data)
    digest = hashlib.sha256(data).digest()
    assert b"".join(verified_chunks(kept, ref, digest, len(data))) == data
    path = kept.path_of(ref)
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    received: list[bytes] = []
    with pytest.raises(BlobCorruptError):
        received.extend(verified_chunks(kept, ref, digest, len(data)))
    assert sum(map(len, received)) == READ_SIZE * 2, "the last piece was held back"
    with pytest.raises(BlobCorruptError):
        verified_chunks(kept, ref, digest, len(data) + 1)


# --- the claim check, held to the store ------------------------------------------------------
def with_blob(sealed: Envelope, **changes: Any) -> Envelope:
    def change(index: int, file: File) -> File:
        assert isinstance(file.content, BlobContent)
        return dataclasses.replace(file, content=dataclasses.replace(file.content, **changes))

    return dataclasses.replace(sealed, body=sealing.map_files(sealed.body, change))


def code_of(envelope: Envelope, store: BlobStore) -> str | None:
    try:
        check_limits(envelope, datetime.now(UTC))
        held_blobs.check_held(envelope, store)
    except Dp2Error as exc:
        return exc.reason_code
    return None


def test_claims_are_held_to_what_the_store_holds(tmp_path: Path) -> None:
    """A negative or malformed claim is BLOB_CLAIM_INVALID, an unknown ref BLOB_MISSING,
    another size or SHA-256 than stored BLOB_CORRUPT; the honest claim passes."""
    store = FileBlobStore(tmp_path / "blobs")
    sealed = seal(big_letter(600_000), store)
    blob = blob_of(sealed)
    other = store.put(b"other bytes")
    assert code_of(sealed, store) is None
    assert code_of(with_blob(sealed, size=-150_000_000), store) == "BLOB_CLAIM_INVALID"
    assert code_of(with_blob(sealed, sha256=b"short"), store) == "BLOB_CLAIM_INVALID"
    assert code_of(with_blob(sealed, ref=other), store) == "BLOB_CLAIM_INVALID"
    absent = hashlib.sha256(b"never stored").digest()
    assert code_of(with_blob(sealed, ref="sha256:" + absent.hex(), sha256=absent), store) == (
        "BLOB_MISSING"
    )
    assert code_of(with_blob(sealed, size=blob.size - 1), store) == "BLOB_CORRUPT"
    path = store.path_of(blob.ref)
    damaged = bytearray(path.read_bytes())
    damaged[10] ^= 1
    path.write_bytes(bytes(damaged))
    assert code_of(sealed, store) == "BLOB_CORRUPT"


class UnreadableStore(MemoryBlobStore):
    """A store that knows sizes but fails every read (a blob over the limit is not read)."""

    def __init__(self, sizes: dict[str, int]) -> None:
        super().__init__()
        self._sizes = sizes

    def size(self, ref: str) -> int:
        return self._sizes[ref]

    def chunks(self, ref: str) -> Iterator[bytes]:
        raise OSError("disk gone")


def test_a_blob_over_the_limit_as_stored_is_refused_unread() -> None:
    """A blob the store holds at 150 MB while its claim says 1 MB is MESSAGE_TOO_LARGE
    from its size alone; a store that cannot be read is retriable, never a rejection."""
    memory = MemoryBlobStore()
    sealed = seal(big_letter(600_000), memory)
    claim = with_blob(sealed, size=1_000_000)
    ref = blob_of(sealed).ref
    assert code_of(claim, UnreadableStore({ref: 150_000_000})) == "MESSAGE_TOO_LARGE"
    with pytest.raises(held_blobs.BlobStoreUnavailableError) as caught:
        held_blobs.check_held(claim, UnreadableStore({ref: 1_000_000}))
    assert caught.value.retriable


def test_the_limit_counts_document_bytes_not_the_chunks_tags() -> None:
    """A blob claim of exactly 99.5 MB of documents in chunked ciphertext passes; one
    byte more is MESSAGE_TOO_LARGE."""
    sealed = seal(big_letter(600_000), MemoryBlobStore())
    at_limit = streaming.ciphertext_size(MAX_AUTHORITY_BYTES)
    check_limits(with_blob(sealed, size=at_limit), datetime.now(UTC))
    with pytest.raises(Rejection) as caught:
        check_limits(
            with_blob(sealed, size=streaming.ciphertext_size(MAX_AUTHORITY_BYTES + 1)),
            datetime.now(UTC),
        )
    assert caught.value.reason_code == "MESSAGE_TOO_LARGE"


# --- the header budget -----------------------------------------------------------------------
def test_the_header_budget_refuses_and_trims() -> None:
    """Over 32 headers is TOO_MANY_HEADERS, over 64 KiB HEADERS_TOO_LARGE; held to the
    budget, DP2's own headers stay first and the rest keeps its order while it fits."""
    own = [(TRACEPARENT_HEADER, b"00-" + b"a" * 50), (MESSAGE_UUID_HEADER, b"u" * 36)]
    with pytest.raises(headers.HeaderBudgetError) as many:
        headers.check([("x", b"")] * 33)
    assert many.value.reason_code == "TOO_MANY_HEADERS"
    with pytest.raises(headers.HeaderBudgetError) as big:
        headers.check([("x", b"a" * (64 * 1024))])
    assert big.value.reason_code == "HEADERS_TOO_LARGE"
    headers.check([*own, (SIGNER_CERT_HEADER, b"c" * 16 * 1024)])
    junk = [("junk", b"j" * (1 << 20)), ("small", b"s"), *[(f"h{i}", b"") for i in range(40)]]
    kept = headers.within_budget([*junk, *own])
    assert kept[:2] == [("small", b"s"), ("h0", b"")] and kept[-2:] == own
    assert len(kept) == headers.MAX_HEADERS and headers.size_of(kept) <= headers.MAX_HEADER_BYTES


# --- the certificate cache -------------------------------------------------------------------
def certificate(extra: int = 0) -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x" + "y" * min(extra, 60))])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.now(UTC) - timedelta(days=1))
        .not_valid_after(datetime.now(UTC) + timedelta(days=1))
    )
    if extra:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.9"), b"z" * extra),
            critical=False,
        )
    return builder.sign(key, None).public_bytes(Encoding.DER)


def test_signer_certificates_are_bounded_in_size_and_number() -> None:
    """A 20 KB certificate is CERTIFICATE_TOO_LARGE unparsed; 300 distinct ones leave at
    most CERTIFICATE_CACHE_SIZE parsed, and one seen again comes from the cache."""
    with pytest.raises(SecurityError) as caught:
        signing.load_certificate_der(certificate(extra=20_000))
    assert caught.value.reason_code == "CERTIFICATE_TOO_LARGE"
    ders = [certificate() for _ in range(signing.CERTIFICATE_CACHE_SIZE + 44)]
    parsed = [signing.load_certificate_der(der) for der in ders]
    assert len(signing._certificates) == signing.CERTIFICATE_CACHE_SIZE
    assert signing.load_certificate_der(ders[-1]) is parsed[-1]
    assert parsed[0].fingerprint(hashes.SHA256()) == hashlib.sha256(ders[0]).digest()


def test_the_lru_evicts_the_least_recently_used() -> None:
    """A read refreshes an entry; a put over the bound evicts the oldest."""
    cache: Lru[str, int] = Lru(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and len(cache) == 2


# --- MeMo read from a file, its base64 decoded as it streams ----------------------------------
def memo_with(data: bytes, wrap: int | None = None) -> bytes:
    message = big_letter(1)
    file = sealing.files_of(message.body)[0]
    xml = memo.to_xml(message)
    old = base64.b64encode(file.content.data)  # type: ignore[union-attr]
    new = base64.b64encode(data)
    if wrap:
        new = b"\n".join(new[i : i + wrap] for i in range(0, len(new), wrap))
    return xml.replace(old, new)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 100_000, 300_001])
def test_memo_parsed_from_a_file_equals_memo_parsed_from_bytes(size: int) -> None:
    """Read from a file in pieces, with or without line breaks in its base64, a MeMo
    message gives the same envelope as from bytes, and to_xml_chunks gives to_xml."""
    data = os.urandom(size)
    for wrap in (None, 76):
        xml = memo_with(data, wrap)
        now = datetime.now(UTC)  # the clock of this test, not of the module's import
        from_file = memo.parse_and_validate(io.BytesIO(xml), now=now)
        assert from_file == memo.parse_and_validate(xml, now=now)
        assert sealing.files_of(from_file.body)[0].content.data == data  # type: ignore[union-attr]
        assert b"".join(memo.to_xml_chunks(from_file)) == memo.to_xml(from_file)


@pytest.mark.parametrize("text", ["QQ==QUFB", "QU!B", "QR==", "QUFBQQ", "Q===", "QUFB\u00e6"])
def test_bad_base64_in_a_streamed_memo_is_memo_invalid_value(text: str) -> None:
    """Padding before the end, a stray character, non-canonical pad bits or a cut quantum
    are MEMO_INVALID_VALUE at the file's content, as check() finds them."""
    xml = memo_with(b"AAA").replace(base64.b64encode(b"AAA"), text.encode())
    with pytest.raises(memo.MemoError) as caught:
        memo.parse(io.BytesIO(xml))
    codes = {(v.code, v.path) for v in caught.value.violations}
    assert codes == {(v.code, v.path) for v in memo.check(xml)}
    assert any(code == "MEMO_INVALID_VALUE" and "content" in path for code, path in codes)


# --- request bodies refused as they stream in ------------------------------------------------
async def test_request_bodies_are_refused_once_over_the_limit(tmp_path: Path) -> None:
    """A body within the limit is spooled to a file (or read) whole; over it, by
    Content-Length or by the count of a chunked body, it is REQUEST_TOO_LARGE."""

    async def spooled(request: web.Request) -> web.Response:
        try:
            with await spool(request, 1000, tmp_path) as body:
                return web.json_response({"sha": hashlib.sha256(body.read()).hexdigest()})
        except BodyTooLargeError as exc:
            return web.json_response({"reasonCode": exc.reason_code}, status=exc.status)

    async def limited(request: web.Request) -> web.Response:
        try:
            return web.json_response({"size": len(await read_limited(request, 1000))})
        except BodyTooLargeError as exc:
            return web.json_response({"reasonCode": exc.reason_code}, status=exc.status)

    async def chunked(size: int) -> Iterator[bytes]:  # type: ignore[misc]
        for _ in range(size // 100):
            yield b"x" * 100

    app = web.Application()
    app.router.add_post("/spool", spooled)
    app.router.add_post("/read", limited)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for path in ("/spool", "/read"):
            ok = await client.post(path, data=b"a" * 1000)
            assert ok.status == 200
            for body in (b"a" * 1001, chunked(5000)):
                refused = await client.post(path, data=body)
                assert refused.status == 413
                assert (await refused.json())["reasonCode"] == "REQUEST_TOO_LARGE"
    assert list(tmp_path.iterdir()) == [], "nothing is left behind"
