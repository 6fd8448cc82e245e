"""The verifiable log: every believed lifecycle event in an append-only Merkle tree,
signed tree heads, and receipts anyone checks offline with the CA certificate alone.

Why it exists: a trace in a database proves nothing to someone who does not trust
DP2's operator. So the tracing service appends every event the authority table
accepted (brokers.security.authority) to a tree in the shape of Certificate
Transparency (RFC 9162; brokers.security.merkle) and signs its tree heads with its own
``service:dp2-tracing`` certificate. A receipt (``dp2 receipt UUID``) holds one
message's events as they were signed by their actors, their certificates, an
inclusion proof of each, a signed tree head, and tracing's signed statement of
which leaves are that message's — so a dropped event is as visible as a changed
one. ``dp2 receipt verify FILE`` needs only the CA certificate; ``dp2 log verify``
checks the whole stored log and names the first entry that does not hold.

This module is the format and its checking; tracing.evidence_log keeps the entries,
in SQLite (the embedded default) or in PostgreSQL (DP2_DATABASE_URL, shared by
every tracing instance). :func:`verify_log` reads either: a SQLite file, or the
database URL of a log in PostgreSQL.

Receipt format (JSON, version 1)::

    {"version": 1, "messageUUID": "...",
     "events": [{"index": 7, "event": "<base64 Avro of the signed event>",
                 "proof": ["<base64 hash>", ...]}, ...],
     "treeHead": {"size": 42, "root": "<base64>", "at": "2026-...Z", "signature": "<b64>"},
     "statement": "<base64 signature over messageUUID, indices, size and root>",
     "certificates": {"<fingerprint>": "<base64 DER>", ...},
     "logCertificate": "<base64 DER of the tracing service's certificate>"}

Errors: ReceiptInvalid (RECEIPT_INVALID) and LogInvalid (LOG_INVALID), each naming
what failed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from brokers.runtime.postgres import StoreUnavailable
from brokers.runtime.settings import redacted
from brokers.security import merkle, signing
from brokers.security.authority import EventJudge, RouteBook
from brokers.security.pki import Identity
from brokers.security.signing import SecurityError
from brokers.security.trust import principal_name, sender_cvrs
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent

LOG_SIGNER = "service:dp2-tracing"
#: The PostgreSQL schema of the log (tracing.evidence_log.PgEvidenceLog).
EVIDENCE_SCHEMA = "evidence"


class ReceiptInvalid(Dp2Error):
    reason_code = "RECEIPT_INVALID"
    hint = "The receipt was changed, is incomplete, or is checked against another CA."


class LogInvalid(Dp2Error):
    reason_code = "LOG_INVALID"
    hint = "The named entry was rewritten or removed after it was logged; restore it from "
    "a backup or from dp2.lifecycle, and find who had write access to the store."


@dataclass(frozen=True, slots=True)
class TreeHead:
    size: int
    root: bytes
    at: str
    signature: bytes


def head_input(size: int, root: bytes, at: str) -> bytes:
    return b"dp2-tree-head|" + str(size).encode() + b"|" + root + b"|" + at.encode()


def _statement_input(message_uuid: str, indices: list[int], size: int, root: bytes) -> bytes:
    body = json.dumps([message_uuid, indices, size, base64.b64encode(root).decode()])
    return b"dp2-receipt|" + body.encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError:
        raise ReceiptInvalid(f"{what} is not base64") from None


def receipt_document(
    message_uuid: str,
    entries: Sequence[tuple[int, bytes, str]],
    head: TreeHead,
    leaves: Sequence[bytes],
    *,
    certificates: dict[str, bytes],
    identity: Identity,
) -> dict[str, Any]:
    """The receipt (format above) of a message's ``entries`` (index, event bytes, signer
    fingerprint) below the signed ``head``; ``leaves`` are the head's leaf hashes."""
    indices = [index for index, _, _ in entries]
    statement = signing.sign_bytes(
        identity.private_key, _statement_input(message_uuid, indices, head.size, head.root)
    )
    return {
        "version": 1,
        "messageUUID": message_uuid,
        "events": [
            {
                "index": index,
                "event": _b64(raw),
                "proof": [_b64(p) for p in merkle.inclusion_proof(index, leaves)],
            }
            for index, raw, _ in entries
        ],
        "treeHead": {
            "size": head.size,
            "root": _b64(head.root),
            "at": head.at,
            "signature": _b64(head.signature),
        },
        "statement": _b64(statement),
        "certificates": {fp: _b64(der) for fp, der in certificates.items()},
        "logCertificate": _b64(identity.certificate.public_bytes(Encoding.DER)),
    }


