"""The remote print connector: post for recipients without digital post goes on paper.

For each envelope on ``dp2.print`` (the router sends it there when the recipient is
exempt, unknown or not digital; its documents are encrypted for the print provider):

1. verify and decrypt it as the print provider (connectors.delivery, the same
   security work as every mailbox) — an envelope that fails is FAILED with the
   delivery handler's reason (SIGNATURE_INVALID, DECRYPTION_FAILED, ...);
2. look the recipient's postal address up in the contact register and check that a
   letter can carry it — else FAILED with a reason saying how to fix it:

   | code | what is wrong |
   |---|---|
   | ``ADDRESS_UNKNOWN`` | the recipient is not in the contact register |
   | ``ADDRESS_NAME_MISSING`` | the register record has no name |
   | ``ADDRESS_INCOMPLETE`` | street, postcode or city is missing |
   | ``ADDRESS_POSTCODE_INVALID`` | a Danish postcode is not 4 digits |
   | ``FOREIGN_ADDRESS_UNSUPPORTED`` | the country is not in ``countries`` |

3. render one print-ready PDF (connectors.print.render) into the connector's spool
   and queue it durably (connectors.print.store) — only then is the Kafka offset
   committed;
4. hand it to the print provider (connectors.print.handover) — ``drop_dir/<uuid>.pdf``
   plus ``<uuid>.json`` (metadata, no CPR number), each written atomically, or an HTTP
   POST of the PDF to ``upload_url`` (2xx = taken) — retried with capped back-off
   while the provider is away (health says ``degraded``); file names come from the
   message UUID only once it is a version-4 UUID (connectors.delivery re-checks it
   before anything is rendered: ``INVALID_MESSAGE_UUID``) and must resolve inside
   ``drop_dir`` (``UNSAFE_PATH`` otherwise, and nothing is written); then emit
   PRINTED signed by the print provider, with attribute ``pages``. Its event id is
   fixed per message, so a repeat after a crash re-emits the same event.

A letter is never held whole, however big its documents (issue 15): how, and why one
PDF is still what the provider gets, is in the package docstring (connectors.print).

Configuration (``[connectors.print]`` in ``$DP2_HOME/connectors.toml``, all optional)::

    provider = "print"                     # whose key decrypts; dp2 pki issue provider --id print
    drop_dir = "/srv/print/outbox"         # default: the connector's data dir / outbox
    upload_url = "https://print.example/jobs"   # HTTP upload instead of the folder drop
    countries = ["DK"]                     # where the print provider delivers
    return_address = "Aarhus Kommune\\nRådhuspladsen 2\\n8000 Aarhus C"
    poll_s = 1.0                           # how often waiting jobs are looked at
    retry_max_s = 60.0                     # the longest back-off between attempts
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import structlog
from aiokafka import AIOKafkaProducer, ConsumerRecord
from prometheus_client import Counter

from brokers.contacts.records import recipient_ref
from brokers.contacts.register import ContactRegister
from brokers.runtime.kafka import new_producer
from brokers.runtime.records import Output, lifecycle_output, source_of
from brokers.runtime.tasks import AsyncResource, PeriodicTask
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from connectors.base import ConnectorContext
from connectors.delivery import DeliveryHandler
from connectors.folders import UnsafePathError
from connectors.print import handover, render
from connectors.print.spool import Spool, Spooled, SpoolError
from connectors.print.store import Job, PrintStore
from schemas import codec
from schemas.errors import ConfigError, Dp2Error
from schemas.models import (
    AdditionalDocument,
    ContactRecord,
    Envelope,
    File,
    IdType,
    LifecycleState,
    MainDocument,
    TechnicalDocument,
)
from schemas.values import canonical_uuid
from schemas.vocabulary import CONTACTS_TOPIC, PRINT_PROVIDER, PRINT_TOPIC

log = structlog.get_logger("dp2.print")
COPENHAGEN = ZoneInfo("Europe/Copenhagen")  # the letter's date is the Danish date


@dataclass(frozen=True, slots=True)
class PrintConfig:
    drop_dir: Path
    provider: str = PRINT_PROVIDER
    upload_url: str | None = None
    countries: frozenset[str] = frozenset({"DK"})
    return_address: str | None = None
    poll_s: float = 1.0
    retry_max_s: float = 60.0

    @classmethod
    def from_context(cls, context: ConnectorContext) -> PrintConfig:
        table = f"[connectors.{context.name}]"
        countries = context.option("countries", ["DK"])
        if isinstance(countries, str):
            countries = [countries]
        if not isinstance(countries, list) or not all(
            isinstance(c, str) and re.fullmatch(r"[A-Za-z]{2}", c) for c in countries
        ):
            raise ConfigError(
                f"connector {context.name!r}: countries must be a list of two-letter codes",
                hint=f'Write e.g. countries = ["DK", "GL", "FO"] in {table}.',
            )
        upload_url = context.option("upload_url")
        if upload_url is not None and not re.match(r"https?://", str(upload_url)):
            raise ConfigError(
                f"connector {context.name!r}: upload_url must be an http(s) URL",
                hint=f"Write the print provider's upload address in {table}, or leave it "
                "out to drop PDFs in drop_dir.",
            )
        drop_dir = context.option("drop_dir")
        return cls(
            drop_dir=Path(drop_dir) if drop_dir else context.data_dir / "outbox",
            provider=str(context.option("provider", PRINT_PROVIDER)),
            upload_url=str(upload_url) if upload_url else None,
            countries=frozenset(c.upper() for c in countries),
            return_address=context.option("return_address"),
            poll_s=float(context.option("poll_s", 1.0)),
            retry_max_s=float(context.option("retry_max_s", 60.0)),
        )


class AddressError(Dp2Error):
    """The recipient's postal address cannot go on a letter (the reason code says why)."""

    reason_code = "ADDRESS_INVALID"


