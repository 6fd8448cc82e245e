"""Mailbox-app connector: the REST API a citizen's app reads and answers post through.

Why it exists: the reference mailbox stores what is delivered; a citizen needs to
*use* it — list, read, reply — from any vendor's app, and a relative given read
access (læseadgang) must be able to read but never act. This connector serves that
API over the reference mailbox of one provider (``mailbox = "<provider id>"``), with
the rules of Danish Digital Post:

- every request is bound to one person by a bearer token (connectors.citizens); a
  mailbox is ``me`` or one whose owner granted the caller read access; anything
  else is 404 — one citizen never learns that another's message exists;
- marking a message read emits READ only if the owner consented to read receipts
  (the contact register's ``readReceiptsConsent``); a delegate's reading is not the
  owner's;
- a reply is allowed to the owner only, only when the message allows replies and
  before its replyByDateTime; it is a new signed message to the sending authority
  with ReplyData (its ESDH connector journals it on the case), and REPLIED joins the
  original's trace;
- read access is granted and revoked by the owner and takes effect at once;
- every access — allowed or refused — is written to an audit trail the owner can
  read (``GET /audit``); identities there are pseudonyms.

State of its own: read marks, delegations, replies, audit — in ``apps.sqlite`` in its
data dir or, with DP2_DATABASE_URL, the PostgreSQL schema ``apps_<connector>``; the
mailbox is read through connectors.mailbox's store, on the same backend.

Why one module over 500 lines: the mailbox-app API is one connector — its routes,
consent rules and audit trail share one store and one identity check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from brokers.contacts.register import ContactRegister
from brokers.runtime.blobstore import FileBlobStore
from brokers.runtime.kafka import new_producer
from brokers.runtime.postgres import Migration
from brokers.runtime.records import lifecycle_output
from brokers.runtime.sqlstore import Tables, open_store, schema_name
from brokers.runtime.tasks import AsyncResource
from brokers.security import sealing
from brokers.security.pki import EventSigner, Pki, provider_identity_name
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from connectors import documents
from connectors.base import ConnectorContext, error_response
from connectors.citizen_openapi import apps_openapi
from connectors.citizens import (
    AuthError,
    Citizen,
    DevTokens,
    IdentityProvider,
    bearer,
    citizen_message,
)
from connectors.mailbox import MailboxStore, documents_dir
from connectors.sdk import Document, Dp2Client
from schemas import memo
from schemas.errors import Dp2Error
from schemas.models import (
    CaseID,
    ContentData,
    Envelope,
    File,
    LifecycleState,
    ReplyData,
)
from schemas.values import is_ascii_digits, parse_ascii_int

log = structlog.get_logger("dp2.apps")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reads (owner_ref TEXT NOT NULL, message_uuid TEXT NOT NULL,
    read_at TEXT NOT NULL, PRIMARY KEY (owner_ref, message_uuid));
CREATE TABLE IF NOT EXISTS delegations (owner_ref TEXT NOT NULL, owner_cpr TEXT NOT NULL,
    delegate_ref TEXT NOT NULL, granted_at TEXT NOT NULL, revoked_at TEXT,
    PRIMARY KEY (owner_ref, delegate_ref));
CREATE TABLE IF NOT EXISTS replies (original_uuid TEXT NOT NULL, reply_uuid TEXT PRIMARY KEY,
    sent_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,
    actor_ref TEXT NOT NULL, mailbox_ref TEXT, action TEXT NOT NULL, message_uuid TEXT,
    outcome TEXT NOT NULL);
"""
_POSTGRES = (
    Migration(
        1,
        "reads, delegations, replies, audit",
        """
        CREATE TABLE reads (owner_ref TEXT NOT NULL, message_uuid TEXT NOT NULL,
            read_at TEXT NOT NULL, PRIMARY KEY (owner_ref, message_uuid));
        CREATE TABLE delegations (owner_ref TEXT NOT NULL, owner_cpr TEXT NOT NULL,
            delegate_ref TEXT NOT NULL, granted_at TEXT NOT NULL, revoked_at TEXT,
            PRIMARY KEY (owner_ref, delegate_ref));
        CREATE INDEX delegations_delegate ON delegations (delegate_ref);
        CREATE TABLE replies (original_uuid TEXT NOT NULL, reply_uuid TEXT PRIMARY KEY,
            sent_at TEXT NOT NULL);
        CREATE TABLE audit (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at TEXT NOT NULL, actor_ref TEXT NOT NULL, mailbox_ref TEXT,
            action TEXT NOT NULL, message_uuid TEXT, outcome TEXT NOT NULL);
        CREATE INDEX audit_mailbox ON audit (mailbox_ref, seq);
        """,
    ),
)
TABLES = Tables(_SCHEMA, _POSTGRES)


