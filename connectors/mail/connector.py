"""The mail connector: an SMTP submission server to authorities, and forwarding of post.

Why it exists: see the package docstring. This module wires it up — configuration,
start/stop/health — and holds the receiving half: as the mailbox provider
``provider``, it keeps each letter for a citizen durably (connectors.mail.store) and
forwards it to the EMAIL address in their contact record, as the citizen chose:

    GET /forwarding                      Authorization: Bearer <citizen token>
    PUT /forwarding  {"mode": "full" | "notice" | "off"}     (default "notice")

``full`` sends the letter (main text as the body, every file attached), ``notice``
only who sent it, ``off`` nothing. A PUT body over 4 KiB is refused with 413
``REQUEST_TOO_LARGE`` as it streams in (connectors.bodies), never buffered whole.
A relay that is down is retried with back-off; until it takes the mail the letter
is pending, and /healthz says ``degraded``.

Configuration (``[connectors.mail]`` in ``$DP2_HOME/connectors.toml``)::

    domain = "post.dp2.local"        # authorities are <cvr>@domain
    identity = "provider-mailgw"     # PKI identity that signs citizens' mail
    smtp_port = 587                  # 0 (default): any free port, shown in /healthz
    smtp_host = "127.0.0.1"
    max_bytes = 10000000             # documents per mail (MeMo's citizen limit, at most)
    tls_cert = "/etc/dp2/mail.crt"   # and tls_key; without them a self-signed
    tls_key = "/etc/dp2/mail.key"    #   development certificate is made in data_dir
    provider = "mailgw"              # optional: forward post of citizens registered here
    contact_details = true           # with provider: the operator lets it read e-mail addresses
    relay_host = "smtp.example.dk"   # the SMTP relay that forwarding sends through
    relay_port = 25
    relay_starttls = false           # and relay_username / relay_password if it wants them
    from_address = "noreply@post.dp2.local"    # default noreply@<domain>
    attach_max_bytes = 15000000      # full mode: files over this go as a notice instead

Big letters stay out of memory: as a mailbox provider the connector has its own
plaintext folder (``documents/`` in its data dir, a FileBlobStore that
connectors.delivery decrypts blob-stored documents into a chunk at a time), so a
99.5 MB letter is a small row in the forwarding queue. Mail relays cap the size of a
mail (often 20 to 50 MB after base64), so in ``full`` mode a letter whose files are over
``attach_max_bytes`` is forwarded as a ``notice`` that says it was too large: its
files are never read into memory to be attached.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import structlog
from aiohttp import web
from prometheus_client import Counter, Gauge

from brokers.contacts.register import ContactRegister
from brokers.runtime.blobstore import FileBlobStore
from brokers.runtime.tasks import AsyncResource, PeriodicTask
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.security.sealing import files_of
from brokers.validator.rules import MAX_CITIZEN_BYTES, MAX_CITIZEN_BYTES_CEILING
from connectors import documents
from connectors.base import ConnectorContext, error_response
from connectors.bodies import BodyTooLargeError, read_limited
from connectors.citizens import AuthError, Citizen, DevTokens, IdentityProvider, bearer
from connectors.mail.mime import MODES, Mode, forward_mail
from connectors.mail.store import MailStore, Pending
from connectors.mail.submission import (
    SubmissionHandler,
    SubmissionServer,
    dev_certificate,
    tls_context,
)
from connectors.notify.channels import NotificationError
from connectors.sdk import Dp2Client
from schemas import codec
from schemas.errors import ConfigError, Dp2Error
from schemas.models import ContactStatus, Envelope, NotificationChannel
from schemas.vocabulary import CONTACTS_TOPIC

log = structlog.get_logger("dp2.mail")

_MAX_MODE_BODY = 4096  # {"mode": "notice"} and room to spare
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


@dataclass(frozen=True, slots=True)
class MailConfig:
    domain: str
    identity: str
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 0
    max_bytes: int = MAX_CITIZEN_BYTES
    tls_cert: Path | None = None
    tls_key: Path | None = None
    provider: str | None = None
    relay_host: str = "127.0.0.1"
    relay_port: int = 25
    relay_starttls: bool = False
    relay_username: str | None = None
    relay_password: str | None = None
    from_address: str = ""
    poll_s: float = 1.0
    retry_max_s: float = 60.0
    attach_max_bytes: int = 15_000_000

    @classmethod
    def from_context(cls, context: ConnectorContext) -> MailConfig:
        where = f"[connectors.{context.name}]"
        domain = str(context.require("domain")).lower()
        if not _DOMAIN.match(domain):
            raise ConfigError(
                f"{where}: domain {domain!r} is not a domain name",
                hint='Write the mail domain of the authorities, e.g. domain = "post.dp2.dk".',
            )
        max_bytes = int(context.option("max_bytes", MAX_CITIZEN_BYTES))
        if not 0 < max_bytes <= MAX_CITIZEN_BYTES_CEILING:
            raise ConfigError(
                f"{where}: max_bytes must be between 1 and {MAX_CITIZEN_BYTES_CEILING}",
                hint="MeMo allows 10 MB from a citizen, or up to 60 MB where the authority "
                "allows it; DP2's validator refuses anything above 60 MB.",
            )
        cert, key = context.option("tls_cert"), context.option("tls_key")
        if (cert is None) != (key is None):
            raise ConfigError(
                f"{where}: tls_cert and tls_key go together",
                hint="Give both paths, or neither for a self-signed development certificate.",
            )
        provider = context.option("provider")
        if provider is not None and context.option("relay_host") is None:
            raise ConfigError(
                f"{where}: forwarding post (provider = {provider!r}) needs relay_host",
                hint="Add relay_host (and relay_port) of the SMTP relay to forward through.",
            )
        if provider is not None and context.option("contact_details") is not True:
            raise ConfigError(
                f"{where}: forwarding post reads the citizens' e-mail addresses "
                "(dp2.contacts), which only a connector granted contact_details may",
                hint="Add contact_details = true to the table (the operator's grant; "
                "dp2 kafka acls then shows the right), or remove provider.",
            )
        return cls(
            domain=domain,
            identity=str(context.require("identity")),
            smtp_host=str(context.option("smtp_host", "127.0.0.1")),
            smtp_port=int(context.option("smtp_port", 0)),
            max_bytes=max_bytes,
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            provider=str(provider) if provider else None,
            relay_host=str(context.option("relay_host", "127.0.0.1")),
            relay_port=int(context.option("relay_port", 25)),
            relay_starttls=bool(context.option("relay_starttls", False)),
            relay_username=context.option("relay_username"),
            relay_password=context.option("relay_password"),
            from_address=str(context.option("from_address", f"noreply@{domain}")),
            poll_s=float(context.option("poll_s", 1.0)),
            retry_max_s=float(context.option("retry_max_s", 60.0)),
            attach_max_bytes=int(context.option("attach_max_bytes", 15_000_000)),
        )


def create(context: ConnectorContext) -> MailConnector:
    """The ``dp2.connectors`` entry point: the forwarding variant when ``provider`` is set."""
    config = MailConfig.from_context(context)
    if config.provider is not None:
        return ForwardingMailConnector(context, config)
    return MailConnector(context, config)


class MailConnector(AsyncResource):
    """The SMTP submission server alone (a Connector; see the module docstring)."""

    def __init__(
        self,
        context: ConnectorContext,
        config: MailConfig,
        identities: IdentityProvider | None = None,
    ) -> None:
        self.name = context.name
        self.config = config
        self._data_dir = context.data_dir
        self._identities = identities or DevTokens.from_home(context.settings.home)
        self._pseudonyms = Pseudonymizer(pseudonym_key(context.settings.home))
        self._contacts = ContactRegister(context.settings.kafka)
        self._client = Dp2Client.from_settings(
            context.settings,
            config.identity,
            contacts=self._contacts,
            actor=f"connector:{self.name}",
        )
        self._outcomes = Counter(
            "dp2_mail_submissions",
            "Mail submitted over SMTP, by outcome (submitted, refused, unavailable, ...)",
            ["outcome"],
            registry=context.registry,
        )
        handler = SubmissionHandler(
            domain=config.domain,
            max_bytes=config.max_bytes,
            identities=self._identities,
            is_authority=self._is_authority,
            send=self._client.send,
            # Keyed with the deployment's pseudonym key (with its own label in the
            # input), so message UUIDs derived from a mail reveal nothing of it.
            uuid_key=pseudonym_key(context.settings.home),
            outcomes=self._outcomes,
        )
        self._smtp: SubmissionServer | None = None
        self._handler = handler
        self.smtp_port = 0

    async def start(self) -> None:
        if self._smtp is not None:
            return
        if self.config.tls_cert is not None and self.config.tls_key is not None:
            tls = tls_context(self.config.tls_cert, self.config.tls_key)
        else:
            tls = tls_context(
                *await asyncio.to_thread(dev_certificate, self._data_dir, self.config.domain)
            )
        await self._contacts.start()
        await self._client.start()
        self._smtp = SubmissionServer(self._handler, tls, self.config.domain)
        self.smtp_port = await self._smtp.start(self.config.smtp_host, self.config.smtp_port)
        log.info("smtp_listening", port=self.smtp_port, domain=self.config.domain)

    async def stop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        await smtp.stop()
        await self._client.stop()
        await self._contacts.stop()

    def health(self) -> Mapping[str, Any]:
        running = self._smtp is not None and self._smtp.running
        return {
            "check": "mail",
            "status": "ok" if running else "failing",
            "smtpPort": self.smtp_port,
            "domain": self.config.domain,
        }

    def _is_authority(self, cvr: str) -> bool:
        record = self._contacts.get(self._pseudonyms.ref("CVR", cvr))
        return record is not None and record.status is ContactStatus.REGISTERED


class ForwardingMailConnector(MailConnector):
    """The submission server, plus the mailbox ``provider`` that forwards post by e-mail."""

    def __init__(
        self,
        context: ConnectorContext,
        config: MailConfig,
        identities: IdentityProvider | None = None,
    ) -> None:
        super().__init__(context, config, identities)
        assert config.provider is not None  # noqa: S101 - create() picks this class for it
        self.provider_id = config.provider
        self._store = MailStore.open(context.settings.database_url, context.data_dir, context.name)
        # Plaintext of blob-stored documents, decrypted into it a chunk at a time.
        self.documents = FileBlobStore(context.data_dir / "documents")
        # The e-mail address to forward to is a contact detail, not a directory entry.
        self._contact_details = ContactRegister(context.settings.kafka, topic=CONTACTS_TOPIC)
        self._forwarding = PeriodicTask(
            "mail-forward", self._forward_due, config.poll_s, metrics=context.metrics
        )
        self._backlog = Gauge(
            "dp2_mail_forward_backlog",
            "Letters waiting for the relay to take them",
            registry=context.registry,
        )

    async def start(self) -> None:
        await super().start()
        await self._contact_details.start()
        await self._forwarding.start()

    async def stop(self) -> None:
        await self._forwarding.stop()
        await self._contact_details.stop()
        self._store.close()
        await super().stop()

    def health(self) -> Mapping[str, Any]:
        report = dict(super().health())
        backlog = self._store.backlog()
        self._backlog.set(backlog["forwardPending"])
        forwarding = self._forwarding.health()
        if report["status"] == "ok" and (backlog["forwardFailing"] or forwarding["status"] != "ok"):
            report["status"] = "degraded"
        return {**report, **backlog, "tasks": [forwarding]}

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.get("/forwarding", self._get_mode), web.put("/forwarding", self._put_mode)]

    # --- receiving --------------------------------------------------------------
    async def receive(self, message: Envelope) -> None:
        """Keep a letter for forwarding (durable before it returns; a repeat is a no-op)."""
        recipient = message.header.recipient
        citizen_ref = self._pseudonyms.ref(recipient.idType.value, recipient.recipientID)
        self._store.queue(message.header.messageUUID, citizen_ref, codec.encode(message))
        log.info("mail_forward_queued", message_id=message.header.messageUUID)

    async def _forward_due(self) -> None:
        if not self._store.leads():  # another instance forwards
            return
        for item in self._store.due(time.time()):
            if not await self._forward(item):
                return  # the relay is not taking mail: keep the order, try again later

    async def _forward(self, item: Pending) -> bool:
        """Forward one letter as its recipient chose; False when the relay should wait."""
        mode = self._store.mode(item.citizen_ref)
        if mode == "off":
            self._store.finish(item.seq, "kept", mode=mode)
            return True
        record = self._contact_details.get(item.citizen_ref)
        if record is None:  # routed here by a record this cache has not read yet
            self._store.retry_later(item.seq, "no contact record yet", self._retry_at(item))
            return True
        address = next(
            (c.address for c in record.channels if c.channel is NotificationChannel.EMAIL), None
        )
        if address is None:
            self._store.finish(item.seq, "unaddressed", mode=mode)
            log.info("mail_forward_unaddressed", message_id=item.message_uuid)
            return True
        letter = codec.decode(item.envelope, Envelope)
        size = sum(documents.size_of(f) for f in files_of(letter.body))
        too_large = mode == "full" and size > self.config.attach_max_bytes
        if too_large:
            log.info("mail_forward_too_large", message_id=item.message_uuid, bytes=size)
        mail = forward_mail(
            letter,
            mode="notice" if too_large else mode,
            to=address,
            from_address=self.config.from_address,
            domain=self.config.domain,
            language=record.language or "da",
            read=lambda file: documents.read(file, self.documents),
            too_large_bytes=size if too_large else None,
        )
        try:
            await self._relay(mail, address)
        except NotificationError as exc:
            if not exc.retriable:
                self._store.finish(item.seq, "failed", mode=mode, error=exc.message)
                log.warning("mail_forward_failed", message_id=item.message_uuid, error=exc.message)
                return True
            self._store.retry_later(item.seq, exc.message, self._retry_at(item))
            log.warning("mail_forward_retry", message_id=item.message_uuid, error=exc.message)
            return False
        self._store.finish(item.seq, "forwarded", mode=mode)
        log.info("mail_forwarded", message_id=item.message_uuid, mode=mode)
        return True

    def _retry_at(self, item: Pending) -> float:
        return time.time() + min(0.5 * float(2 ** min(item.attempts, 20)), self.config.retry_max_s)

    async def _relay(self, mail: EmailMessage, address: str) -> None:
        """Hand one mail to the relay; NotificationError (with its ``retriable``) if not taken."""
        config = self.config
        try:
            await aiosmtplib.send(
                mail,
                sender=config.from_address,
                recipients=[address],
                hostname=config.relay_host,
                port=config.relay_port,
                start_tls=config.relay_starttls,
                username=config.relay_username,
                password=config.relay_password,
                timeout=30,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients] or [550]
            raise _relay_error(min(codes), "refused the address") from exc
        except aiosmtplib.SMTPAuthenticationError as exc:  # our account, not the citizen's
            raise NotificationError(
                f"the relay refused our login ({exc.code})",
                kind="technical",
                reason_code="RELAY_AUTH_FAILED",
                hint="Check relay_username and relay_password; forwarding tries again.",
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _relay_error(exc.code, "refused the mail") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise NotificationError(
                f"the relay {config.relay_host}:{config.relay_port} did not answer: "
                f"{type(exc).__name__}",
                kind="technical",
                reason_code="RELAY_UNREACHABLE",
                hint="Check relay_host and relay_port; forwarding tries again.",
            ) from exc

    # --- the citizen's choice ---------------------------------------------------
    async def _get_mode(self, request: web.Request) -> web.Response:
        try:
            citizen = self._citizen(request)
        except AuthError as exc:
            return error_response(401, exc)
        return web.json_response(self._mode_body(citizen))

    async def _put_mode(self, request: web.Request) -> web.Response:
        try:
            citizen = self._citizen(request)
        except AuthError as exc:
            return error_response(401, exc)
        try:  # a mode is a few bytes: a larger body is refused as it streams in
            body = json.loads(await read_limited(request, _MAX_MODE_BODY))
        except BodyTooLargeError as exc:
            return error_response(exc.status, exc)
        except ValueError:
            body = None
        mode = body.get("mode") if isinstance(body, dict) else None
        chosen = next((m for m in MODES if m == mode), None)
        if chosen is None:
            return error_response(
                400,
                Dp2Error(
                    "the body must be a JSON object with a forwarding mode",
                    reason_code="BAD_FORWARDING_MODE",
                    hint='Send {"mode": "full"}, {"mode": "notice"} or {"mode": "off"}.',
                ),
            )
        self._store.set_mode(self._pseudonyms.ref("CPR", citizen.cpr), chosen)
        log.info("mail_forwarding_mode", token_id=citizen.token_id, mode=chosen)
        return web.json_response(self._mode_body(citizen))

    def _citizen(self, request: web.Request) -> Citizen:
        return self._identities.authenticate(bearer(request.headers.get("Authorization")))

    def _mode_body(self, citizen: Citizen) -> dict[str, Any]:
        ref = self._pseudonyms.ref("CPR", citizen.cpr)
        record = self._contact_details.get(ref)  # channels are contact details
        mode: Mode = self._store.mode(ref)
        return {
            "mode": mode,
            "modes": list(MODES),
            "emailRegistered": record is not None
            and any(c.channel is NotificationChannel.EMAIL for c in record.channels),
            "forwardedByThisProvider": record is not None
            and record.mailboxProvider == self.provider_id,
        }


def _relay_error(code: int, what: str) -> NotificationError:
    """5xx is final (the address or mail is refused for good); anything else may pass."""
    if code >= 500:
        return NotificationError(
            f"the relay {what} ({code})",
            kind="permanent",
            reason_code="RELAY_REFUSED",
            hint="The citizen should correct their e-mail address in the contact register.",
        )
    return NotificationError(
        f"the relay {what} for now ({code})",
        kind="temporary",
        reason_code="RELAY_UNAVAILABLE",
        hint="Nothing to fix if it passes; forwarding tries again.",
    )