# --- checking, offline --------------------------------------------------------------------
class OfflineTrust:
    """What EventJudge needs to know about certificates, from a receipt and the CA alone.

    Revocation cannot be checked offline: the log signed its head after checking each
    event, revocation included, when it was logged.
    """

    def __init__(self, ca: x509.Certificate, certificates: dict[str, x509.Certificate]) -> None:
        self._ca = ca
        self._certs = certificates

    def reload(self) -> None:
        return None

    def certificate(self, fingerprint: str) -> x509.Certificate:
        cert = self._certs.get(fingerprint)
        if cert is None:
            raise SecurityError(
                "the receipt holds no such certificate", reason_code="UNKNOWN_CERTIFICATE"
            )
        return cert

    def verify_certificate(self, cert: x509.Certificate, at: datetime) -> None:
        _issued_by(cert, self._ca)
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise SecurityError(
                "the certificate was not valid then", reason_code="CERTIFICATE_EXPIRED"
            )

    def may_send_as(self, cert: x509.Certificate, cvr: str) -> bool:
        return cvr in sender_cvrs(cert)

    def fingerprint(self, cert: x509.Certificate) -> str:
        return signing.certificate_fingerprint(cert)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception) as exc:  # InvalidSignature and kin
        raise SecurityError(
            "a certificate is not issued by the given CA", reason_code="UNTRUSTED_ISSUER"
        ) from exc


