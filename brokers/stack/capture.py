"""Local capture of e-mail and SMS: the citizen's inbox and phone on the embedded default.

Why it exists: a third of the mission is the alert a citizen gets, and a newcomer
running ``make run`` has no SMTP relay or SMS gateway. ``dp2 up`` runs this service
when neither is configured (DP2_SMTP_HOST, DP2_SMS_PROVIDERS) and points the notifier
at it, so every notification really travels: over SMTP to a real server (aiosmtpd)
on 127.0.0.1, and as ``POST /sms`` with the JSON of connectors.notify.channels'
HttpSmsProvider to this service's own HTTP port. Nothing leaves the machine.

    SMTP  127.0.0.1:<DP2_PORT_BASE + 25>     every mail is accepted and kept
    POST  /sms   {"to", "text", "reference"} kept once per reference (Idempotency-Key)
    GET   /captured?channel=SMS|EMAIL&limit=N    newest first; operator token needed

What is kept is what the outside world would hold — the address or number, the
text, the time — in ``$DP2_HOME/data/capture.sqlite`` (0600). The list is behind the
deployment's operator token (``dp2 capture`` uses the local one), since it holds the
demo citizens' addresses; the dashboard shows notifications by pseudonym instead.
Not for production: a real deployment configures its relay and SMS providers.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import sqlite3
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Final

import structlog
from aiohttp import web
from aiosmtpd.smtp import SMTP

from brokers.runtime import sqlite
from brokers.runtime.host import ServiceContext
from brokers.runtime.tasks import AsyncResource
from schemas.values import parse_ascii_int
from tracing.access import Users

log = structlog.get_logger("dp2.capture")

#: The SMTP port is DP2_PORT_BASE + this (8495 by default), next to the HTTP ports.
SMTP_PORT_OFFSET: Final = 25
MAX_SMS_BODY: Final = 4096
MAX_MAIL_BYTES: Final = 1_000_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS captured (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL, channel TEXT NOT NULL, recipient TEXT NOT NULL,
    subject TEXT, text TEXT NOT NULL, reference TEXT UNIQUE);
"""


def smtp_port_of(port_base: int) -> int:
    return port_base + SMTP_PORT_OFFSET


class CaptureStore:
    """The captured mails and SMS, one row each (a repeated reference is kept once)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.executescript(_SCHEMA)

    def add(
        self, channel: str, recipient: str, text: str, *, subject: str | None, reference: str | None
    ) -> bool:
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO captured (at, channel, recipient, subject, text, reference)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (datetime.now(UTC).isoformat(), channel, recipient, subject, text, reference),
        )
        self._db.commit()
        return cursor.rowcount == 1

    def recent(self, channel: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = "SELECT at, channel, recipient, subject, text FROM captured"
        params: list[Any] = []
        if channel:
            query += " WHERE channel = ?"
            params.append(channel)
        rows = self._db.execute(query + " ORDER BY seq DESC LIMIT ?", [*params, limit])
        return [
            {"at": at, "channel": ch, "to": to, "subject": subject, "text": text}
            for at, ch, to, subject, text in rows
        ]


class _SmtpHandler:
    """aiosmtpd handler: every mail to anyone is kept (the subject and the plain text)."""

    def __init__(self, store: CaptureStore) -> None:
        self._store = store

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        message = email.message_from_bytes(data, policy=email.policy.default)
        subject = str(message.get("Subject", ""))
        body = message.get_body(("plain",)) if isinstance(message, EmailMessage) else None
        text = body.get_content().strip() if body is not None else ""
        reference = str(message.get("Message-ID", "")) or None
        for recipient in envelope.rcpt_tos:
            # The same Message-ID is the notifier's retry of the same notification.
            ref = f"{reference}|{recipient}" if reference else None
            self._store.add("EMAIL", recipient, text, subject=subject, reference=ref)
        log.info("mail_captured", recipients=len(envelope.rcpt_tos))
        return "250 OK: captured"


class CaptureService(AsyncResource):
    """The SMTP server and the SMS endpoint (see the module docstring)."""

    name = "capture"
    workers: tuple[()] = ()

    def __init__(self, ctx: ServiceContext) -> None:
        self._settings = ctx.settings
        self._db = sqlite.connect(ctx.data_dir / "capture.sqlite")
        self.store = CaptureStore(self._db)
        self.smtp_port = smtp_port_of(ctx.settings.port_base)
        self._server: asyncio.Server | None = None
        self._users = Users.of(ctx.settings)

    async def start(self) -> None:
        if self._server is not None:
            return
        handler = _SmtpHandler(self.store)
        # On this event loop (not aiosmtpd's Controller thread): the store is one
        # SQLite connection, used from one thread.
        self._server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(handler, data_size_limit=MAX_MAIL_BYTES, hostname="capture.dp2.local"),
            "127.0.0.1",
            self.smtp_port,
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
            self._db.close()
            self._users.close()

    def health(self) -> Mapping[str, Any]:
        return {"check": "capture", "status": "ok", "smtp": f"127.0.0.1:{self.smtp_port}"}

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [web.post("/sms", self._sms), web.get("/captured", self._captured)]

    async def _sms(self, request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_SMS_BODY:
            return _error(413, "REQUEST_TOO_LARGE", "an SMS request is a small JSON object")
        try:
            body = json.loads(await request.content.read(MAX_SMS_BODY + 1))
            to, text = str(body["to"]), str(body["text"])
        except (ValueError, KeyError, TypeError):
            return _error(400, "INVALID_SMS_REQUEST", 'send {"to": "+45...", "text": "..."}')
        reference = request.headers.get("Idempotency-Key") or body.get("reference")
        self.store.add("SMS", to, text, subject=None, reference=reference)
        log.info("sms_captured")
        return web.json_response({"status": "queued"})

    async def _captured(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        user = self._users.from_token(token or None)
        if user is None or user.role != "operator":
            return _error(401, "AUTH_REQUIRED", "send an operator token (dp2 dashboard token NAME)")
        channel = request.query.get("channel", "").upper() or None
        if channel not in (None, "SMS", "EMAIL"):
            return _error(400, "BAD_QUERY", "channel is SMS or EMAIL")
        limit = parse_ascii_int(request.query.get("limit", "50"))
        if limit is None or not 1 <= limit <= 1000:
            return _error(400, "BAD_QUERY", "limit is a number from 1 to 1000")
        return web.json_response({"captured": self.store.recent(channel, limit)})


def _error(status: int, code: str, hint: str) -> web.Response:
    return web.json_response(
        {"reasonCode": code, "message": "the capture refused the request", "hint": hint},
        status=status,
    )


def create(ctx: ServiceContext) -> CaptureService:
    return CaptureService(ctx)
