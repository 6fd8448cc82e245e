"""Sealing an envelope for the recipient's mailbox provider, and opening it there.

Why it exists: the backbone must never see a document or a personal identifier in
clear. Wire choices (changing any of them is a new algorithm name, not an edit):

- A fresh 256-bit content key per message; every file is AES-256-GCM with its own
  random 12-byte nonce (``File.nonce``), in 64 KiB chunks (``contentAlgorithm``
  ``AES-256-GCM-CHUNKED-64K``, brokers.security.streaming), so no file is ever
  held twice or read whole to be sealed or opened; the associated data is a domain
  label, then messageUUID, the header's senderID and recipientID (each a 4-byte
  big-endian length and UTF-8), then the 4-byte file index (main, additional,
  technical documents in order), so a ciphertext is useless in another message,
  for another party, or in another slot. Files above the claim-check threshold are
  encrypted a chunk at a time straight into the blob store (``BlobContent``: ref,
  SHA-256 and size of the ciphertext); opening streams them back, checking size
  and SHA-256 on the way. Envelopes sealed before the chunked format
  (``AES-256-GCM``: one GCM message per file) still open, streamed the same way.
  A receiver that keeps documents in a plaintext store of its own passes it to
  :func:`open_envelope` (``documents``): each blob-stored file is then decrypted a
  chunk at a time into that store and stays there, by reference, instead of being
  inlined (see open_envelope), so no process holds a big document whole.
- Personal data moves into ``sealedPersonalData`` = nonce (12) || AES-GCM of a
  small JSON object, under the same content key and the same header binding:
  ``recipientID``; ``senderID`` unless the sender is a CVR; ``cprData``; and
  ``fields``, every other personal value of the header (names, addresses, e-mail,
  phone, representatives, reply and forward parties: brokers.security.personal)
  by its dotted path. In the clear header every identifier but a CVR number
  (public) is replaced by its keyed pseudonym (brokers.security.pseudonyms), every
  contact detail by ``personal.SEALED``. An identifier of unknown type is treated
  as personal. ``fields`` is left out when there is none, and a header from an
  older sealer without it opens as before.
- Header texts (label, notification) stay in clear whatever ``labelIsSensitive``
  says: the backbone and the notifier need them. Document bytes never do.
- The content key is wrapped for the provider's X25519 key: ephemeral ECDH,
  HKDF-SHA256 (salt = ephemeral public key || provider public key, info =
  ``dp2-key-wrap-v1`` || messageUUID) to a 256-bit KEK, then AES key wrap
  (RFC 3394). Integrity of the whole envelope is the signature's job
  (brokers.security.signing); the AEAD binding only makes ciphertexts unusable out
  of place.

Errors are brokers.security.signing.SecurityError with the reason codes NOT_PLAIN,
DECRYPTION_FAILED, PSEUDONYM_MISMATCH, BLOB_CORRUPT and UNSUPPORTED_KEY; a missing
blob is brokers.runtime.blobstore's BLOB_MISSING. Opening one file (whole, or into a
receiver's plaintext store) is brokers.security.sealed_files.
"""

from __future__ import annotations

import dataclasses
import hmac
import itertools
import json
import os
import struct
from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from brokers.runtime.blobstore import BlobStore
from brokers.security import personal as personal_fields
from brokers.security import sealed_files, streaming
from brokers.security.pseudonyms import Pseudonymizer
from brokers.security.signing import SecurityError
from schemas.models import (
    AdditionalDocument,
    BlobContent,
    CPRdata,
    Encryption,
    Envelope,
    File,
    IdType,
    InlineContent,
    MainDocument,
    MessageBody,
    MessageHeader,
    TechnicalDocument,
)

# --- sealing ------------------------------------------------------------------------
CONTENT_ALGORITHM: Final = streaming.CHUNKED
KEY_WRAP_ALGORITHM: Final = "X25519-HKDF-SHA256-A256KW"
NONCE_SIZE: Final = 12
DEFAULT_BLOB_THRESHOLD: Final = 512 * 1024
_WRAP_INFO: Final = b"dp2-key-wrap-v1"
_FILE_AAD: Final = b"dp2-file-v1"  # one-shot files (streaming.ONE_SHOT)
_CHUNKED_FILE_AAD: Final = b"dp2-file-chunked-v1"
_PERSONAL_AAD: Final = b"dp2-personal-v1"
_undecryptable = sealed_files.undecryptable
_not_decrypting = sealed_files.not_decrypting


def files_of(body: MessageBody | None) -> list[File]:
    """Every file of the body in sealing order: main, additional, then technical documents."""
    if body is None:
        return []
    documents: list[MainDocument | AdditionalDocument | TechnicalDocument] = [
        body.mainDocument,
        *body.additionalDocument,
        *body.technicalDocument,
    ]
    return [f for document in documents for f in document.file]


