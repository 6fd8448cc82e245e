"""The SMTP submission server: a mail client's mail becomes signed DP2 messages.

Why it is built on aiosmtpd's ``SMTP`` protocol served by ``loop.create_server`` on
the connector's own event loop, not on aiosmtpd's ``Controller``: the Controller
runs a second loop in a thread, and the Dp2Client (an aiokafka producer) and the
contact register belong to the connector's loop. On one loop, a mail's DATA handler
awaits ``Dp2Client.send`` directly and answers with what Kafka said.

The session: STARTTLS is offered; AUTH (PLAIN or LOGIN) only after it; the password
is the citizen's DP2 token (connectors.citizens) and the user name is ignored —
mail clients insist on one and people type their e-mail address, while the token
alone says who the citizen is (asking for the CPR number would put it in every
mail client's settings). Each authority named in RCPT gets its own message; its
UUID is derived from the citizen, the authority and the mail's bytes, so a client
that resends after a 451 gets the same UUID, which DP2 answers as a DUPLICATE
rather than delivering twice.

| when | reply | why |
|---|---|---|
| MAIL/RCPT/DATA before AUTH | 530 5.7.0 | log in first (STARTTLS, AUTH) |
| AUTH before STARTTLS | 538 5.7.11 | the token must not travel in clear |
| AUTH with a bad or expired token | 535 5.7.8 | the reply says which, and what to do |
| MAIL with SIZE= over the limit; DATA over it | 552 5.3.4 | the limit is in the reply |
| RCPT to another domain | 550 5.7.1 | the server relays nothing |
| RCPT to no registered authority | 550 5.1.1 | the reply says how to address one |
| RCPT to an 11th authority | 452 4.5.3 | each is a message: send the rest apart |
| documents over ``max_bytes`` once decoded | 552 5.3.4 | MeMo's citizen limit (10 MB) |
| a MeMo rule broken (label > 256, 11 files) | 550 5.6.0 | the first violation's code, hint |
| Kafka did not take it | 451 4.3.0 | temporary: the client sends again |
| accepted | 250 2.0.0 | ``OK: queued as <messageUUID> ...`` |

Logs name the token id and message UUIDs; never a CPR number, address or content.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import ssl
import uuid
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, AnyStr

import structlog
from aiokafka.errors import KafkaError
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import Counter

from connectors.citizens import AuthError, Citizen, IdentityProvider
from connectors.mail.mime import MailError, citizen_envelope, read_mail
from connectors.sdk import Receipt
from schemas import memo
from schemas.errors import Dp2Error
from schemas.models import Envelope
from schemas.values import is_ascii_digits

log = structlog.get_logger("dp2.mail")

AUTH_REQUIRED = (
    "530 5.7.0 Authentication required: use STARTTLS, then AUTH with your DP2 citizen "
    "token as the password"
)
_AUTH_BAD = (
    "535 5.7.8 Authentication credentials invalid: the password must be your DP2 citizen "
    "token (the user name is not used)"
)
_AUTH_EXPIRED = (
    "535 5.7.8 Authentication credentials invalid: the token has expired; log in to get "
    "a new one and use it as the password"
)
_UNAVAILABLE = "451 4.3.0 DP2 did not take the mail just now; nothing was sent, try again"
MAX_AUTHORITIES = 10
_MAX_REPLY = 500  # RFC 5321: a reply line is at most 512 octets


def mail_limit(max_bytes: int) -> int:
    """The SMTP SIZE for ``max_bytes`` of documents: base64 (78 bytes per 57) and headers."""
    return max_bytes * 78 // 57 + 64 * 1024


@dataclass(frozen=True, slots=True, repr=False)
class Login:
    """The session's citizen; its repr shows the token id only (aiosmtpd may log it)."""

    citizen: Citizen

    def __repr__(self) -> str:
        return f"Login(token_id={self.citizen.token_id})"


