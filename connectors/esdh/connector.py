"""The ESDH connector: an authority's case system keeps speaking MeMo, DP2 does the rest.

Why it exists: authorities' case-management (ESDH) systems already produce and
consume MeMo 1.1/1.2 for Digital Post. Moving to DP2 must not mean rebuilding those
integrations, so this connector stands where the national service stood:

- **Sending.** ``POST /memo`` takes one MeMo message (or a file dropped in the
  watched ``inbox_dir``), validates every MeMo rule (schemas.memo),
  signs, encrypts and submits it with the SDK, and answers at once with a
  technical receipt echoing the message UUID. A resend of the same message is
  answered ``DUPLICATE`` with the first receipt; a UUID reused for other content
  is a conflict. The HTTP API answers only the authority itself: every route but
  /openapi.json needs its access token (connectors.authorities; ``dp2 tokens
  authority --cvr CVR``), 401 without one, 403 with another authority's.
- **SF1601.** The same sending, in the shape today's integrations call
  Serviceplatformen with: ``/sf1601/service/KombiPostAfsend_1/kombi`` (and ``/memos``)
  take a ``kombi_request`` whose KombiValgKode chooses the channel, and
  ``/sf1601/service/PostForespoerg_1/digitalpost`` (and ``/nemsms``) answer from the
  register (connectors.esdh.sf1601 and sf1601_http; docs/migrating-from-sf1601.md).
- **Business receipts.** Every lifecycle event of a message it sent (ACCEPTED,
  DELIVERED, PRINTED, READ, FAILED, ...) is queued durably and POSTed to the
  ESDH's ``receipts_url`` until the ESDH answers 2xx — an ESDH that is down gets
  them, in order, when it comes back. Each carries NgDP's event name too
  (``ngdpEvent``: MEMO_AVAILABLE_TO_RECIPIENT, PHYSICAL_LETTER_SENT, ...) where one fits.
- **Journaling.** As the mailbox provider ``provider`` of the authority's CVR, it
  receives replies and citizens' messages (verified and decrypted by
  connectors.delivery), and journals each into the ESDH — ``journal_url`` (HTTP)
  or ``journal_dir`` (a folder drop: ``<case>/<uuid>.xml``, the case id reduced to a
  safe folder name, every path checked to stay inside the folder; connectors.folders)
  — on the case named by ContentData's CaseID, else the case of the message it
  replies to. Then it emits JOURNALED. Until the
  ESDH takes it, it stays pending: in ``GET /journal``, in /healthz (degraded) and
  in ``dp2_esdh_backlog``.

Configuration (``[connectors.esdh]`` in ``$DP2_HOME/connectors.toml``)::

    cvr = "29189846"                 # the authority
    identity = "aarhus"              # PKI identity that signs its post
    provider = "esdh-aarhus"         # provider id its CVR receives post at
    receipts_url = "http://esdh.example/dp2/receipts"   # optional
    journal_url = "http://esdh.example/dp2/journal"     # or journal_dir = "/srv/journal"
    inbox_dir = "/srv/memo-out"      # optional watched folder
    port = 8480                      # optional; HTTP API

Why one module over 500 lines: the ESDH connector's three duties (sending MeMo,
pushing receipts, journaling replies) share its store and its retry rules.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import methodcaller
from pathlib import Path
from typing import IO, Any

import aiohttp
import structlog
from aiohttp import web
from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from brokers.contacts.register import ContactRegister
from brokers.runtime.kafka import new_producer
from brokers.runtime.records import Output, iso_z, lifecycle_output
from brokers.runtime.tasks import AsyncResource, PeriodicTask
from brokers.runtime.worker import KafkaWorker
from brokers.security.authority import EventJudge, open_route_book, report_refusal
from brokers.security.pki import EventSigner, Pki, provider_identity_name
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.security.trust import TrustStore
from connectors.authorities import AuthorityAuthError, AuthorityTokens
from connectors.base import ConnectorContext, error_body
from connectors.bodies import MEMO_BODY_LIMIT, BodyTooLargeError, spool
from connectors.esdh import sf1601
from connectors.esdh.openapi import openapi_document
from connectors.esdh.sf1601_http import Sf1601Api
from connectors.esdh.store import EsdhStore, JournalEntry
from connectors.folders import (
    UnsafePathError,
    folder_name,
    fsync_dir,
    inside,
    uuid_file_name,
    write_whole,
)
from connectors.sdk import Dp2Client, Receipt
from schemas import codec, memo
from schemas.errors import ConfigError, Dp2Error, SchemaError
from schemas.models import Envelope, IdType, LifecycleEvent, LifecycleState
from schemas.values import is_ascii_digits
from schemas.vocabulary import LIFECYCLE_TOPIC

log = structlog.get_logger("dp2.esdh")

XML_TYPES = {"application/xml", "text/xml", "application/memo+xml"}


@dataclass(frozen=True, slots=True)
class EsdhConfig:
    cvr: str
    identity: str
    provider: str
    receipts_url: str | None = None
    journal_url: str | None = None
    journal_dir: Path | None = None
    inbox_dir: Path | None = None
    poll_s: float = 1.0
    retry_max_s: float = 60.0

    @classmethod
    def from_context(cls, context: ConnectorContext) -> EsdhConfig:
        cvr = str(context.require("cvr"))
        if not is_ascii_digits(cvr, 8):
            raise ConfigError(
                f"connector {context.name!r}: cvr must be 8 digits",
                hint='Write the authority\'s CVR as a quoted string, e.g. cvr = "01234567".',
            )
        journal_dir = context.option("journal_dir")
        inbox_dir = context.option("inbox_dir")
        return cls(
            cvr=cvr,
            identity=str(context.require("identity")),
            provider=str(context.require("provider")),
            receipts_url=context.option("receipts_url"),
            journal_url=context.option("journal_url"),
            journal_dir=Path(journal_dir) if journal_dir else context.data_dir / "journal",
            inbox_dir=Path(inbox_dir) if inbox_dir else None,
            poll_s=float(context.option("poll_s", 1.0)),
            retry_max_s=float(context.option("retry_max_s", 60.0)),
        )


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer (status and JSON body), also written next to a dropped file."""

    status: int
    body: dict[str, Any]