def map_files(body: MessageBody | None, fn: Callable[[int, File], File]) -> MessageBody | None:
    """The body with each file replaced by ``fn(index, file)``, indexed in sealing order."""
    if body is None:
        return None
    counter = itertools.count()

    def each(files: list[File]) -> list[File]:
        return [fn(next(counter), f) for f in files]

    main = dataclasses.replace(body.mainDocument, file=each(body.mainDocument.file))
    additional = [dataclasses.replace(d, file=each(d.file)) for d in body.additionalDocument]
    technical = [dataclasses.replace(d, file=each(d.file)) for d in body.technicalDocument]
    return dataclasses.replace(
        body, mainDocument=main, additionalDocument=additional, technicalDocument=technical
    )


def seal_envelope(  # noqa: PLR0917 - the SDK passes the six collaborators in this order
    plain: Envelope,
    provider_key: x25519.X25519PublicKey,
    provider_key_id: str,
    pseudonymizer: Pseudonymizer,
    blob_store: BlobStore,
    blob_threshold: int = DEFAULT_BLOB_THRESHOLD,
) -> Envelope:
    """`plain` as it may travel: documents and identifiers encrypted for one provider.

    The result is unsigned; sign it with sign_envelope. A signed plain envelope is
    refused (NOT_PLAIN): a signature over plaintext that travels beside the
    ciphertext would let anyone confirm a guess of the documents.
    """
    _require_plain(plain)
    header, personal = _pseudonymise(plain.header, pseudonymizer)
    content_key = AESGCM.generate_key(bit_length=256)
    aead = AESGCM(content_key)
    binding = _binding(header)

    def seal_file(index: int, file: File) -> File:
        assert isinstance(file.content, InlineContent)  # noqa: S101 - _require_plain checked
        plaintext = file.content.data
        nonce = os.urandom(NONCE_SIZE)
        aad = _file_aad(binding, index, CONTENT_ALGORITHM)
        content: InlineContent | BlobContent
        if len(plaintext) > blob_threshold:  # a chunk at a time into the store
            ref = blob_store.put_chunks(
                streaming.encrypt_chunks(content_key, nonce, plaintext, aad)
            )
            content = BlobContent(
                ref=ref,
                sha256=bytes.fromhex(ref.removeprefix("sha256:")),
                size=streaming.ciphertext_size(len(plaintext)),
            )
        else:
            content = InlineContent(data=streaming.encrypt(content_key, nonce, plaintext, aad))
        return dataclasses.replace(file, content=content, nonce=nonce)

    body = map_files(plain.body, seal_file)
    nonce = os.urandom(NONCE_SIZE)
    document = json.dumps(personal, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    sealed_personal = nonce + aead.encrypt(nonce, document.encode(), _PERSONAL_AAD + binding)
    return dataclasses.replace(
        plain,
        header=header,
        body=body,
        encryption=_wrap(content_key, provider_key, provider_key_id, header.messageUUID),
        sealedPersonalData=sealed_personal,
    )


def open_envelope(
    sealed: Envelope,
    provider_private_key: x25519.X25519PrivateKey,
    blob_store: BlobStore,
    *,
    pseudonymizer: Pseudonymizer | None = None,
    documents: BlobStore | None = None,
) -> Envelope:
    """The plain envelope exactly as it was before seal_envelope, but without a signature.

    The signature covers the sealed form, so it is dropped rather than kept on an
    envelope it does not verify against: verify the sealed envelope first. Given the
    deployment's `pseudonymizer`, the identifiers in the sealed personal data must
    also match the pseudonyms in the clear header (PSEUDONYM_MISMATCH), so that a
    sender cannot have a message routed for one person and opened for another.

    Given `documents` (the receiver's own store for plaintext, never the shared one),
    a blob-stored file is decrypted a chunk at a time into it and comes back as a
    ``BlobContent`` without a nonce: the ref, SHA-256 and size of its *plaintext* in
    `documents` (read it with brokers.runtime.blobstore.verified_chunks). It is put
    under its address only once every chunk has authenticated and the ciphertext's
    size and SHA-256 have matched, so `documents` never holds unverified plaintext.
    Inline files stay inline; without `documents` every file is inlined.
    """
    encryption = sealed.encryption
    if encryption is None or sealed.sealedPersonalData is None:
        raise _undecryptable("the envelope is not sealed (no encryption or personal data)")
    algorithm = encryption.contentAlgorithm
    if algorithm not in streaming.ALGORITHMS or encryption.keyWrapAlgorithm != KEY_WRAP_ALGORITHM:
        raise _undecryptable(
            f"unsupported algorithms {encryption.contentAlgorithm}/{encryption.keyWrapAlgorithm}"
        )
    content_key = unwrap_content_key(encryption, provider_private_key, sealed.header.messageUUID)
    aead = AESGCM(content_key)
    binding = _binding(sealed.header)
    nonce, ciphertext = (
        sealed.sealedPersonalData[:NONCE_SIZE],
        sealed.sealedPersonalData[NONCE_SIZE:],
    )
    personal = _decrypt(aead, nonce, ciphertext, _PERSONAL_AAD + binding, "personal data")

    def open_file(index: int, file: File) -> File:
        if file.nonce is None:
            raise _undecryptable(f"file {index} of a sealed envelope is not encrypted")
        aad = _file_aad(binding, index, algorithm)
        source = sealed_files.FileKey(content_key, aad, algorithm, index, blob_store)
        content: InlineContent | BlobContent
        if documents is not None and isinstance(file.content, BlobContent):
            content = sealed_files.open_into(source, file, documents)
        else:
            content = InlineContent(data=sealed_files.open_bytes(source, file))
        return dataclasses.replace(file, content=content, nonce=None)

    body = map_files(sealed.body, open_file)
    return dataclasses.replace(
        sealed,
        header=_restore(sealed.header, personal, pseudonymizer),
        body=body,
        encryption=None,
        sealedPersonalData=None,
        signature=None,
    )


def _require_plain(envelope: Envelope) -> None:
    problem = None
    if envelope.signature is not None:
        problem = "it is signed; seal first, then sign the sealed envelope"
    elif envelope.encryption is not None or envelope.sealedPersonalData is not None:
        problem = "it is already sealed"
    elif any(
        f.nonce is not None or not isinstance(f.content, InlineContent)
        for f in files_of(envelope.body)
    ):
        problem = "a file is already encrypted or in the blob store"
    if problem is not None:
        raise SecurityError(
            f"only a plain envelope can be sealed, and {problem}",
            reason_code="NOT_PLAIN",
            hint="Seal the envelope as built (inline file bytes, no nonce, no signature).",
        )


def _pseudonymise(
    header: MessageHeader, pseudonymizer: Pseudonymizer
) -> tuple[MessageHeader, dict[str, Any]]:
    """The clear header with personal identifiers replaced, and the originals."""
    recipient, sender, content = header.recipient, header.sender, header.contentData
    personal: dict[str, Any] = {"recipientID": recipient.recipientID}
    if recipient.idType is not IdType.CVR:
        pseudonym = pseudonymizer.ref(recipient.idType.value, recipient.recipientID)
        recipient = dataclasses.replace(recipient, recipientID=pseudonym)
    if sender.idType is not IdType.CVR:
        personal["senderID"] = sender.senderID
        pseudonym = pseudonymizer.ref(sender.idType.value, sender.senderID)
        sender = dataclasses.replace(sender, senderID=pseudonym)
    if content is not None and content.cprData is not None:
        cpr = content.cprData
        personal["cprData"] = {"cprNumber": cpr.cprNumber, "name": cpr.name}
        pseudonym = pseudonymizer.ref(IdType.CPR.value, cpr.cprNumber)
        content = dataclasses.replace(content, cprData=CPRdata(cprNumber=pseudonym))
    clear = dataclasses.replace(header, recipient=recipient, sender=sender, contentData=content)
    clear, originals = personal_fields.seal(clear, pseudonymizer)
    if originals:
        personal["fields"] = originals
    return clear, personal


def _restore(
    header: MessageHeader, personal: bytes, pseudonymizer: Pseudonymizer | None
) -> MessageHeader:
    """The header with the identifiers from the sealed personal data put back."""
    recipient_id, sender_id, cpr_data, originals = _parse_personal(personal)
    recipient, sender, content = header.recipient, header.sender, header.contentData
    clear_cpr = content.cprData if content is not None else None
    if (sender_id is None) != (sender.idType is IdType.CVR) or (cpr_data is None) != (
        clear_cpr is None
    ):
        raise _undecryptable("the sealed personal data does not fit the clear header")
    expected = [(recipient.idType, recipient_id, recipient.recipientID)]
    recipient = dataclasses.replace(recipient, recipientID=recipient_id)
    if sender_id is not None:
        expected.append((sender.idType, sender_id, sender.senderID))
        sender = dataclasses.replace(sender, senderID=sender_id)
    if cpr_data is not None and clear_cpr is not None and content is not None:
        expected.append((IdType.CPR, cpr_data.cprNumber, clear_cpr.cprNumber))
        content = dataclasses.replace(content, cprData=cpr_data)
    for id_type, original, clear in expected:
        if id_type is IdType.CVR:
            consistent = original == clear
        elif pseudonymizer is None:
            continue
        else:
            pseudonym = pseudonymizer.ref(id_type.value, original)
            consistent = hmac.compare_digest(pseudonym.encode(), clear.encode())
        if not consistent:
            raise _mismatch()
    header = dataclasses.replace(header, recipient=recipient, sender=sender, contentData=content)
    try:
        return personal_fields.restore(header, originals, pseudonymizer)
    except personal_fields.Mismatch:
        raise _mismatch() from None
    except personal_fields.NotFitting as exc:
        raise _undecryptable(str(exc)) from None


def _mismatch() -> SecurityError:
    return SecurityError(
        "an identifier in the sealed personal data does not match the clear header",
        reason_code="PSEUDONYM_MISMATCH",
        hint="Seal with sealing.seal_envelope and this deployment's pseudonym key.",
    )


def _parse_personal(personal: bytes) -> tuple[str, str | None, CPRdata | None, dict[str, str]]:
    """(recipientID, senderID, cprData, fields) of the decrypted personal data, types checked."""

    def text(value: object, *, optional: bool = False) -> Any:
        if isinstance(value, str) or (optional and value is None):
            return value
        raise TypeError("an identifier is not a string")

    try:
        data = json.loads(personal.decode())
        recipient_id = text(data["recipientID"])
        sender_id = text(data.get("senderID"), optional=True)
        cpr = data.get("cprData")
        cpr_data = (
            None
            if cpr is None
            else CPRdata(cprNumber=text(cpr["cprNumber"]), name=text(cpr["name"], optional=True))
        )
        originals = data.get("fields", {})
        if not isinstance(originals, dict):
            raise TypeError("the sealed fields are not an object")
        originals = {text(name): text(value) for name, value in originals.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise _undecryptable(
            f"the sealed personal data is malformed ({type(exc).__name__})"
        ) from None
    return recipient_id, sender_id, cpr_data, originals


def _binding(header: MessageHeader) -> bytes:
    """Message UUID, sender and recipient as they appear in the clear header, length-prefixed."""
    parts = (header.messageUUID, header.sender.senderID, header.recipient.recipientID)
    return b"".join(struct.pack(">I", len(b)) + b for b in (p.encode() for p in parts))


def _file_aad(binding: bytes, index: int, algorithm: str) -> bytes:
    label = _FILE_AAD if algorithm == streaming.ONE_SHOT else _CHUNKED_FILE_AAD
    return label + binding + struct.pack(">I", index)


def _decrypt(aead: AESGCM, nonce: bytes, ciphertext: bytes, aad: bytes, what: str) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise _undecryptable(f"the {what} has no {NONCE_SIZE}-byte nonce")
    try:
        return aead.decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise _undecryptable(_not_decrypting(what)) from None


def _wrap(
    content_key: bytes,
    provider_key: x25519.X25519PublicKey,
    provider_key_id: str,
    message_uuid: str,
) -> Encryption:
    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    kek = _kek(ephemeral.exchange(provider_key), ephemeral_public, provider_key, message_uuid)
    return Encryption(
        contentAlgorithm=CONTENT_ALGORITHM,
        keyWrapAlgorithm=KEY_WRAP_ALGORITHM,
        wrappedKey=aes_key_wrap(kek, content_key),
        recipientKeyId=provider_key_id,
        ephemeralPublicKey=ephemeral_public,
    )


def unwrap_content_key(
    encryption: Encryption, private_key: x25519.X25519PrivateKey, message_uuid: str
) -> bytes:
    """The 256-bit content key of a sealed envelope (the public-key step of opening)."""
    try:
        ephemeral = x25519.X25519PublicKey.from_public_bytes(encryption.ephemeralPublicKey or b"")
        shared = private_key.exchange(ephemeral)  # ValueError for a low-order point
        kek = _kek(shared, ephemeral.public_bytes_raw(), private_key.public_key(), message_uuid)
        content_key = aes_key_unwrap(kek, encryption.wrappedKey)
    except (ValueError, InvalidUnwrap):
        raise _undecryptable(
            "the content key does not unwrap: sealed for another provider key, or tampered"
        ) from None
    if len(content_key) != 32:
        raise _undecryptable("the wrapped content key is not 256 bits")
    return content_key


def _kek(
    shared: bytes,
    ephemeral_public: bytes,
    provider_key: x25519.X25519PublicKey,
    message_uuid: str,
) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_public + provider_key.public_bytes_raw(),
        info=_WRAP_INFO + message_uuid.encode(),
    ).derive(shared)