class SubmissionHandler:
    """aiosmtpd's handler: checks the login, the addresses and the mail, and sends."""

    def __init__(
        self,
        *,
        domain: str,
        max_bytes: int,
        identities: IdentityProvider,
        is_authority: Callable[[str], bool],
        send: Callable[[Envelope], Awaitable[Receipt]],
        uuid_key: bytes,
        outcomes: Counter,
    ) -> None:
        self.domain = domain
        self.max_bytes = max_bytes
        self._identities = identities
        self._is_authority = is_authority
        self._send = send
        self._uuid_key = uuid_key
        self._outcomes = outcomes

    def authenticate(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, mechanism: str, data: Any
    ) -> AuthResult:
        """aiosmtpd's authenticator: the password is a citizen token; the user is ignored."""
        try:
            if not isinstance(data, LoginPassword):
                raise AuthError("no password was given")
            citizen = self._identities.authenticate(data.password.decode("utf-8"))
        except (AuthError, UnicodeDecodeError) as exc:
            code = exc.reason_code if isinstance(exc, AuthError) else "INVALID_TOKEN"
            self._outcomes.labels("auth_refused").inc()
            log.info("smtp_auth_refused", reason_code=code, mechanism=mechanism)
            reply = _AUTH_EXPIRED if code == "TOKEN_EXPIRED" else _AUTH_BAD
            return AuthResult(success=False, handled=False, message=reply)
        log.info("smtp_login", token_id=citizen.token_id, mechanism=mechanism)
        return AuthResult(success=True, auth_data=Login(citizen))

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        local, _, domain = address.rpartition("@")
        if domain.lower() != self.domain:
            self._outcomes.labels("relay_denied").inc()
            return _reply(
                f"550 5.7.1 Relaying denied: this server takes mail only for authorities "
                f"at @{self.domain}"
            )
        if not is_ascii_digits(local, 8) or not self._is_authority(local):
            self._outcomes.labels("unknown_authority").inc()
            return _reply(
                f"550 5.1.1 <{address}>: no authority with that address on DP2; write to "
                f"the authority's 8-digit CVR number, e.g. 29189846@{self.domain}"
            )
        if local in _authorities(envelope):
            return "250 2.1.5 OK"
        if len(envelope.rcpt_tos) >= MAX_AUTHORITIES:  # each is a message: bound the work
            return _reply(
                f"452 4.5.3 Too many recipients: at most {MAX_AUTHORITIES} authorities per "
                "mail; send the rest in another mail"
            )
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        login = session.auth_data
        if not isinstance(login, Login):  # aiosmtpd asks for AUTH before DATA
            return AUTH_REQUIRED
        try:
            return await self._submit(
                login.citizen, envelope.original_content or b"", _authorities(envelope)
            )
        except Exception:  # a bug must not show the client a traceback or drop the mail
            log.exception("mail_submit_error", token_id=login.citizen.token_id)
            self._outcomes.labels("error").inc()
            return _UNAVAILABLE

    async def _submit(self, citizen: Citizen, raw: bytes, authorities: list[str]) -> str:
        try:
            mail = read_mail(raw, self.domain)
        except MailError as exc:
            self._outcomes.labels("unreadable").inc()
            return _reply(f"550 5.6.0 {exc.reason_code}: {exc.message}. {exc.hint}")
        if mail.size > self.max_bytes:
            self._outcomes.labels("too_large").inc()
            return self.too_large()
        now = datetime.now(UTC)
        messages = [
            citizen_envelope(
                mail, cpr=citizen.cpr, cvr=cvr, message_uuid=self._uuid(citizen, cvr, raw), now=now
            )
            for cvr in authorities
        ]
        for message in messages:
            violations = memo.validate(message, now=now)
            if violations:
                first = violations[0]
                self._outcomes.labels("invalid").inc()
                log.info("mail_refused", token_id=citizen.token_id, reason_code=first.code)
                return _reply(f"550 5.6.0 {first.code}: {first.message}. {first.hint}")
        return await self._send_all(citizen, messages)

    async def _send_all(self, citizen: Citizen, messages: list[Envelope]) -> str:
        queued: list[str] = []
        for message in messages:
            try:
                receipt = await self._send(message)
            except (KafkaError, OSError) as exc:
                return self._not_sent(citizen, message, repr(exc))
            except Dp2Error as exc:
                if exc.retriable:
                    return self._not_sent(citizen, message, exc.reason_code)
                self._outcomes.labels("refused").inc()
                return _reply(f"550 5.6.0 {exc.reason_code}: {exc.message}. {exc.hint}")
            queued.append(receipt.message_uuid)
            self._outcomes.labels("submitted").inc()
            log.info("mail_submitted", message_id=receipt.message_uuid, token_id=citizen.token_id)
        return f"250 2.0.0 OK: queued as {' '.join(queued)}"

    def too_large(self) -> str:
        return _reply(
            f"552 5.3.4 Message too big: an authority takes at most {self.max_bytes:,} bytes "
            f"of documents ({mail_limit(self.max_bytes):,} bytes of mail); send fewer or "
            "smaller attachments, or several mails"
        )

    def _not_sent(self, citizen: Citizen, message: Envelope, error: str) -> str:
        self._outcomes.labels("unavailable").inc()
        log.warning(
            "mail_not_sent",
            message_id=message.header.messageUUID,
            token_id=citizen.token_id,
            error=error,
        )
        return _UNAVAILABLE

    def _uuid(self, citizen: Citizen, cvr: str, raw: bytes) -> str:
        """The same version-4 UUID for the same mail from the same citizen to one authority.

        Keyed, so that a UUID (which is public in traces) does not let anyone confirm
        a guess of who wrote what.
        """
        material = b"\0".join(
            (b"dp2-mail-uuid", citizen.cpr.encode(), cvr.encode(), hashlib.sha256(raw).digest())
        )
        digest = hmac.new(self._uuid_key, material, hashlib.sha256).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))


