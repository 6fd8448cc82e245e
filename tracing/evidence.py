"""The verifiable log: every believed lifecycle event in an append-only Merkle tree,
signed tree heads, and receipts anyone checks offline with the CA certificate alone.

Why it exists: a trace in a database proves nothing to someone who does not trust
DP2's operator. So the tracing service appends every event the authority table
accepted (brokers.security.authority) to a tree in the shape of Certificate
Transparency (RFC 9162; tracing.merkle) and signs its tree heads with its own
``service:dp2-tracing`` certificate. A receipt (``dp2 receipt UUID``) holds one
message's events as they were signed by their actors, their certificates, an
inclusion proof of each, a signed tree head, and tracing's signed statement of
which leaves are that message's — so a dropped event is as visible as a changed
one. ``dp2 receipt verify FILE`` needs only the CA certificate; ``dp2 log verify``
checks the whole stored log and names the first entry that does not hold.

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
import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from brokers.runtime.records import iso_z
from brokers.runtime.sqlite import connect
from brokers.security import signing
from brokers.security.authority import EventJudge, RouteBook
from brokers.security.pki import Identity
from brokers.security.signing import SecurityError, certificate_fingerprint
from brokers.security.trust import principal_name, sender_cvrs
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent
from tracing import merkle

LOG_SIGNER = "service:dp2-tracing"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY, message_uuid TEXT NOT NULL, event BLOB NOT NULL,
    leaf BLOB NOT NULL, signer TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS entries_by_message ON entries (message_uuid);
CREATE TABLE IF NOT EXISTS heads (
    size INTEGER PRIMARY KEY, root BLOB NOT NULL, at TEXT NOT NULL, signature BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS certs (fingerprint TEXT PRIMARY KEY, der BLOB NOT NULL);
"""


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


def _head_input(size: int, root: bytes, at: str) -> bytes:
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