def create(context: ConnectorContext) -> EsdhConnector:
    """The ``dp2.connectors`` entry point."""
    return EsdhConnector(context, EsdhConfig.from_context(context))


class EsdhConnector(AsyncResource):
    """See the module docstring; implements Connector, ReceivingConnector, HttpConnector."""

    def __init__(self, context: ConnectorContext, config: EsdhConfig) -> None:
        self.name = context.name
        self.provider_id = config.provider
        self.config = config
        self.actor = f"connector:{context.name}"
        self._context = context
        self._store = EsdhStore.open(context.settings.database_url, context.data_dir, context.name)
        pki = Pki(context.settings.pki_dir)
        self._provider_identity = pki.identity(provider_identity_name(config.provider))
        self._pseudonyms = Pseudonymizer(pseudonym_key(context.settings.home))
        # The connector's own view of the directory: the SDK routes by it, and SF1601's
        # KombiValgKode and PostForespoerg are answered from it.
        self.contacts = ContactRegister(context.settings.kafka_as(config.identity))
        self._client = Dp2Client.from_settings(
            context.settings, config.identity, actor=self.actor, contacts=self.contacts
        )
        self._sf1601 = Sf1601Api(
            self, context.settings, self._client, self._pseudonyms, context.data_dir
        )
        self._tokens = AuthorityTokens.from_home(context.settings.home)
        self._routes = open_route_book(
            context.settings, context.data_dir / "routes.sqlite", book=f"connector:{context.name}"
        )
        self._judge = EventJudge(TrustStore(context.settings.pki_dir), self._routes)
        self._unbelieved = Counter(
            "dp2_esdh_unbelieved_events",
            "Lifecycle events of this authority's messages refused by the authority table",
            ["reason"],
            registry=context.registry,
        )
        self._producer: AIOKafkaProducer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._receipts_worker: KafkaWorker = context.worker(
            "receipts", [LIFECYCLE_TOPIC], self._on_event
        )
        self._tasks: list[PeriodicTask] = []
        self._submissions = Counter(
            "dp2_esdh_submissions",
            "MeMo messages submitted by the ESDH, by outcome",
            ["outcome"],
            registry=context.registry,
        )
        self._backlog = Gauge(
            "dp2_esdh_backlog",
            "Receipts and journal entries waiting for the ESDH to accept them",
            ["kind"],
            registry=context.registry,
        )

    # --- Connector --------------------------------------------------------------
    async def start(self) -> None:
        if self._producer is not None:
            return
        await self.contacts.start()
        await self._client.start()
        self._producer = new_producer(self._context.settings.kafka)
        await self._producer.start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        await self._receipts_worker.start()
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("receipts", self._deliver_receipts),
            ("journal", self._journal_due),
        ]
        if self.config.inbox_dir is not None:
            self.config.inbox_dir.mkdir(parents=True, exist_ok=True)
            loops.append(("inbox", self._scan_inbox))
        for name, step in loops:
            task = PeriodicTask(
                f"esdh-{name}", step, self.config.poll_s, metrics=self._context.metrics
            )
            await task.start()
            self._tasks.append(task)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await task.stop()
        await self._receipts_worker.stop()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
            await self._client.stop()
            await self.contacts.stop()
            self._store.close()
            self._routes.close()

    def health(self) -> Mapping[str, Any]:
        backlog = self._store.backlog()
        for kind in ("receipts", "journal"):
            self._backlog.labels(kind).set(backlog[f"{kind}Pending"])
        tasks = [task.health() for task in self._tasks]
        failing = backlog["receiptsFailing"] or backlog["journalFailing"]
        degraded = failing or any(task["status"] != "ok" for task in tasks)
        return {
            "check": "esdh",
            "status": "degraded" if degraded else "ok",
            **backlog,
            "receiptsWorker": self._receipts_worker.health(),
            "tasks": tasks,
        }

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        authorised = self._authorised
        return [
            web.post("/memo", authorised(self._post_memo)),
            web.get("/messages/{message_uuid}", authorised(self._get_message)),
            web.get("/journal", authorised(self._get_journal)),
            web.get("/openapi.json", self._get_openapi),
            *self._sf1601.routes(authorised),
        ]

    def _authorised(
        self,
        handler: Callable[[web.Request], Awaitable[web.Response]],
        refuse: Callable[[web.Request, Answer], web.Response] | None = None,
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """Only a caller with this authority's access token (connectors.authorities);
        ``refuse`` writes the refusal in another shape than DP2's JSON (SF1601's)."""

        async def guarded(request: web.Request) -> web.Response:
            try:
                self._tokens.authenticate(request.headers.get("Authorization"), self.config.cvr)
            except AuthorityAuthError as exc:
                answer = Answer(exc.status, error_body(exc))
                return refuse(request, answer) if refuse else _json(answer.status, answer.body)
            return await handler(request)

        return guarded

    # --- sending ----------------------------------------------------------------
    async def submit_memo(self, xml: bytes | IO[bytes]) -> Answer:
        """Validate, sign, encrypt and submit one MeMo message (HTTP and folder)."""
        try:  # in a thread: a 99.5 MB message takes a second to parse
            message = await asyncio.to_thread(self.read_memo, xml)
        except memo.MemoError as exc:
            return self.invalid(exc)
        return await self.submit(message)

    def read_memo(self, xml: bytes | IO[bytes]) -> Envelope:
        """The message of MeMo ``xml`` if it breaks no MeMo rule and is this authority's."""
        message = memo.parse_and_validate(xml, now=datetime.now(UTC))
        self._check_sender(message)
        return message

    def invalid(self, exc: memo.MemoError) -> Answer:
        self._submissions.labels("invalid").inc()
        return Answer(422, error_body(exc, exc.violations))

    async def submit(
        self,
        message: Envelope,
        *,
        variant: bytes = b"",
        refuse: Callable[[Envelope], sf1601.Sf1601Error | None] | None = None,
        send: Callable[[Envelope], Awaitable[Receipt]] | None = None,
    ) -> Answer:
        """Claim the message's UUID and send it, once. A resend of the same message (with
        the same ``variant``: SF1601's channel) is DUPLICATE with the first receipt; else
        ``refuse`` may refuse it (nothing is sent, the UUID stays free), and ``send``
        replaces the SDK's own sealing and routing (SF1601's Fysisk Post)."""
        header = message.header
        case = header.contentData.caseID if header.contentData else None
        claim, first = self._store.claim(
            header.messageUUID,
            _memo_digest(message, variant),
            case.caseID if case else None,
            case.caseSystem if case else None,
        )
        if claim == "new":
            refused = refuse(message) if refuse else None
            if refused is not None:
                self._store.release(header.messageUUID)
                self._submissions.labels("refused").inc()
                return Answer(refused.status, error_body(refused))
            return await self._send(message, send or self._client.send)
        self._submissions.labels(claim).inc()
        if claim == "duplicate":
            return Answer(
                200, {"messageUUID": header.messageUUID, "status": "DUPLICATE", "receipt": first}
            )
        return Answer(
            409,
            error_body(
                Dp2Error(
                    f"messageUUID {header.messageUUID} was already used for another message",
                    reason_code="MEMO_UUID_REUSED",
                    hint="Give every new message a new version-4 UUID; resend a message "
                    "only unchanged.",
                )
            ),
        )

    def _check_sender(self, message: Envelope) -> None:
        sender = message.header.sender
        if sender.idType is not IdType.CVR or sender.senderID != self.config.cvr:
            raise memo.MemoError(
                [
                    memo.Violation(
                        code="MEMO_WRONG_SENDER",
                        path="MessageHeader/Sender/senderID",
                        message="the sender is not the CVR this connector sends for",
                        hint=f"Set Sender/senderID to {self.config.cvr} with idType CVR, or "
                        "send through the connector of the authority named there.",
                    )
                ]
            )

    async def _send(
        self, message: Envelope, send: Callable[[Envelope], Awaitable[Receipt]]
    ) -> Answer:
        """Seal, sign and submit a claimed message; release the claim if it did not go."""
        message_uuid = message.header.messageUUID
        try:
            receipt = await send(message)
        except (KafkaError, OSError) as exc:
            self._store.release(message_uuid)
            self._submissions.labels("unavailable").inc()
            log.warning("submit_failed", message_id=message_uuid, error=repr(exc))
            return Answer(
                503,
                error_body(
                    Dp2Error(
                        "the backbone did not take the message; nothing was sent",
                        reason_code="BACKBONE_UNAVAILABLE",
                        hint="Resend the same message unchanged in a little while.",
                    )
                ),
            )
        except Dp2Error as exc:  # MessageError, an unknown provider key, ...
            self._store.release(message_uuid)
            self._submissions.labels("refused").inc()
            return Answer(503 if exc.retriable else 422, error_body(exc))
        body = {
            "messageUUID": receipt.message_uuid,
            "status": "SUBMITTED",
            "submittedAt": iso_z(receipt.submitted_at, "auto"),
            "kafka": {
                "topic": receipt.topic,
                "partition": receipt.partition,
                "offset": receipt.offset,
            },
            "traceparent": receipt.traceparent,
        }
        self._store.sent(message_uuid, body)
        self._submissions.labels("submitted").inc()
        log.info("memo_submitted", message_id=message_uuid)
        return Answer(202, {**body, "receipt": dict(body)})

    async def _post_memo(self, request: web.Request) -> web.Response:
        if request.content_type not in XML_TYPES:
            return _json(
                415,
                error_body(
                    Dp2Error(
                        f"Content-Type {request.content_type!r} is not MeMo XML",
                        reason_code="UNSUPPORTED_MEDIA_TYPE",
                        hint="POST one MeMo message with Content-Type: application/xml.",
                    )
                ),
            )
        try:  # streamed to a private temporary file, refused once over the limit
            body = await spool(request, MEMO_BODY_LIMIT, self._context.data_dir)
        except BodyTooLargeError as exc:
            return _json(exc.status, error_body(exc))
        with body:
            answer = await self.submit_memo(body)
        return _json(answer.status, answer.body)

    async def _get_message(self, request: web.Request) -> web.Response:
        message_uuid = request.match_info["message_uuid"]
        found = self._store.message(message_uuid)
        if found is None:
            return _json(
                404,
                error_body(
                    Dp2Error(
                        "this connector has not sent a message with that UUID",
                        reason_code="UNKNOWN_MESSAGE",
                        hint="Use the messageUUID from the receipt of POST /memo.",
                    )
                ),
            )
        return _json(200, found)

    async def _get_journal(self, request: web.Request) -> web.Response:
        status = request.query.get("status", "pending")
        if status not in {"pending", "journaled", "all"}:
            return _json(
                400,
                error_body(
                    Dp2Error(
                        f"status {status!r} is not a journal status",
                        reason_code="BAD_QUERY",
                        hint="Use status=pending, journaled or all.",
                    )
                ),
            )
        return _json(200, {"entries": self._store.journal_list(status)})

    async def _get_openapi(self, _: web.Request) -> web.Response:
        return _json(200, openapi_document())

    async def _scan_inbox(self) -> None:
        """Submit each ``*.xml`` in the watched folder; move it to processed/ or failed/."""
        inbox = self.config.inbox_dir
        assert inbox is not None  # noqa: S101 - the loop only runs with an inbox
        for path in sorted(inbox.glob("*.xml")):
            answer = await self.submit_memo(await asyncio.to_thread(path.read_bytes))
            if answer.status == 503:
                return  # the backbone is away: the file waits for the next scan
            target = inbox / ("failed" if answer.status >= 400 else "processed")
            target.mkdir(exist_ok=True)
            suffix = ".error.json" if answer.status >= 400 else ".receipt.json"
            (target / (path.name + suffix)).write_text(json.dumps(answer.body, indent=2))
            path.replace(target / path.name)

    # --- business receipts ------------------------------------------------------
    async def _on_event(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        try:
            event = codec.decode(record.value or b"", LifecycleEvent)
        except SchemaError:
            return []  # not ours to judge: the tracing service dead-letters it
        if not self._store.is_ours(event.messageUUID):
            return []
        verdict = self._judge.judge(event)  # a receipt is evidence: only the table's word
        if not verdict.ok:
            report_refusal(log, self._unbelieved, event, verdict, "event_not_believed")
            return []
        if self.config.receipts_url is None:
            return []  # no case system to push receipts to (GET /messages/{uuid} still answers)
        case = self._store.case_of(event.messageUUID)
        self._store.queue_receipt(
            event.eventId,
            event.messageUUID,
            {
                "messageUUID": event.messageUUID,
                "eventId": event.eventId,
                "state": event.state.value,
                "occurredAt": iso_z(event.occurredAt, "auto"),
                "reasonCode": event.reasonCode,
                "reasonText": event.reasonText,
                "channel": event.channel,
                "caseID": case[0] if case else None,
                "ngdpEvent": sf1601.ngdp_event(event.state),
            },
        )
        return []

    async def _deliver_receipts(self) -> None:
        url = self.config.receipts_url
        if url is None or not self._store.leads():  # another instance makes the calls
            return
        for receipt in self._store.due_receipts(time.time()):
            error = await self._post_json(url, receipt.payload)
            if error is None:
                self._store.receipt_delivered(receipt.seq)
                continue
            self._store.receipt_failed(receipt.seq, error, self._retry_at(receipt.attempts))
            log.warning("receipt_not_delivered", message_id=receipt.message_uuid, error=error)
            return  # the ESDH is not taking receipts: keep their order, try again later

    # --- receiving and journaling -----------------------------------------------
    async def receive(self, message: Envelope) -> None:
        """Queue received post for the journal (durable; a repeat changes nothing)."""
        header = message.header
        case_id, case_system = None, None
        if header.contentData and header.contentData.caseID:
            case_id = header.contentData.caseID.caseID
            case_system = header.contentData.caseID.caseSystem
        reply_to = header.replyData[0].messageUUID if header.replyData else None
        for reply in header.replyData:
            known = self._store.case_of(reply.messageUUID)
            if case_id is None and known is not None and known[0] is not None:
                case_id, case_system = known
            if case_id is None and reply.caseID:
                case_id = reply.caseID
        sender = header.sender
        sender_ref = (
            sender.senderID
            if sender.idType is IdType.CVR
            else self._pseudonyms.ref(sender.idType.value, sender.senderID)
        )
        self._store.queue_journal(
            header.messageUUID,
            case_id=case_id,
            case_system=case_system,
            reply_to=reply_to,
            sender_ref=sender_ref,
            memo=memo.to_xml(message),
        )
        log.info("journal_queued", message_id=header.messageUUID, has_case=case_id is not None)

    async def _journal_due(self) -> None:
        if not self._store.leads():  # another instance makes the calls
            return
        for entry in self._store.due_journal(time.time()):
            error = await self._journal(entry)
            if error is not None:
                self._store.journal_failed(entry.seq, error, self._retry_at(entry.attempts))
                log.warning("journal_failed", message_id=entry.message_uuid, error=error)
                return
            await self._announce_journaled(entry)
            self._store.journaled(entry.seq)
            log.info("journaled", message_id=entry.message_uuid)

    async def _journal(self, entry: JournalEntry) -> str | None:
        """Hand one entry to the ESDH; None when it took it, else what went wrong."""
        meta = {
            "messageUUID": entry.message_uuid,
            "caseID": entry.case_id,
            "caseSystem": entry.case_system,
            "replyTo": entry.reply_to,
            "receivedAt": entry.received_at,
        }
        if self.config.journal_url:
            return await self._post_json(
                self.config.journal_url, {**meta, "memo": entry.memo.decode("utf-8")}
            )
        folder = self.config.journal_dir
        assert folder is not None  # noqa: S101 - from_context always sets one
        try:  # names from validated values only, inside journal_dir (connectors.folders)
            case_dir = inside(folder, folder_name(entry.case_id or "_unassigned"))
            await asyncio.to_thread(_drop, case_dir, entry.message_uuid, entry.memo, meta)
        except UnsafePathError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot write to the journal folder: {exc.strerror}"
        return None

    async def _announce_journaled(self, entry: JournalEntry) -> None:
        output = lifecycle_output(
            entry.message_uuid,
            LifecycleState.JOURNALED,
            self.actor,
            sender_id=entry.sender_ref,
            recipient_ref=self.config.cvr,
            related=entry.reply_to,
            attributes={
                "caseID": entry.case_id or "",
                "journal": "http" if self.config.journal_url else "folder",
            },
            source="journaled",  # the same event however often it is retried
        )
        # Signed as the provider the message was routed to (not this connector's Kafka
        # identity, which signs what it sends): only that provider may assert JOURNALED.
        signed = EventSigner(self._provider_identity).sign_encoded(output.value)
        assert self._producer is not None  # noqa: S101 - started before the loops
        await self._producer.send_and_wait(output.topic, signed, key=output.key)

    # --- plumbing ---------------------------------------------------------------
    async def _post_json(self, url: str, payload: dict[str, Any]) -> str | None:
        assert self._session is not None  # noqa: S101 - started before the loops
        try:
            async with self._session.post(url, json=payload) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status} from {url}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__} at {url}"

    def _retry_at(self, attempts: int) -> float:
        return time.time() + min(0.5 * float(2 ** min(attempts, 20)), self.config.retry_max_s)


def _drop(case_dir: Path, message_uuid: str, xml: bytes, meta: dict[str, Any]) -> None:
    """Write the MeMo file and its metadata atomically (the ESDH sees whole files only)."""
    case_dir.mkdir(parents=True, exist_ok=True)
    for suffix, data in ((".json", json.dumps(meta).encode()), (".xml", xml)):
        write_whole(case_dir, uuid_file_name(message_uuid, suffix), methodcaller("write", data))
    fsync_dir(case_dir)


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


def _memo_digest(message: Envelope, variant: bytes) -> str:
    """SHA-256 of ``memo.to_xml(message) + variant``, without holding the XML."""
    digest = hashlib.sha256()
    for piece in memo.to_xml_chunks(message):
        digest.update(piece)
    digest.update(variant)
    return digest.hexdigest()