class SubmissionServer:
    """The SMTP server on the current event loop (``start``/``stop``; stop is safe twice)."""

    def __init__(self, handler: SubmissionHandler, tls: ssl.SSLContext, hostname: str) -> None:
        self._handler = handler
        self._tls = tls
        self._hostname = hostname
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        if self._server is not None:
            return self.port
        _quiet_library_log()
        loop = asyncio.get_running_loop()
        replies = {"552 Error": self._handler.too_large(), "530 5.7.0": AUTH_REQUIRED}

        def session() -> SMTP:
            smtp = _Session(
                self._handler,
                replies=replies,
                hostname=self._hostname,
                ident="DP2 mail submission",
                tls_context=self._tls,
                data_size_limit=mail_limit(self._handler.max_bytes),
                auth_required=True,
                auth_require_tls=True,
                authenticator=self._handler.authenticate,
                loop=loop,
            )
            self._sessions.add(smtp)
            return smtp

        self._server = await loop.create_server(session, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for smtp in list(self._sessions):  # a client mid-session is cut off, not waited for
            if smtp.transport is not None:
                smtp.transport.close()
        await server.wait_closed()

    @property
    def running(self) -> bool:
        return self._server is not None


class _Session(SMTP):
    """aiosmtpd's SMTP with DP2's wording where the library answers by itself.

    Its size and AUTH-required replies have no enhanced status code or no advice
    (``552 Error: Too much mail data``), and it checks both before any handler hook.
    """

    def __init__(self, handler: SubmissionHandler, *, replies: dict[str, str], **kw: Any) -> None:
        super().__init__(handler, **kw)
        self._replies = replies

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            for prefix, reply in self._replies.items():
                if status.startswith(prefix) and status != reply:
                    await super().push(reply)
                    return
        await super().push(status)


def tls_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """The server side of STARTTLS (TLS 1.2 or later; no client certificates)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    return context


def dev_certificate(directory: Path, domain: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``domain`` (and 127.0.0.1), made once in ``directory``.

    For development and tests only: mail clients warn about it. In production set
    ``tls_cert``/``tls_key`` to a certificate a public CA issued for the domain.
    """
    cert_path, key_path = directory / "smtp-tls.crt", directory / "smtp-tls.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(domain),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_private(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600 (the key first, so a certificate implies its key)."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    partial.replace(path)


def _authorities(envelope: SmtpEnvelope) -> list[str]:
    return [address.rpartition("@")[0] for address in envelope.rcpt_tos]


def _reply(text: str) -> str:
    """One SMTP reply line: ASCII only (aiosmtpd writes ASCII), within RFC 5321's length."""
    line = " ".join(text.split()).encode("ascii", errors="replace").decode("ascii")
    return line if len(line) <= _MAX_REPLY else line[: _MAX_REPLY - 3] + "..."


def _not_login_data(record: logging.LogRecord) -> bool:
    return "login_data is deprecated" not in record.getMessage()


def _quiet_library_log() -> None:
    """aiosmtpd logs every DATA line at DEBUG and addresses at INFO; DP2 logs neither.

    It also warns on every login about an attribute that it sets itself (1.4).
    """
    library = logging.getLogger("mail.log")
    library.setLevel(logging.WARNING)
    library.addFilter(_not_login_data)  # a no-op when the filter is there already