def check_address(record: ContactRecord | None, countries: frozenset[str]) -> render.Addressee:
    """The printable address of a register record (raises AddressError saying what to fix)."""
    resend = "and send the message anew"
    if record is None:
        raise AddressError(
            "the recipient is not in the contact register, so there is no postal address",
            reason_code="ADDRESS_UNKNOWN",
            hint=f"Load the recipient's name and address into the contact register "
            f"(dp2 contacts load) {resend}.",
        )
    name = (record.name or "").strip()
    if not name:
        raise AddressError(
            "the recipient's contact record has no name for the address window",
            reason_code="ADDRESS_NAME_MISSING",
            hint=f"Add the name to the recipient's record in the contact register {resend}.",
        )
    address = record.address
    parts = {
        "street": address.street.strip() if address else "",
        "postcode": address.postcode.strip() if address else "",
        "city": address.city.strip() if address else "",
    }
    missing = [field for field, value in parts.items() if not value]
    if address is None or missing:
        raise AddressError(
            f"the recipient's postal address lacks {' and '.join(missing)}",
            reason_code="ADDRESS_INCOMPLETE",
            hint=f"Complete the address in the recipient's contact record {resend}.",
        )
    country = (address.country or "DK").strip().upper()
    if country not in countries:
        raise AddressError(
            f"the print provider does not deliver letters to country {country}",
            reason_code="FOREIGN_ADDRESS_UNSUPPORTED",
            hint="Send this letter by other means, or add the country to countries in "
            "[connectors.print] if the print provider delivers there.",
        )
    if country == "DK" and not re.fullmatch(r"\d{4}", parts["postcode"]):
        raise AddressError(
            "a Danish postcode is 4 digits; the recipient's is not",
            reason_code="ADDRESS_POSTCODE_INVALID",
            hint=f"Correct the postcode in the recipient's contact record {resend}.",
        )
    co = (address.co or "").strip() or None
    return render.Addressee(name=name, co=co, country=country, **parts)


def letter_of(
    message: Envelope,
    addressee: render.Addressee,
    return_address: str | None,
    content: Callable[[File], bytes | Path],
) -> render.Letter:
    """What the renderer needs of a decrypted message (no CPR number is printed);
    ``content`` gives a file's bytes or the path that holds them (Spool.document)."""
    header, body = message.header, message.body
    documents: list[render.PrintDocument] = []
    if body is not None:
        listed: list[MainDocument | AdditionalDocument | TechnicalDocument] = [
            body.mainDocument,
            *body.additionalDocument,
            *body.technicalDocument,  # printed too when it can be: nothing is left out
        ]
        for document in listed:
            files = [
                render.PrintFile(f.filename, f.encodingFormat, content(f)) for f in document.file
            ]
            documents.append(render.PrintDocument(document.label, files))
    elif header.notification:  # a NemSMS: its text is the letter
        text = header.notification.encode()
        documents.append(
            render.PrintDocument(header.label, [render.PrintFile("besked.txt", "text/plain", text)])
        )
    sender = header.sender
    created = body.createdDateTime if body is not None else datetime.now(UTC)
    return render.Letter(
        reference=header.messageUUID,
        subject=header.label,
        sender_label=sender.label,
        sender_cvr=sender.senderID if sender.idType is IdType.CVR else None,
        date=created.astimezone(COPENHAGEN).date(),
        addressee=addressee,
        documents=documents,
        return_address=return_address,
    )


def create(context: ConnectorContext) -> PrintConnector:
    """The ``dp2.connectors`` entry point."""
    return PrintConnector(context, PrintConfig.from_context(context))


