"""What may be believed: which actor may assert which state of which message.

Why it exists: dp2.lifecycle is written by many parties (DESIGN.md, "What may be
believed"), and Kafka's ACLs can say who may write the topic, not what they may
say on it. So every lifecycle event is signed by its actor (brokers.security.pki.EventSigner;
DP2's services with their ``service`` certificates, providers and connectors with
theirs), and everyone who acts on an event — tracing, the notifier, the ESDH
connector's receipts — asks :class:`EventJudge` first. This module is the one
authority table:

| state | only from |
|---|---|
| SUBMITTED | a sender or vendor that may send as the event's sender (a citizen's: a provider) |
| ACCEPTED, DUPLICATE | service:dp2-validator |
| REJECTED | a DP2 service (the validator, or a service parking a poison record) |
| ROUTED, SCHEDULED, RECALLED, EXPIRED | service:dp2-router |
| DELIVERED, READ, REPLIED, JOURNALED | the provider the router routed that message to |
| FAILED | the router, the provider routed to (delivery), or provider:print (print) |
| PRINTED | provider:print, when the router routed the message to print |
| NOTIFIED, NOTIFICATION_FAILED | service:dp2-notifier |

"Routed to" is learnt from the router's own verified ROUTED event of that message
(a :class:`Routes` book, persisted so a restart does not forget it: a SQLite file of
the service, or with DP2_DATABASE_URL one table in PostgreSQL (schema ``routes``)
shared by every instance of the service, so an instance that gets a message's
DELIVERED after its partition moved knows the route another instance learnt). An event that
fails — unsigned, a bad signature, an unknown, revoked or expired signer, the
wrong actor for the state or for the message — gets a :class:`Verdict` with its
own reason code; the caller quarantines it and acts on nothing in it.

Reason codes: EVENT_UNSIGNED, EVENT_SIGNATURE_INVALID, EVENT_SIGNER_UNKNOWN,
EVENT_SIGNER_NOT_TRUSTED, EVENT_WRONG_ACTOR, EVENT_NOT_ROUTED_HERE.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography import x509
from prometheus_client import Counter

from brokers.runtime.lru import Lru
from brokers.runtime.postgres import Database, Migration
from brokers.runtime.settings import Settings
from brokers.runtime.sqlite import connect
from brokers.security import signing
from brokers.security.signing import SecurityError
from brokers.security.trust import (
    PROVIDER,
    SENDER,
    SERVICE,
    VENDOR,
    TrustStore,
    principal_name,
)
from schemas.models import LifecycleEvent
from schemas.models import LifecycleState as S
from schemas.vocabulary import PRINT_PROVIDER

VALIDATOR: Final = "dp2-validator"
ROUTER: Final = "dp2-router"
NOTIFIER: Final = "dp2-notifier"

#: State -> the service identities that alone may assert it.
_BY_SERVICE: Final = {
    S.ACCEPTED: {VALIDATOR},
    S.DUPLICATE: {VALIDATOR},
    S.ROUTED: {ROUTER},
    S.SCHEDULED: {ROUTER},
    S.RECALLED: {ROUTER},
    S.EXPIRED: {ROUTER},
    S.NOTIFIED: {NOTIFIER},
    S.NOTIFICATION_FAILED: {NOTIFIER},
}
#: States only the provider the message was routed to may assert.
_BY_ROUTED_PROVIDER: Final = {S.DELIVERED, S.READ, S.REPLIED, S.JOURNALED}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the authority table says about one event."""

    ok: bool
    signer: str  # "kind:name" of the certificate that signed it, "" if none
    reason_code: str | None = None
    reason: str | None = None
    certificate: x509.Certificate | None = None  # the signer's, when the event is believed


class Routes(Protocol):
    """Where the router sent each message (from its verified ROUTED events)."""

    def remember(self, message_uuid: str, provider: str) -> None:
        """Note the provider a verified ROUTED names (the latest one stands)."""
        ...

    def provider_of(self, message_uuid: str) -> str | None:
        """The provider the message was routed to, or None when no ROUTED was seen."""
        ...

    def close(self) -> None:
        """Release the book; safe to call twice."""
        ...