class EvidenceLog:
    """The tracing service's append-only log of believed events (one writer)."""

    def __init__(self, path: Path | str) -> None:
        self._db: sqlite3.Connection = connect(path)
        self._db.executescript(_SCHEMA)
        self._leaves: list[bytes] = [
            bytes(row[0]) for row in self._db.execute("SELECT leaf FROM entries ORDER BY idx")
        ]
        # The few signers sign every event: keep each certificate once, not per event.
        self._kept: set[str] = {
            str(row[0]) for row in self._db.execute("SELECT fingerprint FROM certs")
        }

    @property
    def size(self) -> int:
        return len(self._leaves)

    def append(self, event: LifecycleEvent, raw: bytes, signer: x509.Certificate) -> int:
        """Log one believed event as it was read (its bytes carry its signature)."""
        index = len(self._leaves)
        leaf = merkle.leaf_hash(raw)
        fingerprint = self._keep(signer)
        self._db.execute(
            "INSERT INTO entries VALUES (?, ?, ?, ?, ?)",
            (index, event.messageUUID, raw, leaf, fingerprint),
        )
        self._db.commit()
        self._leaves.append(leaf)
        return index

    def keep_certificate(self, cert: x509.Certificate) -> None:
        """Keep a certificate next to the entries (the log's own: dp2 log verify checks heads)."""
        self._keep(cert)
        self._db.commit()

    def _keep(self, cert: x509.Certificate) -> str:
        fingerprint = certificate_fingerprint(cert)
        if fingerprint not in self._kept:
            self._db.execute(
                "INSERT OR IGNORE INTO certs VALUES (?, ?)",
                (fingerprint, cert.public_bytes(Encoding.DER)),
            )
            self._kept.add(fingerprint)
        return fingerprint

    def latest_head(self) -> TreeHead | None:
        row = self._db.execute(
            "SELECT size, root, at, signature FROM heads ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else TreeHead(row[0], bytes(row[1]), row[2], bytes(row[3]))

    def sign_head(self, identity: Identity) -> TreeHead | None:
        """A signed head over everything logged, unless the latest one covers it already."""
        latest = self.latest_head()
        if latest is not None and latest.size == self.size:
            return latest
        if self.size == 0:
            return None
        root = merkle.root(self._leaves)
        at = iso_z(datetime.now(UTC))
        signature = signing.sign_bytes(identity.private_key, _head_input(self.size, root, at))
        self._db.execute(
            "INSERT OR IGNORE INTO heads VALUES (?, ?, ?, ?)", (self.size, root, at, signature)
        )
        self._db.commit()
        return TreeHead(self.size, root, at, signature)

    def receipt(self, message_uuid: str, identity: Identity) -> dict[str, Any] | None:
        """The self-contained receipt of one message (None if nothing of it was logged)."""
        rows = self._db.execute(
            "SELECT idx, event, signer FROM entries WHERE message_uuid = ? ORDER BY idx",
            (message_uuid.lower(),),
        ).fetchall()
        if not rows:
            return None
        head = self.sign_head(identity)
        assert head is not None  # noqa: S101 - there is at least one entry
        leaves = self._leaves[: head.size]
        indices = [int(r[0]) for r in rows if int(r[0]) < head.size]
        fingerprints = {str(r[2]) for r in rows}
        certs = {
            fp: _b64(bytes(der))
            for fp, der in self._db.execute(
                f"SELECT fingerprint, der FROM certs WHERE fingerprint IN "  # noqa: S608
                f"({','.join('?' * len(fingerprints))})",
                sorted(fingerprints),
            )
        }
        statement = signing.sign_bytes(
            identity.private_key,
            _statement_input(message_uuid.lower(), indices, head.size, head.root),
        )
        return {
            "version": 1,
            "messageUUID": message_uuid.lower(),
            "events": [
                {
                    "index": int(idx),
                    "event": _b64(bytes(raw)),
                    "proof": [_b64(p) for p in merkle.inclusion_proof(int(idx), leaves)],
                }
                for idx, raw, _ in rows
                if int(idx) < head.size
            ],
            "treeHead": {
                "size": head.size,
                "root": _b64(head.root),
                "at": head.at,
                "signature": _b64(head.signature),
            },
            "statement": _b64(statement),
            "certificates": certs,
            "logCertificate": _b64(identity.certificate.public_bytes(Encoding.DER)),
        }

    def close(self) -> None:
        self._db.close()


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
            log_cert.public_key(), _unb64(head["signature"], "head"), _head_input(size, root, at)
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


def verify_log(path: Path, ca: x509.Certificate) -> LogReport:
    """Check every entry and every signed head of a stored log (LogInvalid names the first
    entry or head that does not hold)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        certs = {
            str(fp): signing.load_certificate_der(bytes(der))
            for fp, der in db.execute("SELECT fingerprint, der FROM certs")
        }
        leaves: list[bytes] = []
        for expected, (idx, message_uuid, raw, leaf, signer) in enumerate(
            db.execute("SELECT idx, message_uuid, event, leaf, signer FROM entries ORDER BY idx")
        ):
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
                signing.verify_event(event, cert)
            except (SecurityError, Dp2Error) as exc:
                raise LogInvalid(f"{where}: its signature does not hold ({exc})") from exc
            if event.messageUUID != message_uuid:
                raise LogInvalid(f"{where}: filed under another message")
            leaves.append(bytes(leaf))
        heads = db.execute("SELECT size, root, at, signature FROM heads ORDER BY size").fetchall()
        log_cert = _log_certificate(certs)
        for size, root, at, signature in heads:
            if size > len(leaves):
                raise LogInvalid(f"the head of size {size} covers entries that are gone")
            if merkle.root(leaves[:size]) != bytes(root):
                raise LogInvalid(
                    f"the signed head of size {size} does not match the entries: "
                    + _first_difference(leaves, size, bytes(root))
                )
            if log_cert is not None:
                try:
                    signing.verify_bytes(
                        log_cert.public_key(), bytes(signature), _head_input(size, bytes(root), at)
                    )
                except SecurityError as exc:
                    raise LogInvalid(f"the head of size {size} is not signed by the log") from exc
        return LogReport(entries=len(leaves), heads=len(heads))
    finally:
        db.close()


def _log_certificate(certs: dict[str, x509.Certificate]) -> x509.Certificate | None:
    return next((c for c in certs.values() if principal_name(c) == LOG_SIGNER), None)


def _first_difference(leaves: list[bytes], size: int, root: bytes) -> str:
    return f"an entry below {size} was changed or removed (root {root.hex()[:16]}…)"