class AccessError(Dp2Error):
    """The caller may not do this (status says which way)."""

    def __init__(self, status: int, message: str, *, reason_code: str, hint: str) -> None:
        super().__init__(message, reason_code=reason_code, hint=hint)
        self.status = status


def _not_found() -> AccessError:
    return AccessError(
        404,
        "no such message in this mailbox",
        reason_code="UNKNOWN_MESSAGE",
        hint="List the mailbox first and use a messageUUID from it.",
    )


def create(context: ConnectorContext) -> AppsConnector:
    return AppsConnector(context)


class AppsConnector(AsyncResource):
    """Connector + HttpConnector for mailbox apps (see the module docstring)."""

    def __init__(
        self, context: ConnectorContext, identities: IdentityProvider | None = None
    ) -> None:
        self.name = context.name
        self.actor = f"connector:{context.name}"
        settings = context.settings
        self.provider = str(context.require("mailbox"))
        self._identities = identities or DevTokens.from_home(settings.home)
        self._pseudonyms = Pseudonymizer(pseudonym_key(settings.home))
        self._mailbox_path = settings.home / "data" / f"mailbox-{self.provider}.sqlite"
        self._documents = FileBlobStore(documents_dir(self._mailbox_path))  # read only
        self._database_url = settings.database_url
        self._mailbox: MailboxStore | None = None
        self._db = open_store(
            settings.database_url,
            context.data_dir / "apps.sqlite",
            schema_name("apps", context.name),
            TABLES,
        )
        self._identity = Pki(settings.pki_dir).identity(provider_identity_name(self.provider))
        self._contacts = ContactRegister(settings.kafka)
        self._client = Dp2Client.from_settings(
            settings,
            str(context.option("identity", provider_identity_name(self.provider))),
            contacts=self._contacts,
            actor=self.actor,
        )
        self._producer: AIOKafkaProducer = new_producer(settings.kafka)
        self._started = False

    # --- Connector --------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        await self._contacts.start()
        await self._client.start()
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._producer.stop()
        await self._client.stop()
        await self._contacts.stop()
        if self._mailbox is not None:
            self._mailbox.close()
        self._db.close()

    def health(self) -> Mapping[str, Any]:
        return {
            "check": "apps",
            "status": "ok" if self._started else "failing",
            "mailbox": self.provider,
            "mailboxStore": self._database_url is not None or self._mailbox_path.exists(),
        }

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.get("/mailboxes/{mailbox}/messages", self._list),
            web.get("/mailboxes/{mailbox}/messages/{uuid}", self._get),
            web.get("/mailboxes/{mailbox}/messages/{uuid}/files/{index}", self._file),
            web.post("/mailboxes/{mailbox}/messages/{uuid}/read", self._read),
            web.post("/mailboxes/{mailbox}/messages/{uuid}/replies", self._reply),
            web.get("/access", self._access),
            web.post("/access", self._grant),
            web.delete("/access/{delegate}", self._revoke),
            web.get("/audit", self._audit),
            web.get("/openapi.json", self._openapi),
        ]

    # --- who may see what -------------------------------------------------------
    def _citizen(self, request: web.Request) -> Citizen:
        try:
            return self._identities.authenticate(bearer(request.headers.get("Authorization")))
        except AuthError as exc:
            raise AccessError(401, exc.message, reason_code=exc.reason_code, hint=exc.hint) from exc

    def _owner(self, citizen: Citizen, mailbox: str) -> tuple[str, str, bool]:
        """(owner CPR, owner pseudonym, caller is the owner) of the mailbox asked for."""
        me = self._pseudonyms.ref("CPR", citizen.cpr)
        if mailbox in ("me", me):
            return citizen.cpr, me, True
        row = self._db.one(
            "SELECT owner_cpr FROM delegations WHERE owner_ref = ? AND delegate_ref = ?"
            " AND revoked_at IS NULL",
            (mailbox, me),
        )
        if row is None:  # not granted, revoked, or no such mailbox: all look the same
            raise AccessError(
                404,
                "no mailbox you may read has that id",
                reason_code="UNKNOWN_MAILBOX",
                hint="Use 'me', or a mailbox id from GET /access (received).",
            )
        return str(row[0]), mailbox, False

    def _store(self) -> MailboxStore:
        """The mailbox's store, opened once it exists (the mailbox service creates it)."""
        if self._mailbox is None:
            if self._database_url is None and not self._mailbox_path.exists():
                raise AccessError(
                    503,
                    "the mailbox store is not there yet",
                    reason_code="MAILBOX_UNAVAILABLE",
                    hint=f"Start the mailbox service for provider {self.provider}.",
                )
            self._mailbox = MailboxStore(self._mailbox_path, self._database_url)
        return self._mailbox

    def _message(self, owner_cpr: str, message_uuid: str) -> Envelope:
        message = self._store().get(message_uuid, recipient_id=owner_cpr)
        if message is None:
            raise _not_found()
        return message

    def _audit_write(
        self, citizen: Citizen, mailbox_ref: str | None, action: str, uuid: str | None, outcome: str
    ) -> None:
        self._db.run(
            "INSERT INTO audit (at, actor_ref, mailbox_ref, action, message_uuid, outcome)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (_now(), self._pseudonyms.ref("CPR", citizen.cpr), mailbox_ref, action, uuid, outcome),
        )

    async def _guarded(self, request: web.Request, action: str, work: Any) -> web.StreamResponse:
        """Authenticate, run ``work(citizen)``, audit the outcome, answer errors as JSON."""
        try:
            citizen = self._citizen(request)
        except AccessError as exc:
            return error_response(exc.status, exc)
        mailbox = request.match_info.get("mailbox")
        uuid = request.match_info.get("uuid")
        try:
            status, body = await work(citizen)
        except AccessError as exc:
            self._audit_write(citizen, mailbox, action, uuid, f"refused:{exc.reason_code}")
            return error_response(exc.status, exc)
        except memo.MemoError as exc:
            self._audit_write(citizen, mailbox, action, uuid, f"refused:{exc.reason_code}")
            return error_response(422, exc, exc.violations)
        self._audit_write(citizen, mailbox, action, uuid, "ok")
        if isinstance(body, web.StreamResponse):
            return body
        return web.json_response(body, status=status)

    # --- reading ----------------------------------------------------------------
    async def _list(self, request: web.Request) -> web.StreamResponse:
        async def work(citizen: Citizen) -> tuple[int, Any]:
            cpr, ref, _ = self._owner(citizen, request.match_info["mailbox"])
            limit = _int(request.query.get("limit", "20"), "limit", 1, 100)
            cursor = request.query.get("cursor")
            before = _int(cursor, "cursor", 1, 2**62) if cursor is not None else None
            rows = self._store().page(cpr, before, limit + 1)  # newest first
            read = {
                r[0]
                for r in self._db.all("SELECT message_uuid FROM reads WHERE owner_ref = ?", (ref,))
            }
            items = [
                _summary(envelope, received, uuid in read)
                for uuid, received, envelope, _ in rows[:limit]
            ]
            more = len(rows) > limit
            return 200, {"items": items, "next": str(rows[limit - 1][3]) if more else None}

        return await self._guarded(request, "list", work)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        async def work(citizen: Citizen) -> tuple[int, Any]:
            cpr, ref, owner = self._owner(citizen, request.match_info["mailbox"])
            message = self._message(cpr, request.match_info["uuid"])
            read = self._is_read(ref, message.header.messageUUID)
            return 200, _detail(message, read, owner)

        return await self._guarded(request, "read-message", work)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        async def work(citizen: Citizen) -> tuple[int, Any]:
            cpr, _, _ = self._owner(citizen, request.match_info["mailbox"])
            message = self._message(cpr, request.match_info["uuid"])
            files = sealing.files_of(message.body)
            index = _int(request.match_info["index"], "index", 0, max(len(files) - 1, 0))
            if index >= len(files):
                raise _not_found()
            file = files[index]
            headers = {"Content-Disposition": f'attachment; filename="{_ascii(file.filename)}"'}
            content_type = file.encodingFormat if "/" in file.encodingFormat else None
            if not documents.is_kept(file):
                body = documents.read(file, None)
                return 200, web.Response(body=body, content_type=content_type, headers=headers)
            return 200, await self._stream(request, file, content_type, headers)

        return await self._guarded(request, "read-file", work)

    async def _stream(
        self,
        request: web.Request,
        file: File,
        content_type: str | None,
        headers: Mapping[str, str],
    ) -> web.StreamResponse:
        """A document the mailbox keeps in its folder, sent a piece at a time as it is
        read and checked (connectors.documents): its last piece only once its SHA-256
        holds, so a changed file is never sent whole (the connection is cut instead)."""
        try:  # size and presence are checked before the first byte is sent
            pieces = documents.chunks(file, self._documents)
        except Dp2Error as exc:
            raise AccessError(503, exc.message, reason_code=exc.reason_code, hint=exc.hint) from exc
        response = web.StreamResponse(headers=headers)
        response.content_type = content_type or "application/octet-stream"
        response.content_length = documents.size_of(file)
        await response.prepare(request)
        while (piece := await asyncio.to_thread(next, pieces, None)) is not None:
            await response.write(piece)
        await response.write_eof()
        return response

    def _is_read(self, owner_ref: str, message_uuid: str) -> bool:
        return (
            self._db.one(
                "SELECT 1 FROM reads WHERE owner_ref = ? AND message_uuid = ?",
                (owner_ref, message_uuid),
            )
            is not None
        )

    async def _read(self, request: web.Request) -> web.StreamResponse:
        async def work(citizen: Citizen) -> tuple[int, Any]:
            cpr, ref, owner = self._owner(citizen, request.match_info["mailbox"])
            message = self._message(cpr, request.match_info["uuid"])
            if not owner:
                raise _read_only()
            first = not self._is_read(ref, message.header.messageUUID)
            self._db.run(
                "INSERT INTO reads VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (ref, message.header.messageUUID, _now()),
            )
            contact = self._contacts.get(ref)
            consent = bool(contact and contact.readReceiptsConsent)
            if consent:
                await self._event(message, LifecycleState.READ, ref, source="read")
            return 200, {
                "messageUUID": message.header.messageUUID,
                "read": True,
                "firstTime": first,
                "readReceiptSent": consent,
            }

        return await self._guarded(request, "mark-read", work)

    # --- replying ---------------------------------------------------------------
    async def _reply(self, request: web.Request) -> web.StreamResponse:
        async def work(citizen: Citizen) -> tuple[int, Any]:
            cpr, ref, owner = self._owner(citizen, request.match_info["mailbox"])
            original = self._message(cpr, request.match_info["uuid"])
            if not owner:
                raise _read_only()
            header = original.header
            if not header.reply:
                raise AccessError(
                    409,
                    "the sender does not accept replies to this message",
                    reason_code="REPLY_NOT_ALLOWED",
                    hint="Write a new message to the authority instead.",
                )
            if header.replyByDateTime is not None and header.replyByDateTime < datetime.now(UTC):
                raise AccessError(
                    409,
                    "the deadline for replies to this message has passed",
                    reason_code="REPLY_DEADLINE_PASSED",
                    hint="Write a new message to the authority instead.",
                )
            text, files = await _reply_body(request)
            case = header.contentData.caseID if header.contentData else None
            reply = citizen_message(
                cpr=cpr,
                authority_cvr=header.sender.senderID,
                label=f"Svar: {header.label}"[:256],
                main=[Document("svar.txt", "text/plain", text.encode())],
                attachments=files,
                content_data=ContentData(
                    caseID=CaseID(caseID=case.caseID, caseSystem=case.caseSystem)
                )
                if case
                else None,
                reply_data=[
                    ReplyData(
                        messageUUID=header.messageUUID,
                        messageID=header.messageID,
                        caseID=case.caseID if case else None,
                    )
                ],
            )
            violations = memo.validate(reply, now=datetime.now(UTC))
            if violations:
                raise memo.MemoError(violations)
            try:
                receipt = await self._client.send(reply)
            except (KafkaError, OSError) as exc:
                raise AccessError(
                    503,
                    "the backbone did not take the reply; nothing was sent",
                    reason_code="BACKBONE_UNAVAILABLE",
                    hint="Try again in a little while.",
                ) from exc
            self._db.run(
                "INSERT INTO replies VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (header.messageUUID, receipt.message_uuid, _now()),
            )
            await self._event(
                original,
                LifecycleState.REPLIED,
                ref,
                source=receipt.message_uuid,
                related=receipt.message_uuid,
            )
            log.info("replied", message_id=header.messageUUID, reply_id=receipt.message_uuid)
            return 202, {
                "messageUUID": receipt.message_uuid,
                "inReplyTo": header.messageUUID,
                "status": "SUBMITTED",
            }

        return await self._guarded(request, "reply", work)

    async def _event(
        self,
        message: Envelope,
        state: LifecycleState,
        owner_ref: str,
        *,
        source: str,
        related: str | None = None,
    ) -> None:
        """A lifecycle event about a delivered message, signed by the mailbox provider."""
        output = lifecycle_output(
            message.header.messageUUID,
            state,
            self.actor,
            sender_id=message.header.sender.senderID,
            recipient_ref=owner_ref,
            related=related,
            source=source,
        )
        signed = EventSigner(self._identity).sign_encoded(output.value)
        await self._producer.send_and_wait(output.topic, signed, key=output.key)

    # --- read access ------------------------------------------------------------
    async def _access(self, request: web.Request) -> web.StreamResponse:
        async def work(citizen: Citizen) -> tuple[int, Any]:
            me = self._pseudonyms.ref("CPR", citizen.cpr)
            granted = self._db.all(
                "SELECT delegate_ref, granted_at FROM delegations WHERE owner_ref = ?"
                " AND revoked_at IS NULL",
                (me,),
            )
            received = self._db.all(
                "SELECT owner_ref, granted_at FROM delegations WHERE delegate_ref = ?"
                " AND revoked_at IS NULL",
                (me,),
            )
            return 200, {
                "me": me,
                "granted": [{"delegate": d, "grantedAt": at} for d, at in granted],
                "received": [{"mailbox": o, "grantedAt": at} for o, at in received],
            }

        return await self._guarded(request, "list-access", work)

    async def _grant(self, request: web.Request) -> web.StreamResponse:
        async def work(citizen: Citizen) -> tuple[int, Any]:
            try:
                body = await request.json()
            except ValueError as exc:
                raise _bad_json() from exc
            delegate = body.get("delegateCpr") if isinstance(body, dict) else None
            if not isinstance(delegate, str) or not is_ascii_digits(delegate, 10):
                raise AccessError(
                    400,
                    "delegateCpr must be the relative's CPR number",
                    reason_code="INVALID_CPR",
                    hint='Send {"delegateCpr": "<10 digits>"}.',
                )
            if delegate == citizen.cpr:
                raise AccessError(
                    400,
                    "you already read your own post",
                    reason_code="SELF_DELEGATION",
                    hint="Name another person.",
                )
            me = self._pseudonyms.ref("CPR", citizen.cpr)
            delegate_ref = self._pseudonyms.ref("CPR", delegate)
            self._db.run(
                "INSERT INTO delegations VALUES (?, ?, ?, ?, NULL) ON CONFLICT"
                " (owner_ref, delegate_ref) DO UPDATE SET granted_at = excluded.granted_at,"
                " revoked_at = NULL",
                (me, citizen.cpr, delegate_ref, _now()),
            )
            return 201, {"delegate": delegate_ref, "mailbox": me, "access": "read"}

        return await self._guarded(request, "grant-access", work)

    async def _revoke(self, request: web.Request) -> web.StreamResponse:
        async def work(citizen: Citizen) -> tuple[int, Any]:
            me = self._pseudonyms.ref("CPR", citizen.cpr)
            changed = self._db.run(
                "UPDATE delegations SET revoked_at = ? WHERE owner_ref = ? AND delegate_ref = ?"
                " AND revoked_at IS NULL",
                (_now(), me, request.match_info["delegate"]),
            )
            if not changed:
                raise AccessError(
                    404,
                    "you have granted no read access to that person",
                    reason_code="UNKNOWN_DELEGATION",
                    hint="Use a delegate id from GET /access (granted).",
                )
            return 200, {"delegate": request.match_info["delegate"], "access": "revoked"}

        return await self._guarded(request, "revoke-access", work)

    async def _audit(self, request: web.Request) -> web.StreamResponse:
        async def work(citizen: Citizen) -> tuple[int, Any]:
            me = self._pseudonyms.ref("CPR", citizen.cpr)
            rows = self._db.all(
                "SELECT at, actor_ref, action, message_uuid, outcome FROM audit"
                " WHERE mailbox_ref = ? OR (mailbox_ref = 'me' AND actor_ref = ?)"
                " ORDER BY seq DESC LIMIT 500",
                (me, me),
            )
            return 200, {
                "entries": [
                    {
                        "at": at,
                        "actor": "me" if actor == me else actor,
                        "action": action,
                        "messageUUID": uuid,
                        "outcome": outcome,
                    }
                    for at, actor, action, uuid, outcome in rows
                ]
            }

        return await self._guarded(request, "audit", work)

    async def _openapi(self, _: web.Request) -> web.Response:
        return web.json_response(apps_openapi())