class RouteBook:
    """`Routes` in one SQLite file, or in memory (a receipt's offline check)."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        self._db: sqlite3.Connection = connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS routes (message_uuid TEXT PRIMARY KEY, provider TEXT)"
        )
        self._db.commit()

    def remember(self, message_uuid: str, provider: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO routes VALUES (?, ?)", (message_uuid.lower(), provider)
        )
        self._db.commit()

    def provider_of(self, message_uuid: str) -> str | None:
        row = self._db.execute(
            "SELECT provider FROM routes WHERE message_uuid = ?", (message_uuid.lower(),)
        ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._db.close()


_ROUTES_MIGRATIONS = (
    Migration(
        1,
        "routes",
        """
        CREATE TABLE routes (
            book         TEXT COLLATE "C" NOT NULL,  -- the service that learnt it
            message_uuid TEXT COLLATE "C" NOT NULL,
            provider     TEXT NOT NULL,
            PRIMARY KEY (book, message_uuid)
        );
        """,
    ),
)


class PgRouteBook:
    """`Routes` in PostgreSQL, shared by every instance of one service (``book``)."""

    def __init__(self, url: str, book: str) -> None:
        self._db = Database(url, "routes", _ROUTES_MIGRATIONS)
        self._book = book

    def remember(self, message_uuid: str, provider: str) -> None:
        with self._db.use() as conn:
            conn.execute(
                "INSERT INTO routes VALUES (%s, %s, %s) ON CONFLICT (book, message_uuid)"
                " DO UPDATE SET provider = EXCLUDED.provider",
                (self._book, message_uuid.lower(), provider),
            )

    def provider_of(self, message_uuid: str) -> str | None:
        with self._db.use() as conn:
            row = conn.execute(
                "SELECT provider FROM routes WHERE book = %s AND message_uuid = %s",
                (self._book, message_uuid.lower()),
            ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        self._db.close()


def open_route_book(settings: Settings, path: Path, book: str) -> Routes:
    """PostgreSQL when DP2_DATABASE_URL is set (the rows of ``book``, e.g. the service's
    name), else the SQLite file ``path``."""
    if settings.database_url:
        return PgRouteBook(settings.database_url, book)
    return RouteBook(path)


class Certificates(Protocol):
    """What the judge asks of a trust store (brokers.security.trust.TrustStore, or the
    offline one of a receipt, tracing.evidence.OfflineTrust)."""

    def reload(self) -> None: ...

    def certificate(self, fingerprint: str) -> x509.Certificate: ...

    def verify_certificate(self, cert: x509.Certificate, at: datetime) -> None: ...

    def may_send_as(self, cert: x509.Certificate, cvr: str) -> bool: ...

    def fingerprint(self, cert: x509.Certificate) -> str: ...


class EventJudge:
    """Checks each lifecycle event against the authority table (feed it in topic order)."""

    def __init__(self, trust: Certificates | TrustStore, routes: Routes) -> None:
        self._trust = trust
        self._routes = routes
        #: ``kind:name`` per signer fingerprint (certificate(fp) has that fingerprint).
        self._signers: Lru[str, str] = Lru(4096)
        #: Batch roots checked so far: a service's round of events costs one verify.
        self._roots = signing.VerifiedRoots()

    def judge(
        self, event: LifecycleEvent, at: datetime | None = None, *, reload: bool = True
    ) -> Verdict:
        """The table's verdict on ``event``. ``reload=False``: the caller re-read the CA
        and the CRL (TrustStore.reload) itself, once for a fetched batch of events."""
        fingerprint = event.attributes.get("signer")
        if not fingerprint or "signature" not in event.attributes:
            return _refused(
                "", "EVENT_UNSIGNED", f"a {event.state.value} event carries no signature"
            )
        try:
            if reload:
                self._trust.reload()
            cert = self._trust.certificate(fingerprint)
        except SecurityError:
            return _refused("", "EVENT_SIGNER_UNKNOWN", "no certificate of this CA signed it")
        signer = self._signers.get(fingerprint) or self._signers.put(
            fingerprint, principal_name(cert)
        )
        try:
            self._trust.verify_certificate(cert, at or datetime.now(UTC))
        except SecurityError as exc:
            return _refused(signer, "EVENT_SIGNER_NOT_TRUSTED", f"{exc.reason_code}: {exc.message}")
        try:
            signing.verify_event(
                event, cert, fingerprint=self._trust.fingerprint(cert), roots=self._roots
            )
        except SecurityError:
            return _refused(signer, "EVENT_SIGNATURE_INVALID", "the signature does not match")
        refusal = self._may_assert(event, cert, signer)
        if refusal is not None:
            return refusal
        if event.state is S.ROUTED and (provider := event.attributes.get("provider")):
            self._routes.remember(event.messageUUID, provider)
        return Verdict(ok=True, signer=signer, certificate=cert)

    def _may_assert(
        self, event: LifecycleEvent, cert: x509.Certificate, signer: str
    ) -> Verdict | None:
        """None if the table lets ``signer`` assert this state of this message."""
        kind, _, name = signer.partition(":")
        state = event.state
        routed = self._routes.provider_of(event.messageUUID)
        from_routed_provider = kind == PROVIDER and name == routed
        if state in _BY_SERVICE:
            allowed = kind == SERVICE and name in _BY_SERVICE[state]
        elif state is S.REJECTED:
            allowed = kind == SERVICE
        elif state is S.SUBMITTED:
            allowed = (
                kind in (SENDER, VENDOR)
                and event.senderID is not None
                and self._trust.may_send_as(cert, event.senderID)
            ) or kind == PROVIDER  # a citizen's post, sent by its provider
        elif state in _BY_ROUTED_PROVIDER:
            allowed = from_routed_provider
        elif state is S.PRINTED:
            allowed = from_routed_provider and name == PRINT_PROVIDER
        elif state is S.FAILED:
            allowed = (kind == SERVICE and name == ROUTER) or from_routed_provider
        else:
            allowed = False  # UNKNOWN and anything added later: nobody, until the table says so
        if allowed:
            return None
        if kind == PROVIDER and state in (*_BY_ROUTED_PROVIDER, S.PRINTED, S.FAILED):
            return _refused(
                signer,
                "EVENT_NOT_ROUTED_HERE",
                f"{signer} may not assert {state.value}: the router sent this message to "
                f"{routed or 'no provider yet'}",
            )
        return _refused(signer, "EVENT_WRONG_ACTOR", f"{signer} may not assert {state.value}")


def report_refusal(
    log: Any, counter: Counter, event: LifecycleEvent, verdict: Verdict, what: str
) -> None:
    """Count and log one event the table refused (``log`` is a structlog logger)."""
    counter.labels(verdict.reason_code or "").inc()
    log.warning(
        what,
        message_id=event.messageUUID,
        state=event.state.value,
        reason_code=verdict.reason_code,
        signer=verdict.signer,
    )


def _refused(signer: str, code: str, reason: str) -> Verdict:
    return Verdict(ok=False, signer=signer, reason_code=code, reason=reason)