class PrintConnector(AsyncResource):
    """See the module docstring; implements connectors.base.Connector."""

    def __init__(self, context: ConnectorContext, config: PrintConfig) -> None:
        self.name = context.name
        self.config = config
        self.actor = f"connector:{context.name}"
        settings = context.settings
        self._pseudonyms = Pseudonymizer(pseudonym_key(settings.home))
        self._spool = Spool(context.data_dir)
        self._delivery = DeliveryHandler.for_provider(
            settings,
            config.provider,
            _not_a_mailbox,
            actor=self.actor,
            documents=self._spool.documents,  # big documents: decrypted to disk, not memory
        )
        self._kafka = settings.kafka
        # Remote print needs the postal address: the contact details, not the directory.
        self._contacts = ContactRegister(settings.kafka, topic=CONTACTS_TOPIC)
        self._store = PrintStore.open(context.settings.database_url, context.data_dir, context.name)
        self._worker = context.worker("print", [PRINT_TOPIC], self._on_record)
        self._producer: AIOKafkaProducer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._hand_over_task = PeriodicTask(
            "print-hand-over", self._hand_over_due, config.poll_s, metrics=context.metrics
        )
        self._jobs = Counter(
            "dp2_print_jobs",
            "Print jobs by outcome: queued, printed, failed, retried (provider away)",
            ["outcome"],
            registry=context.registry,
        )

    # --- Connector --------------------------------------------------------------
    async def start(self) -> None:
        if self._producer is not None:
            return
        swept = self._spool.sweep(self._store.spooled_files())  # what a crash left behind
        if swept:
            log.info("print_spool_swept", files=len(swept))
        await self._contacts.start()
        self._producer = new_producer(self._kafka)
        await self._producer.start()
        if self.config.upload_url:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        else:
            self.config.drop_dir.mkdir(parents=True, exist_ok=True)
        await self._worker.start()
        await self._hand_over_task.start()

    async def stop(self) -> None:
        await self._hand_over_task.stop()
        await self._worker.stop()
        await self._delivery.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
            await self._contacts.stop()
            self._store.close()

    def health(self) -> Mapping[str, Any]:
        counts = self._store.counts()
        worker = self._worker.health()
        hand_over = self._hand_over_task.health()
        status = "degraded" if counts["retrying"] or hand_over["status"] == "degraded" else "ok"
        if self._producer is not None and not worker["running"]:
            status = "failing"
        return {
            "check": "print",
            "status": status,
            **counts,
            "lastError": self._store.last_error() if counts["retrying"] else None,
            "handover": "http" if self.config.upload_url else "folder",
            "worker": worker,
        }

    # --- from Kafka to the queue --------------------------------------------------
    async def _on_record(self, record: ConsumerRecord[bytes, bytes]) -> Sequence[Output]:
        sealed = codec.decode(record.value or b"", Envelope)  # SchemaError: dead-lettered
        header = sealed.header
        ref = recipient_ref(sealed, self._pseudonyms)  # a pseudonym: never a CPR number
        known = self._store.known(header.messageUUID)
        if known is not None:  # a redelivery: the queue has it, or it failed before
            if known.state != "failed":
                return []
            return [self._failed(sealed, ref, known.reason_code, known.reason_text, record)]
        await self._delivery.prepare(sealed)
        try:
            return await self._print(sealed, ref, record)
        finally:
            self._spool.clear_documents()  # the decrypted documents go, whatever happened

    async def _print(
        self, sealed: Envelope, ref: str, record: ConsumerRecord[bytes, bytes]
    ) -> Sequence[Output]:
        """Open, address and render the letter, and queue it (or fail it with its reason)."""
        header = sealed.header
        try:
            plain = self._delivery.open(sealed, record)  # big documents into the spool
            addressee = check_address(self._contacts.get(ref), self.config.countries)
        except Dp2Error as exc:
            if exc.retriable:
                raise
            text = f"{exc.message.rstrip('.')}. {exc.hint}"
            self._store.fail(
                header.messageUUID,
                sender_id=header.sender.senderID,
                recipient_ref=ref,
                code=exc.reason_code,
                text=text,
            )
            self._jobs.labels("failed").inc()
            log.info("print_failed", message_id=header.messageUUID, reason_code=exc.reason_code)
            return [self._failed(sealed, ref, exc.reason_code, text, record)]
        message_uuid = canonical_uuid(header.messageUUID)
        spooled, pages = await asyncio.to_thread(self._render, message_uuid, plain, addressee)
        meta = {
            "messageUUID": header.messageUUID,
            "pages": pages,
            "bytes": spooled.size,
            "sha256": spooled.sha256,
            "senderID": header.sender.senderID,  # the sealed header's: CVR, or a pseudonym
            "senderLabel": header.sender.label,
            "recipientRef": ref,
            "country": addressee.country,
            "postcode": addressee.postcode,
            "renderedAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        self._store.queue(  # the spool file is on disk already: the row may name it
            message_uuid,
            sender_id=header.sender.senderID,
            recipient_ref=ref,
            pages=pages,
            pdf_file=spooled.name,
            pdf_sha256=spooled.sha256,
            meta=meta,
        )
        self._jobs.labels("queued").inc()
        log.info("print_queued", message_id=header.messageUUID, pages=pages, bytes=spooled.size)
        self._hand_over_task.wake()
        return []

    def _render(
        self, message_uuid: str, plain: Envelope, addressee: render.Addressee
    ) -> tuple[Spooled, int]:
        """The letter rendered into the spool, and its pages (in a thread: files only)."""
        letter = letter_of(plain, addressee, self.config.return_address, self._spool.document)
        return self._spool.write(message_uuid, lambda out: render.render_to(letter, out))

    def _failed(
        self,
        sealed: Envelope,
        ref: str,
        code: str | None,
        text: str | None,
        record: ConsumerRecord[bytes, bytes],
    ) -> Output:
        return lifecycle_output(
            sealed.header.messageUUID,
            LifecycleState.FAILED,
            self.actor,
            reason_code=code,
            reason_text=text,
            sender_id=sealed.header.sender.senderID,
            recipient_ref=ref,
            channel="print",
            source=source_of(record),
        )

    # --- from the queue to the print provider ---------------------------------------
    async def _hand_over_due(self, batch: int = 20) -> bool:
        """Hand over and announce due jobs; True when a whole batch went through."""
        if not self._store.leads():  # another instance hands letters over
            return False
        jobs = self._store.due(time.time(), batch)
        for job in jobs:
            if job.state == "queued":
                error = await self._hand_over(job)
                if error is not None:
                    retry_at = time.time() + min(
                        0.5 * float(2 ** min(job.attempts, 20)), self.config.retry_max_s
                    )
                    self._store.retry(job.message_uuid, error, retry_at)
                    self._jobs.labels("retried").inc()
                    log.warning("print_handover_failed", message_id=job.message_uuid, error=error)
                    return False  # the provider is away: the others wait for the next round
                self._store.handed(job.message_uuid)
                self._spool.remove(job.message_uuid)  # the provider has it: the plaintext goes
            await self._announce(job)
            self._store.printed(job.message_uuid)
            self._jobs.labels("printed").inc()
            log.info("printed", message_id=job.message_uuid, pages=job.pages)
        return len(jobs) == batch

    async def _hand_over(self, job: Job) -> str | None:
        """Give the provider the PDF; None once it has it, else what went wrong."""
        try:
            pdf = await self._spooled(job)
        except (SpoolError, UnsafePathError) as exc:  # waits, visible in /healthz
            return str(exc)
        except OSError as exc:
            return f"cannot read the spool: {exc.strerror}"
        url = self.config.upload_url
        if url is None:
            try:
                await asyncio.to_thread(handover.drop, self.config.drop_dir, job, pdf)
            except OSError as exc:
                return f"cannot write to {self.config.drop_dir}: {exc.strerror}"
            except UnsafePathError as exc:  # waits, visible in /healthz: never written
                return str(exc)
            return None
        assert self._session is not None  # noqa: S101 - started with an upload_url
        return await handover.upload(self._session, url, job, pdf)

    async def _spooled(self, job: Job) -> Path:
        """The job's PDF in the spool, checked against its SHA-256 (SpoolError else); a
        job queued before the spool has its BLOB moved there first."""
        sha256 = job.pdf_sha256 or ""
        if job.pdf_file is None:
            data = self._store.pdf(job.message_uuid)
            spooled, _ = await asyncio.to_thread(
                self._spool.write, job.message_uuid, lambda out: out.write(data)
            )
            self._store.spooled(job.message_uuid, spooled.name, spooled.sha256)
            sha256 = spooled.sha256
        return await asyncio.to_thread(self._spool.check, job.message_uuid, sha256)

    async def _announce(self, job: Job) -> None:
        output = lifecycle_output(
            job.message_uuid,
            LifecycleState.PRINTED,
            self.actor,
            sender_id=job.sender_id,
            recipient_ref=job.recipient_ref,
            channel="print",
            attributes={
                "pages": str(job.pages),
                "handover": "http" if self.config.upload_url else "folder",
            },
            source="printed",  # one PRINTED per message, however often it is announced
        )
        signed = self._delivery.signed(output)
        assert self._producer is not None  # noqa: S101 - started before the loop
        await self._producer.send_and_wait(signed.topic, signed.value, key=signed.key)


async def _not_a_mailbox(message: Envelope) -> None:
    """The DeliveryHandler's receiver: unused, this connector calls ``open`` itself."""
    raise RuntimeError("the print connector does not receive as a mailbox")