# --- helpers ------------------------------------------------------------------------
def _read_only() -> AccessError:
    return AccessError(
        403,
        "read access lets you read this mailbox, not act in it",
        reason_code="READ_ONLY_ACCESS",
        hint="Only the owner can mark post read or reply.",
    )


def _bad_json() -> AccessError:
    return AccessError(
        400,
        "the request body is not valid JSON",
        reason_code="MALFORMED_JSON",
        hint="Send one JSON object, UTF-8 encoded.",
    )


def _int(raw: str, name: str, low: int, high: int) -> int:
    value = parse_ascii_int(raw)  # ASCII digits only: int() also reads "٣" and "1_0"
    if value is None or not low <= value <= high:
        raise AccessError(
            400,
            f"{name} must be a whole number from {low} to {high}",
            reason_code="BAD_QUERY",
            hint=f"Give {name} between {low} and {high}.",
        )
    return value


async def _reply_body(request: web.Request) -> tuple[str, list[Document]]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise _bad_json() from exc
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise AccessError(
            400, "a reply needs a text", reason_code="INVALID_REPLY", hint='Send {"text": "..."}.'
        )
    return text, []


def _summary(message: Envelope, received_at: str, read: bool) -> dict[str, Any]:
    header = message.header
    return {
        "messageUUID": header.messageUUID,
        "label": header.label,
        "sender": {"id": header.sender.senderID, "label": header.sender.label},
        "receivedAt": received_at,
        "read": read,
        "messageType": header.messageType.value,
    }


def _detail(message: Envelope, read: bool, owner: bool) -> dict[str, Any]:
    header = message.header
    reply_open = header.reply and (
        header.replyByDateTime is None or header.replyByDateTime > datetime.now(UTC)
    )
    return {
        "messageUUID": header.messageUUID,
        "label": header.label,
        "sender": {"id": header.sender.senderID, "label": header.sender.label},
        "notification": header.notification,
        "read": read,
        "replyAllowed": bool(owner and reply_open),
        "replyBy": header.replyByDateTime.isoformat() if header.replyByDateTime else None,
        "files": [
            {
                "index": n,
                "filename": f.filename,
                "mimeType": f.encodingFormat,
                "size": documents.size_of(f) if f.nonce is None else None,
            }
            for n, f in enumerate(sealing.files_of(message.body))
        ],
    }


def _ascii(name: str) -> str:
    return "".join(c if c.isascii() and c.isprintable() and c != '"' else "_" for c in name)


def _now() -> str:
    return datetime.now(UTC).isoformat()


__all__ = ["AppsConnector", "create"]
