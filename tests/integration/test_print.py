"""The remote print connector end to end, on the session's real Kafka and test stack.

The connector is the installed one: found through its ``dp2.connectors`` entry point
and configured by a ``[connectors.print]`` table in ``$DP2_HOME/connectors.toml``, as
``dp2 up`` runs it. Every connector of this module shares one consumer group, so the
upload test's reconfigured connector carries on where the folder-drop one stopped —
as an operator who switches the print provider from a folder to HTTP would see it.
A local aiohttp server plays the HTTP print provider, down first and then up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import re
import secrets
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pypdf import PdfReader
from reportlab.pdfgen.canvas import Canvas

from brokers.contacts.records import read_contact_file
from brokers.contacts.register import publish_contacts
from brokers.runtime.host import ServiceHost
from brokers.runtime.kafka import new_producer
from brokers.security import signing
from brokers.security.pki import provider_identity_name
from brokers.stack.access import REGISTER_IDENTITY
from brokers.stack.registry import build_service
from connectors.base import discover
from connectors.sdk import Document, build_message
from schemas import codec
from schemas.models import Envelope, LifecycleState
from schemas.vocabulary import MESSAGE_UUID_HEADER, PRINT_TOPIC
from tests.integration.conftest import EXEMPT_CPR, SENDER_CVR, Stack, until
from tracing.quarantine import QuarantineStore

pytestmark = [pytest.mark.kafka]

GROUP = f".print-{uuid.uuid4().hex[:8]}"
NO_NAME, NO_POSTCODE, IN_SWEDEN, NOT_REGISTERED = (
    f"{secrets.randbelow(10**10):010d}" for _ in range(4)
)
ATTACHMENT_PAGES = ("Bilag side 1: plan over Ågade", "Bilag side 2: tegning")


def _pdf(*texts: str) -> bytes:
    buffer = io.BytesIO()
    canvas = Canvas(buffer)
    for text in texts:
        canvas.drawString(72, 720, text)
        canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def _letter(recipient: str, label: str = "Afgørelse om boligstøtte") -> Envelope:
    return build_message(
        sender_cvr=SENDER_CVR,
        sender_label="Aarhus Kommune",
        recipient_id=recipient,
        label=label,
        documents=[
            Document("afgoerelse.txt", "text/plain", "Du får boligstøtte fra 1. april.".encode()),
            Document("plan.pdf", "application/pdf", _pdf(*ATTACHMENT_PAGES), label="Bilag"),
        ],
    )


def _texts(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


async def _quarantined_failed(stack: Stack, message_uuid: str) -> None:
    """The print connector's FAILED of a record that was never routed to print sits in
    the quarantine, refused with EVENT_NOT_ROUTED_HERE, and is not in the trace."""
    store = QuarantineStore(stack.settings.home / "data" / "quarantine.sqlite")
    try:
        rows = await until(
            lambda: [q for q in store.of_message(message_uuid) if q.state == "FAILED"],
            what="the quarantined FAILED",
        )
    finally:
        store.close()
    assert rows[0].signer == "provider:print" and rows[0].reason_code == "EVENT_NOT_ROUTED_HERE"
    assert await asyncio.to_thread(stack.trace, message_uuid) is None


def _check(host: ServiceHost) -> dict[str, Any]:
    check: dict[str, Any] = next(c for c in host.health()["checks"] if c["check"] == "print")
    return check


@asynccontextmanager
async def print_connector(stack: Stack, **config: Any) -> AsyncIterator[ServiceHost]:
    """The installed print connector, run with ``config`` as its [connectors.print] table."""
    if "print" not in discover():
        pytest.fail("no 'print' entry point: run .venv/bin/pip install --no-deps -e .")
    path = stack.settings.home / "connectors.toml"
    table = "[connectors.print]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items())

    def write(new_table: str) -> None:  # other fixtures keep their tables in the same file
        text = path.read_text() if path.exists() else ""
        text = re.sub(r"(?ms)^\[connectors\.print\]\n.*?(?=^\[|\Z)", "", text).rstrip("\n")
        path.write_text(f"{text}\n\n{new_table}" if text else new_table)

    write(table)
    await stack.apply_acls()  # as dp2 up does after connectors.toml changed
    host = await build_service("connector", stack.settings, connector="print", group_suffix=GROUP)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()
        write("")


@dataclass
class Printer:
    host: ServiceHost
    drop_dir: Path


@pytest.fixture(scope="class")
async def printer(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Printer]:
    """The print connector dropping PDFs in a folder, with three unprintable recipients known."""
    register = tmp_path_factory.mktemp("print-contacts") / "contacts.json"
    full = {"street": "Bygade 2", "postcode": "4000", "city": "Roskilde"}
    register.write_text(
        json.dumps(
            [
                {"id": NO_NAME, "status": "EXEMPT", "address": full},
                {
                    "id": NO_POSTCODE,
                    "status": "EXEMPT",
                    "name": "Ole Olsen",
                    "address": {**full, "postcode": ""},
                },
                {
                    "id": IN_SWEDEN,
                    "status": "EXEMPT",
                    "statusReason": "udrejst",
                    "name": "Anna Berg",
                    "address": {
                        "street": "Storgatan 1",
                        "postcode": "211 22",
                        "city": "Malmö",
                        "country": "SE",
                    },
                },
            ]
        )
    )
    await publish_contacts(
        stack.kafka(REGISTER_IDENTITY), read_contact_file(register, stack.pseudonyms)
    )
    await until(
        lambda: all(
            stack.contacts.get(stack.pseudonyms.ref("CPR", cpr))
            for cpr in (NO_NAME, NO_POSTCODE, IN_SWEDEN)
        ),
        what="the register to hold the test recipients",
    )
    drop_dir = tmp_path_factory.mktemp("print-outbox")
    async with print_connector(
        stack,
        drop_dir=str(drop_dir),
        poll_s=0.2,
        retry_max_s=1.0,
        return_address="DP2 Print\nPostboks 1\n8000 Aarhus C",
    ) as host:
        yield Printer(host, drop_dir)


class TestFolderDrop:
    async def test_a_letter_is_printed_with_the_address_and_every_page(
        self, stack: Stack, printer: Printer
    ) -> None:
        """A text and a 2-page PDF to an exempt recipient: PRINTED, and the PDF has all 4 pages."""
        async with stack.client() as client:
            receipt = await client.send(_letter(EXEMPT_CPR))
            event = await client.wait_for(receipt.message_uuid, {"PRINTED", "FAILED"}, 60)
        message_uuid = receipt.message_uuid
        assert event.state is LifecycleState.PRINTED, event.reasonText
        assert event.attributes["pages"] == "4" and event.channel == "print"
        print_identity = stack.pki.identity(provider_identity_name("print"))
        signing.verify_event(event, print_identity.certificate)  # signed by the print provider
        trace = await stack.wait_trace(message_uuid, "PRINTED")
        assert trace["state"] == "PRINTED"

        pdf = (printer.drop_dir / f"{message_uuid}.pdf").read_bytes()
        pages = _texts(pdf)
        assert len(pages) == 1 + 1 + 2, "cover, the text, both pages of the PDF"
        for expected in ("Inge Madsen", "Algade 7", "4000 Roskilde", "Aarhus Kommune"):
            assert expected in pages[0], expected
        assert "Afgørelse om boligstøtte" in pages[0] and f"CVR {SENDER_CVR}" in pages[0]
        assert "Du får boligstøtte fra 1. april." in pages[1]
        assert pages[2:] == _texts(_pdf(*ATTACHMENT_PAGES)), "PDF pages are imported unchanged"
        assert EXEMPT_CPR not in "".join(pages)

        meta_text = (printer.drop_dir / f"{message_uuid}.json").read_text()
        meta = json.loads(meta_text)
        assert meta["pages"] == 4 and meta["sha256"] == hashlib.sha256(pdf).hexdigest()
        assert meta["postcode"] == "4000" and meta["recipientRef"].startswith("psn-")
        assert EXEMPT_CPR not in meta_text, "no CPR number beside the PDF"
        assert not list(printer.drop_dir.glob(".*")), "no partial files left behind"
        check = _check(printer.host)
        assert check["status"] == "ok" and check["printed"] >= 1 and check["queued"] == 0

    async def test_unprintable_addresses_and_bad_input_fail_with_their_reason(
        self, stack: Stack, printer: Printer
    ) -> None:
        """Tampering, no name, no postcode, Sweden, no record: each FAILED with its own code."""
        sealed, ref = stack.client().seal_and_sign(_letter(EXEMPT_CPR, "Ændres undervejs"))
        tampered = dataclasses.replace(
            sealed, header=dataclasses.replace(sealed.header, label="Ændret efter signering")
        )
        producer = new_producer(stack.admin)  # as if the router were compromised
        await producer.start()
        try:
            await producer.send_and_wait(
                PRINT_TOPIC,
                codec.encode(tampered),
                key=ref.encode(),
                headers=[(MESSAGE_UUID_HEADER, tampered.header.messageUUID.encode())],
            )
        finally:
            await producer.stop()
        expected: dict[str, str] = {}
        async with stack.client() as client:
            for cpr, code in (
                (NO_NAME, "ADDRESS_NAME_MISSING"),
                (NO_POSTCODE, "ADDRESS_INCOMPLETE"),
                (IN_SWEDEN, "FOREIGN_ADDRESS_UNSUPPORTED"),
                (NOT_REGISTERED, "ADDRESS_UNKNOWN"),
            ):
                receipt = await client.send(_letter(cpr))
                expected[receipt.message_uuid] = code
        # The tampered one skipped the router: the print connector refused it (FAILED
        # SIGNATURE_INVALID, no PDF), and since nothing was routed to print, the trace
        # does not believe that FAILED either: it is quarantined (the authority table).
        await _quarantined_failed(stack, tampered.header.messageUUID)
        for message_uuid, code in expected.items():
            trace = await stack.wait_trace(message_uuid, "FAILED")
            failed = next(e for e in trace["timeline"] if e["state"] == "FAILED")
            assert failed["reasonCode"] == code, trace
            assert trace["state"] == "FAILED" and failed["actor"] == "connector:print"
            if code.startswith(("ADDRESS", "FOREIGN")):
                assert "contact" in failed["reasonText"] or "countries" in failed["reasonText"]
            assert not (printer.drop_dir / f"{message_uuid}.pdf").exists()
        check = _check(printer.host)
        assert check["failed"] >= 5 and check["status"] == "ok", "the consumer goes on"
        assert check["worker"]["running"]


class PrintProvider:
    """A print provider's upload endpoint on 127.0.0.1, started only when told."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.jobs: dict[str, tuple[dict[str, str], bytes]] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jobs"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/jobs", self._take)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _take(self, request: web.Request) -> web.Response:
        self.jobs[request.headers["X-DP2-Message-UUID"]] = (
            dict(request.headers),
            await request.read(),
        )
        return web.json_response({"accepted": True}, status=201)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Health:
    url: str
    seen: list[str] = field(default_factory=list)

    async def status(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.url) as response:
            status = str((await response.json())["status"])
        self.seen.append(status)
        return status


