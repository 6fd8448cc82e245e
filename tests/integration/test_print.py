"""The remote print connector end to end, on the session's real Kafka and test stack.

The connector is the installed one: found through its ``dp2.connectors`` entry point
and configured by a ``[connectors.print]`` table in ``$DP2_HOME/connectors.toml``, as
``dp2 up`` runs it. Every connector of this module run in the test process shares one
consumer group, so the upload test's reconfigured connector carries on where the
folder-drop one stopped — as an operator who switches the print provider from a
folder to HTTP would see it. A local aiohttp server plays the HTTP print provider,
down first and then up.

The big-letter test (issue 15) runs the connector as ``dp2 run connector --name
print`` in a process of its own (its own consumer group, ``dp2 up``'s), so that the
peak RSS it reports and holds to 200 MB is the print connector's alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import re
import secrets
import socket
import sqlite3
import sys
import time
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
from brokers.runtime.private import private_dir
from brokers.security import signing
from brokers.security.pki import provider_identity_name
from brokers.stack.access import REGISTER_IDENTITY
from brokers.stack.registry import build_service
from connectors.base import discover
from connectors.print.spool import Spool
from connectors.print.store import PrintStore
from connectors.sdk import Document, build_message
from schemas import codec
from schemas.models import Envelope, LifecycleState
from schemas.vocabulary import MESSAGE_UUID_HEADER, PRINT_TOPIC
from tests.integration.conftest import EXEMPT_CPR, SENDER_CVR, Stack, until
from tests.unit.test_print_render import scan_images, write_scan
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
async def configured(stack: Stack, **config: Any) -> AsyncIterator[None]:
    """``config`` as the [connectors.print] table of connectors.toml while in the block."""
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
    try:
        yield
    finally:
        write("")


@asynccontextmanager
async def print_connector(stack: Stack, **config: Any) -> AsyncIterator[ServiceHost]:
    """The installed print connector, run with ``config`` as its [connectors.print] table."""
    async with configured(stack, **config):
        host = await build_service(
            "connector", stack.settings, connector="print", group_suffix=GROUP
        )
        await host.start()
        try:
            yield host
        finally:
            await host.stop()


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
            assert headers["Content-Length"] == str(len(pdf)), "streamed from the spool, sized"
            pages = _texts(pdf)
            assert len(pages) == 4 and "Inge Madsen" in pages[0] and "Brev via upload" in pages[0]
            await until(lambda: _check(host)["queued"] == 0, what="the queue to empty")
            assert await health.status() == "ok"
        finally:
            await provider.stop()
    await stack.wait_trace(message_uuid, "PRINTED")


async def test_a_queued_letter_survives_a_crash_and_an_upgrade_and_leftovers_go(
    stack: Stack, tmp_path: Path
) -> None:
    """At start the connector deletes what a crash left in its spool (a rendered letter no
    job names, a partial file, a decrypted document) but not a queued job's letter; that
    job and one queued before the spool (its PDF a BLOB in print.sqlite) are then dropped
    byte for byte, and their plaintext is gone from the data folder."""
    data_dir = private_dir(stack.settings.home / "data" / "connectors" / "print")
    spool = Spool(data_dir)
    legacy, spooled_one, orphan = (str(uuid.uuid4()) for _ in range(3))
    pdfs = {legacy: _pdf("Brev fra før spoolen"), spooled_one: _pdf("Brev i spoolen")}
    meta = {"pages": 1, "recipientRef": "psn-test"}
    store = PrintStore(data_dir / "print.sqlite")
    try:
        written, _ = spool.write(spooled_one, lambda out: out.write(pdfs[spooled_one]))
        store.queue(
            spooled_one,
            sender_id=SENDER_CVR,
            recipient_ref="psn-test",
            pages=1,
            pdf_file=written.name,
            pdf_sha256=written.sha256,
            meta={**meta, "messageUUID": spooled_one},
        )
        legacy_meta = json.dumps({**meta, "messageUUID": legacy})
        db = sqlite3.connect(data_dir / "print.sqlite")  # a row as the queue held it before
        try:
            with db:
                db.execute(
                    "INSERT INTO jobs (message_uuid, state, sender_id, recipient_ref, pages, pdf,"
                    " meta, created_at) VALUES (?, 'queued', ?, 'psn-test', 1, ?, ?, ?)",
                    (legacy, SENDER_CVR, pdfs[legacy], legacy_meta, "2026-03-12T10:00:00Z"),
                )
        finally:
            db.close()
        spool.write(orphan, lambda out: out.write(b"%PDF-1.7 rendered, never queued"))
        (data_dir / "spool" / f".{orphan}.pdf.0.part").write_bytes(b"%PDF-1.7 half")
        an_hour_ago = time.time() - 3600  # left by a crash, not being committed right now
        for left in (f"{orphan}.pdf", f".{orphan}.pdf.0.part"):
            os.utime(data_dir / "spool" / left, (an_hour_ago, an_hour_ago))
        spool.documents.put_chunks([b"a document decrypted before a crash"])
        drop_dir = tmp_path / "outbox"
        async with print_connector(stack, drop_dir=str(drop_dir), poll_s=0.2, retry_max_s=1.0):
            await until(
                lambda: all(
                    (known := store.known(m)) is not None and known.state == "printed" for m in pdfs
                ),
                what="both queued letters to be printed",
            )
        for message_uuid, pdf in pdfs.items():
            assert (drop_dir / f"{message_uuid}.pdf").read_bytes() == pdf
            dropped_meta = json.loads((drop_dir / f"{message_uuid}.json").read_text())
            assert dropped_meta["messageUUID"] == message_uuid
        assert store.pdf(legacy) == b"", "the BLOB went once the PDF was in the spool"
        assert not [p for p in (data_dir / "spool").iterdir() if p.is_file()], "spool empty"
        assert not spool.documents.root.exists() or not any(spool.documents.root.rglob("*"))
    finally:
        store.close()


# --- a 99.5 MB letter, printed in flat memory (issue 15) -------------------------------------
MB = 1_000_000
SCAN_PAGES = 100
SCAN_PAGE_BYTES = 993_600  # 552 rows of 600 RGB pixels a page: a 99.4 MB PDF
PROCESS_BOUND_MB = 200.0  # issue 15: the peak RSS of every process


@dataclass
class PrintProcess:
    """The print connector in a process of its own, as ``dp2 up`` runs it."""

    process: asyncio.subprocess.Process
    url: str
    log: Path

    def memory(self, field: str) -> float:
        """``VmRSS`` or ``VmHWM`` (the peak) of the process, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MB
        raise AssertionError(f"no {field} for the print process")

    def reset_peak(self) -> float:
        """Start measuring the peak anew (Linux's clear_refs); the RSS now, in MB."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
        return self.memory("VmRSS")

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.process.returncode is None, self.log.read_text()[-4000:]
                try:
                    async with session.get(f"{self.url}/healthz") as response:
                        checks = (await response.json())["checks"]
                        if any(c["check"] == "print" and c["worker"]["running"] for c in checks):
                            return
                except aiohttp.ClientError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, self.log.read_text()[-4000:]
                await asyncio.sleep(0.3)


@asynccontextmanager
async def print_process(stack: Stack, log: Path, **config: Any) -> AsyncIterator[PrintProcess]:
    """``dp2 run connector --name print`` with ``config`` as its [connectors.print] table."""
    settings = stack.settings
    env = {
        **os.environ,
        "DP2_HOME": str(settings.home),
        "DP2_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "DP2_PKI": str(settings.pki_dir),
        "DP2_KAFKA_TLS": "1" if settings.kafka_tls else "0",
        "DP2_LOG_FORMAT": "json",
    }
    port = _free_port()
    async with configured(stack, **config):
        with log.open("wb") as output:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "brokers.cli", "run", "connector"),
                *("--name", "print", "--port", str(port)),
                env=env,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )
        running = PrintProcess(process, f"http://127.0.0.1:{port}", log)
        try:
            await running.ready()
            yield running
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    process.kill()
                    await process.wait()


class DiskPrintProvider(PrintProvider):
    """A print provider's upload endpoint that writes each upload to disk as it arrives."""

    def __init__(self, port: int, folder: Path) -> None:
        super().__init__(port)
        self.folder = folder
        folder.mkdir(exist_ok=True)

    async def _take(self, request: web.Request) -> web.Response:
        message_uuid = str(uuid.UUID(request.headers["X-DP2-Message-UUID"]))
        with (self.folder / f"{message_uuid}.pdf").open("wb") as out:
            async for piece in request.content.iter_chunked(1 << 20):
                out.write(piece)
        self.jobs[message_uuid] = (dict(request.headers), b"")
        return web.json_response({"accepted": True}, status=201)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