def verify_receipt(doc: dict[str, Any], ca: x509.Certificate) -> list[LifecycleEvent]:
    """The receipt's events, if every signature, proof and the authority table hold."""
    try:
        if doc.get("version") != 1:
            raise ReceiptInvalid("the receipt is not of version 1")
        message_uuid = str(doc["messageUUID"])
        head = doc["treeHead"]
        size, root, at = int(head["size"]), _unb64(head["root"], "root"), str(head["at"])
        log_cert = signing.load_certificate_der(_unb64(doc["logCertificate"], "log cert"))
        certs = {
            fp: signing.load_certificate_der(_unb64(der, "a certificate"))
            for fp, der in dict(doc["certificates"]).items()
        }
        entries = list(doc["events"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReceiptInvalid(f"the receipt is incomplete or malformed: {exc!r}") from exc
    try:
        _issued_by(log_cert, ca)
    except SecurityError as exc:
        raise ReceiptInvalid("the log's certificate is not issued by this CA") from exc
    if principal_name(log_cert) != LOG_SIGNER:
        raise ReceiptInvalid(f"the tree head is signed by {principal_name(log_cert)}")
    try:
        signing.verify_bytes(
            log_cert.public_key(), _unb64(head["signature"], "head"), head_input(size, root, at)
        )
        indices = [int(e["index"]) for e in entries]
        signing.verify_bytes(
            log_cert.public_key(),
            _unb64(doc["statement"], "statement"),
            _statement_input(message_uuid, indices, size, root),
        )
    except SecurityError as exc:
        raise ReceiptInvalid("the log's signature over the tree head or statement fails") from exc
    judge = EventJudge(OfflineTrust(ca, certs), RouteBook(":memory:"))
    events = []
    for entry in entries:
        raw = _unb64(entry["event"], "an event")
        proof = [_unb64(p, "a proof") for p in entry["proof"]]
        if not merkle.verify_inclusion(
            merkle.leaf_hash(raw), int(entry["index"]), size, proof, root
        ):
            raise ReceiptInvalid(f"event {entry['index']} is not in the signed tree")
        event = codec.decode(raw, LifecycleEvent)
        if event.messageUUID != message_uuid:
            raise ReceiptInvalid(f"event {entry['index']} is of another message")
        verdict = judge.judge(event, at=event.occurredAt)
        if not verdict.ok:
            raise ReceiptInvalid(f"event {entry['index']} ({event.state.value}): {verdict.reason}")
        events.append(event)
    return events


@dataclass(frozen=True, slots=True)
class LogReport:
    entries: int
    heads: int


#: A stored log: certificates (fingerprint -> DER), entries (index, message UUID, event,
#: leaf, signer fingerprint) in index order, and heads (size, root, at, signature).
StoredLog = tuple[dict[str, bytes], Iterable[tuple[int, str, bytes, bytes, str]], list[Any]]


def verify_log(source: Path | str, ca: x509.Certificate) -> LogReport:
    """Check every entry and every signed head of a stored log (LogInvalid names the first
    entry or head that does not hold). ``source`` is the SQLite file of the embedded
    default, or the ``postgresql://`` URL (DP2_DATABASE_URL) of a log in PostgreSQL."""
    reader = _postgres_log if _is_url(source) else _sqlite_log
    with reader(str(source)) as stored:
        return check_log(*stored, ca)


def _is_url(source: Path | str) -> bool:
    return isinstance(source, str) and source.startswith(("postgresql://", "postgres://"))


@contextlib.contextmanager
def _sqlite_log(path: str) -> Iterator[StoredLog]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        certs = {
            str(fp): bytes(der) for fp, der in db.execute("SELECT fingerprint, der FROM certs")
        }
        heads = db.execute("SELECT size, root, at, signature FROM heads ORDER BY size").fetchall()
        entries = db.execute(
            "SELECT idx, message_uuid, event, leaf, signer FROM entries ORDER BY idx"
        )
        yield certs, entries, heads
    finally:
        db.close()


@contextlib.contextmanager
def _postgres_log(url: str) -> Iterator[StoredLog]:
    """The log of the ``evidence`` schema, read in one read-only snapshot (the heads are
    read first, so every entry they cover is in it however many instances append)."""
    import psycopg  # noqa: PLC0415 - only for a log in PostgreSQL (brokers.runtime.postgres)
    from psycopg import sql  # noqa: PLC0415

    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to {redacted(url)}: {exc}") from exc
    try:
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            conn.execute(
                sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(EVIDENCE_SCHEMA))
            )
            try:
                heads = conn.execute(
                    "SELECT size, root, at, signature FROM heads ORDER BY size"
                ).fetchall()
            except psycopg.errors.UndefinedTable as exc:
                raise LogInvalid(f"{redacted(url)} holds no evidence log") from exc
            certs = {
                str(fp): bytes(der)
                for fp, der in conn.execute("SELECT fingerprint, der FROM certs").fetchall()
            }
            with conn.cursor(name="entries") as entries:  # streamed, not all in memory
                entries.execute(
                    "SELECT idx, message_uuid, event, leaf, signer FROM entries ORDER BY idx"
                )
                yield certs, entries, heads
    finally:
        conn.close()


def check_log(
    certificates: dict[str, bytes],
    entries: Iterable[tuple[int, str, bytes, bytes, str]],
    heads: list[Any],
    ca: x509.Certificate,
) -> LogReport:
    """Check a stored log, whichever store holds it (see verify_log)."""
    certs = {fp: signing.load_certificate_der(der) for fp, der in certificates.items()}
    leaves: list[bytes] = []
    roots = signing.VerifiedRoots()  # a batch-signed round: one verify (each cert checked)
    for expected, (idx, message_uuid, raw, leaf, signer) in enumerate(entries):
        where = f"entry {idx} (message {message_uuid})"
        if idx != expected:
            raise LogInvalid(f"entry {expected} is missing (the next is {idx})")
        if merkle.leaf_hash(bytes(raw)) != bytes(leaf):
            raise LogInvalid(f"{where} does not match its leaf hash: it was rewritten")
        cert = certs.get(str(signer))
        if cert is None:
            raise LogInvalid(f"{where}: its signer's certificate is missing")
        try:
            _issued_by(cert, ca)
            event = codec.decode(bytes(raw), LifecycleEvent)
            signing.verify_event(event, cert, roots=roots)
        except (SecurityError, Dp2Error) as exc:
            raise LogInvalid(f"{where}: its signature does not hold ({exc})") from exc
        if event.messageUUID != message_uuid:
            raise LogInvalid(f"{where}: filed under another message")
        leaves.append(bytes(leaf))
    # Several instances (or a renewed certificate) may have signed heads: any of the
    # log's certificates that this CA issued will do.
    log_certs = [c for c in certs.values() if principal_name(c) == LOG_SIGNER]
    tree_hashes = _tree_hashes(leaves, {int(head[0]) for head in heads})
    for size, root, at, signature in heads:
        if size > len(leaves):
            raise LogInvalid(f"the head of size {size} covers entries that are gone")
        if tree_hashes[size] != bytes(root):
            raise LogInvalid(
                f"the signed head of size {size} does not match the entries: "
                + _first_difference(leaves, size, bytes(root))
            )
        if log_certs and not any(
            _signed_by(c, bytes(signature), head_input(size, bytes(root), at)) for c in log_certs
        ):
            raise LogInvalid(f"the head of size {size} is not signed by the log")
    return LogReport(entries=len(leaves), heads=len(heads))


def _tree_hashes(leaves: list[bytes], sizes: set[int]) -> dict[int, bytes]:
    """MTH over the first n leaves for each n in ``sizes`` (up to len(leaves)), in one
    pass: the log signs a head every few seconds, and hashing the tree again for each
    would make checking a long log quadratic."""
    log = merkle.LeafLog()
    found = {0: log.root()} if 0 in sizes else {}
    for leaf in leaves:
        log.append(leaf)
        if len(log) in sizes:
            found[len(log)] = log.root()
    return found


def _signed_by(cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    try:
        signing.verify_bytes(cert.public_key(), signature, data)
    except SecurityError:
        return False
    return True


def _first_difference(leaves: list[bytes], size: int, root: bytes) -> str:
    return f"an entry below {size} was changed or removed (root {root.hex()[:16]}…)"