async def test_an_upload_provider_that_is_down_gets_the_letter_when_it_is_back(
    stack: Stack,
) -> None:
    """Connection refused: queued, /healthz degraded, no PRINTED; provider up: uploaded, PRINTED."""
    provider = PrintProvider(_free_port())
    async with (
        print_connector(stack, upload_url=provider.url, poll_s=0.2, retry_max_s=1.0) as host,
        stack.client() as client,
    ):
        assert host.url is not None
        health = Health(f"{host.url}/healthz")
        receipt = await client.send(_letter(EXEMPT_CPR, "Brev via upload"))
        message_uuid = receipt.message_uuid
        await client.wait_for(message_uuid, {"ROUTED"})
        deadline = asyncio.get_running_loop().time() + 30
        while await health.status() != "degraded":
            assert asyncio.get_running_loop().time() < deadline, health.seen
            await asyncio.sleep(0.2)
        check = _check(host)
        assert check["retrying"] >= 1 and "ClientConnectorError" in check["lastError"]
        assert "PRINTED" not in [e.state.value for e in client.events(message_uuid)]

        await provider.start()
        try:
            event = await client.wait_for(message_uuid, {"PRINTED"}, 30)
            assert event.attributes["handover"] == "http" and event.attributes["pages"] == "4"
            headers, pdf = provider.jobs[message_uuid]
            assert headers["Content-Type"] == "application/pdf" and headers["X-DP2-Pages"] == "4"
            pages = _texts(pdf)
            assert len(pages) == 4 and "Inge Madsen" in pages[0] and "Brev via upload" in pages[0]
            await until(lambda: _check(host)["queued"] == 0, what="the queue to empty")
            assert await health.status() == "ok"
        finally:
            await provider.stop()
    await stack.wait_trace(message_uuid, "PRINTED")