@pytest.mark.parametrize("handover", ["folder", "http"])
async def test_a_995_mb_pdf_letter_is_printed_whole_by_a_process_under_200_mb(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str], handover: str
) -> None:
    """A letter whose document is a 99.4 MB PDF of 100 scanned pages, to a citizen without
    digital post, is PRINTED by the print connector in a process of its own, dropped in a
    folder or uploaded: the provider gets the cover and every page with its image unchanged
    (with the page count and SHA-256 of its metadata, or its size as Content-Length),
    nothing of it is left in the connector's data folder, and the process's peak RSS stays
    under 200 MB."""
    scan = tmp_path / "tegninger.pdf"
    scan_sha, images = write_scan(scan, SCAN_PAGES, SCAN_PAGE_BYTES)
    scan_mb = scan.stat().st_size / MB
    message = build_message(
        sender_cvr=SENDER_CVR,
        sender_label="Aarhus Kommune",
        recipient_id=EXEMPT_CPR,
        label="Byggesag med tegninger",
        documents=[Document("tegninger.pdf", "application/pdf", scan.read_bytes())],
    )
    message_uuid = message.header.messageUUID
    drop_dir = tmp_path / "outbox"
    provider = DiskPrintProvider(_free_port(), tmp_path / "uploaded")
    config: dict[str, Any] = {"poll_s": 0.2, "retry_max_s": 1.0}
    if handover == "folder":
        config["drop_dir"] = str(drop_dir)
    else:
        config["upload_url"] = provider.url
        await provider.start()
    try:
        async with print_process(stack, tmp_path / "print.log", **config) as printer:
            started_peak = printer.memory("VmHWM")
            at_rest = printer.reset_peak()
            began = asyncio.get_running_loop().time()
            async with stack.client() as client:
                await client.send(message)
                del message
                event = await client.wait_for(message_uuid, {"PRINTED", "FAILED"}, 300)
            took = asyncio.get_running_loop().time() - began
            letter_peak = printer.memory("VmHWM")
    finally:
        await provider.stop()
    peak = max(started_peak, letter_peak)
    with capsys.disabled():
        print(
            f"\n[big print] {handover}: a {scan_mb:.1f} MB PDF of {SCAN_PAGES} pages PRINTED "
            f"{took:.1f} s after sending; the print process peaked at {peak:.1f} MB RSS (at "
            f"rest {at_rest:.1f} MB, start-up peak {started_peak:.1f} MB, with the letter "
            f"{letter_peak:.1f} MB)"
        )
    assert event.state is LifecycleState.PRINTED, event.reasonText
    assert event.attributes["pages"] == str(1 + SCAN_PAGES)
    assert event.attributes["handover"] == handover
    await stack.wait_trace(message_uuid, "PRINTED")

    if handover == "folder":
        printed = drop_dir / f"{message_uuid}.pdf"
        meta = json.loads((drop_dir / f"{message_uuid}.json").read_text())
        assert meta["sha256"] == _sha256_of(printed) and meta["bytes"] == printed.stat().st_size
        assert meta["pages"] == 1 + SCAN_PAGES
    else:
        printed = provider.folder / f"{message_uuid}.pdf"
        headers, _ = provider.jobs[message_uuid]
        assert headers["Content-Length"] == str(printed.stat().st_size), "sent whole, sized"
        assert headers["X-DP2-Pages"] == str(1 + SCAN_PAGES)
    reader = PdfReader(printed)
    assert len(reader.pages) == 1 + SCAN_PAGES, "the cover, then every page of the scan"
    cover = reader.pages[0].extract_text()
    for expected in ("Inge Madsen", "4000 Roskilde", "Byggesag med tegninger"):
        assert expected in cover, expected
    assert f"tegninger.pdf, {SCAN_PAGES} sider" in cover
    assert scan_images(reader.pages[1:]) == images, "every page's image is the scan's, in order"
    data_dir = stack.settings.home / "data" / "connectors" / "print"
    left = [p for p in data_dir.rglob("*") if message_uuid in p.name or scan_sha in p.name]
    assert not left, f"the letter's plaintext is not kept once handed over: {left}"
    assert peak < PROCESS_BOUND_MB, f"the print process peaked at {peak:.1f} MB"
