"""The mail connector end to end: a mail client writes to an authority, and post comes back.

Real SMTP only: smtplib (in a thread) talks STARTTLS and AUTH to the connector's
submission server, trusting the development certificate the connector made; an
aiosmtpd Controller on 127.0.0.1 is the relay that forwarded post goes through. The
connector runs in-process on the session's Kafka next to the ESDH connector, whose
case system (conftest's EsdhPeer) journals what citizens write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import smtplib
import socket
import sqlite3
import ssl
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiosmtpd.controller import Controller

from brokers.contacts.records import read_contact_file
from brokers.contacts.register import publish_contacts
from brokers.runtime.host import ServiceHost
from brokers.stack.access import REGISTER_IDENTITY
from brokers.stack.registry import build_service
from connectors.citizens import DevTokens
from connectors.mail.mime import citizen_envelope, read_mail, safe_filename
from connectors.sdk import Document, build_message
from schemas import memo
from schemas.models import CaseID, ContentData, IdType
from tests.integration.conftest import AUTHORITY_CVR, Esdh, Stack, until

DOMAIN = "post.dp2.local"
MAIL_PROVIDER = "mailgw"
MAX_BYTES = 1_000_000  # small, so that the size tests move little data
ATTACH_MAX_BYTES = 2_000_000  # full mode attaches files up to this much
WRITER_CPR = "1203804567"  # writes to the authority
REFUSED_CPR = "2505751234"  # is refused in every way first
FORWARD_CPR = "1507804321"  # registered at the mail connector, gets post by e-mail
FORWARD_EMAIL = "borger@example.dk"
OTHER_AUTHORITIES = [f"3000000{n}" for n in range(10)]  # registered, written to at most once
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


class Relay:
    """aiosmtpd handler of the SMTP relay: keeps every mail it takes, with its recipients."""

    def __init__(self) -> None:
        self.mails: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = BytesParser(policy=policy.default).parsebytes(envelope.original_content)
        self.mails.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def with_id(self, message_uuid: str) -> tuple[list[str], EmailMessage] | None:
        wanted = f"<{message_uuid}@{DOMAIN}>"
        return next(((r, m) for r, m in self.mails if m["Message-ID"] == wanted), None)


@dataclass
class Gateway:
    host: ServiceHost
    relay: Relay
    controller: Controller
    relay_port: int
    port: int
    certificate: Path
    stack: Stack
    esdh: Esdh
    session: aiohttp.ClientSession
    tokens: DevTokens = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = DevTokens.from_home(self.stack.settings.home)

    def health(self) -> dict[str, Any]:
        check: dict[str, Any] = self.host.health()["checks"][0]
        return check

    async def submit(
        self, data: bytes | None, *, cpr: str | None = WRITER_CPR, **kwargs: Any
    ) -> list[tuple[str, int, str]]:
        """One real SMTP session from a mail client; the replies, stage by stage."""
        token = self.tokens.issue(cpr) if cpr else kwargs.pop("token", None)
        return await asyncio.to_thread(
            _session, self.port, self.certificate, token=token, data=data, **kwargs
        )

    async def forwarding(self, method: str, cpr: str | None, body: Any = None) -> tuple[int, Any]:
        assert self.host.url is not None
        headers = {"Authorization": f"Bearer {self.tokens.issue(cpr)}"} if cpr else {}
        async with self.session.request(
            method, f"{self.host.url}/forwarding", json=body, headers=headers
        ) as response:
            return response.status, await response.json()

    async def letter(self, *, label: str, case_id: str, text: str) -> str:
        """An authority's letter to FORWARD_CPR, sent by the ESDH connector as MeMo."""
        message = build_message(
            sender_cvr=AUTHORITY_CVR,
            sender_label="Aarhus Kommune",
            recipient_id=FORWARD_CPR,
            label=label,
            documents=[Document("afgoerelse.txt", "text/plain", text.encode())],
        )
        header = replace(
            message.header,
            contentData=ContentData(caseID=CaseID(caseID=case_id, caseSystem="SBSYS")),
            reply=True,
        )
        status, body = await self.esdh.post(memo.to_xml(replace(message, header=header)))
        assert status == 202, body
        return str(body["messageUUID"])


def _session(
    port: int,
    certificate: Path,
    *,
    token: str | None,
    data: bytes | None,
    to: Sequence[str] = (f"{AUTHORITY_CVR}@{DOMAIN}",),
    mechanism: str = "PLAIN",
    starttls: bool = True,
    size: int | None = None,
) -> list[tuple[str, int, str]]:
    """Talk SMTP like a mail client, stopping at the first refusal."""
    replies: list[tuple[str, int, str]] = []
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo("mailclient.example")
        if starttls:
            client.starttls(context=ssl.create_default_context(cafile=str(certificate)))
            client.ehlo("mailclient.example")
        if token is not None:
            client.user, client.password = "me@example.dk", token  # the user name is ignored
            try:
                code, text = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
            except smtplib.SMTPAuthenticationError as exc:
                said = exc.smtp_error
                return [("AUTH", exc.smtp_code, said.decode() if isinstance(said, bytes) else said)]
            replies.append(("AUTH", code, text.decode()))
        code, text = client.mail("me@example.dk", [f"SIZE={size}"] if size else [])
        replies.append(("MAIL", code, text.decode()))
        if code != 250:
            return replies
        for address in to:
            code, text = client.rcpt(address)
            replies.append(("RCPT", code, text.decode()))
        if data is None or not any(s == "RCPT" and c == 250 for s, c, _ in replies):
            return replies
        code, text = client.data(data)
        replies.append(("DATA", code, text.decode()))
    return replies


def _mail(
    subject: str | None,
    text: str | None = "Hej, jeg har et spørgsmål.",
    *,
    html: str | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (),
    headers: dict[str, str] | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = "Borger <me@example.dk>"
    message["To"] = f"{AUTHORITY_CVR}@{DOMAIN}"
    if subject is not None:
        message["Subject"] = subject
    for name, value in (headers or {}).items():
        message[name] = value
    if text is not None:
        message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    for filename, mime_type, data in attachments:
        maintype, _, subtype = mime_type.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes(policy=policy.SMTP)


def _queued(replies: list[tuple[str, int, str]]) -> str:
    stage, code, text = replies[-1]
    assert (stage, code) == ("DATA", 250), replies
    found = re.fullmatch(r"2\.0\.0 OK: queued as ([0-9a-f-]{36})", text)
    assert found, text
    return found.group(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
async def gateway(
    stack: Stack, esdh: Esdh, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Gateway]:
    """The mail connector (submission and forwarding as provider mailgw) and its relay."""
    stack.pki.issue_provider(
        MAIL_PROVIDER, citizen_gateway=True
    )  # signs citizens' mail, opens their post
    register = tmp_path_factory.mktemp("mail") / "contacts.json"
    register.write_text(
        json.dumps(
            [
                {
                    "id": FORWARD_CPR,
                    "idType": "CPR",
                    "status": "REGISTERED",
                    "provider": MAIL_PROVIDER,
                    "channels": [{"channel": "EMAIL", "address": FORWARD_EMAIL}],
                },
                *(
                    {"id": cvr, "idType": "CVR", "status": "REGISTERED", "provider": "esdh-x"}
                    for cvr in OTHER_AUTHORITIES
                ),
            ]
        )
    )
    await publish_contacts(
        stack.kafka(REGISTER_IDENTITY), read_contact_file(register, stack.pseudonyms)
    )
    relay = Relay()
    relay_port = _free_port()
    controller = Controller(relay, hostname="127.0.0.1", port=relay_port)
    await asyncio.to_thread(controller.start)
    config = stack.settings.home / "connectors.toml"
    assert "[connectors.esdh]" in config.read_text(), "the esdh fixture writes the file first"
    config.write_text(
        config.read_text() + "\n[connectors.mail]\n"
        f'domain = "{DOMAIN}"\nidentity = "provider-{MAIL_PROVIDER}"\n'
        f'provider = "{MAIL_PROVIDER}"\ncontact_details = true\nmax_bytes = {MAX_BYTES}\n'
        f'relay_host = "127.0.0.1"\nrelay_port = {relay_port}\npoll_s = 0.2\nretry_max_s = 1.0\n'
        f"attach_max_bytes = {ATTACH_MAX_BYTES}\n"
    )
    await stack.apply_acls()  # the mail provider and connector get their rights, as in dp2 up
    host = await build_service(
        "connector", stack.settings, connector="mail", group_suffix=f".{uuid.uuid4().hex[:8]}"
    )
    await host.start()
    await asyncio.sleep(1)  # the ESDH connector's register sees the forwarding citizen
    certificate = stack.settings.home / "data" / "connectors" / "mail" / "smtp-tls.crt"
    port = int(host.health()["checks"][0]["smtpPort"])
    async with aiohttp.ClientSession() as session:
        gateway = Gateway(
            host, relay, controller, relay_port, port, certificate, stack, esdh, session
        )
        try:
            yield gateway
        finally:
            await host.stop()
            await asyncio.to_thread(gateway.controller.stop)


def test_a_mail_of_any_shape_becomes_a_valid_memo_message() -> None:
    """HTML only, attachments only, odd names, bytes XML cannot carry: each gives valid MeMo."""
    now = datetime.now(UTC)
    shapes = [
        _mail(None, None, html="<p>Kun HTML</p>"),
        _mail("Kun bilag", None, attachments=[("scan?.pdf", "application/pdf", PDF)]),
        _mail("Navne", attachments=[('a<b>:"c"|d*\u00a0e\u200b.pdf', "application/pdf", PDF)]),
        (  # what XML cannot carry, in the subject and a file name, as a broken client sends it
            b"Subject: a\x1bb \xff [sag:S\x00G]\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
            b"Content-Type: text/plain\r\n\r\nhej\r\n--B\r\nContent-Type: application/pdf\r\n"
            b'Content-Disposition: attachment; filename="x\xff\x01.pdf"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\nJVBERg==\r\n--B--\r\n"
        ),
    ]
    for raw in shapes:
        mail = read_mail(raw, DOMAIN)
        message = citizen_envelope(
            mail, cpr=WRITER_CPR, cvr=AUTHORITY_CVR, message_uuid=str(uuid.uuid4()), now=now
        )
        assert memo.validate(message, now=now) == [], mail
        assert memo.parse(memo.to_xml(message)) == message
    assert read_mail(shapes[0], DOMAIN).label == "Besked fra borger"
    assert safe_filename('a<b>:"c"|d*\u00a0e\u200b.pdf', "x") == "a_b___c__d__e_.pdf"
    assert safe_filename("../..", "vedhaeftning-1.bin") == "vedhaeftning-1.bin"


@pytest.mark.kafka
async def test_a_mail_with_text_html_and_a_pdf_is_journaled_on_its_case(
    gateway: Gateway,
) -> None:
    """The mail becomes a signed message from the CPR; the ESDH files it on the tagged case."""
    raw = _mail(
        "[sag:SAG-2026-0314] Spørgsmål om byggesag",
        "Hvornår får jeg svar på min byggesag?",
        html="<p>Hvornår får jeg svar på min <b>byggesag</b>?</p>",
        attachments=[("tegning.pdf", "application/pdf", PDF)],
    )
    replies = await gateway.submit(raw)
    assert [(s, c) for s, c, _ in replies] == [
        ("AUTH", 235),
        ("MAIL", 250),
        ("RCPT", 250),
        ("DATA", 250),
    ]
    message_uuid = _queued(replies)

    trace = await gateway.stack.wait_trace(message_uuid, "JOURNALED")
    entry = next(j for j in gateway.esdh.peer.journal if j["messageUUID"] == message_uuid)
    assert entry["caseID"] == "SAG-2026-0314"
    letter = memo.parse(entry["memo"].encode())
    header = letter.header
    assert (header.sender.senderID, header.sender.idType) == (WRITER_CPR, IdType.CPR)
    assert (header.recipient.recipientID, header.recipient.idType) == (AUTHORITY_CVR, IdType.CVR)
    assert header.label == "Spørgsmål om byggesag"
    assert letter.body is not None
    text, html = letter.body.mainDocument.file
    assert (text.filename, text.encodingFormat) == ("besked.txt", "text/plain")
    assert text.content.data.decode() == "Hvornår får jeg svar på min byggesag?\n"  # type: ignore[union-attr]
    assert (html.filename, html.encodingFormat) == ("besked.html", "text/html")
    [attachment] = letter.body.additionalDocument
    assert attachment.file[0].filename == "tegning.pdf"
    assert attachment.file[0].content.data == PDF  # type: ignore[union-attr]
    assert WRITER_CPR not in json.dumps(trace), "the trace shows a pseudonym, not the CPR"

    again = await gateway.submit(raw, mechanism="LOGIN")
    assert _queued(again) == message_uuid, "a resent mail keeps its UUID"
    await gateway.stack.wait_trace(message_uuid, "DUPLICATE")
    health = gateway.health()
    assert health["check"] == "mail" and health["smtpPort"] == gateway.port
    assert health["status"] == "ok", health


@pytest.mark.kafka
async def test_refused_mail_gets_its_reply_code_and_nothing_reaches_kafka(
    gateway: Gateway,
) -> None:
    """Each refusal has its SMTP code and says why; none of it is sent, a good mail is."""
    journal_before = len(gateway.esdh.peer.journal)
    tokens = gateway.tokens
    expired = tokens.issue(REFUSED_CPR, now=datetime.now(UTC) - timedelta(hours=13))
    good = _mail("Et helt almindeligt spørgsmål")
    attachments = [(f"bilag-{n}.pdf", "application/pdf", PDF) for n in range(11)]

    async def last(data: bytes | None, **kwargs: Any) -> tuple[str, int, str]:
        return (await gateway.submit(data, **{"cpr": REFUSED_CPR, **kwargs}))[-1]

    assert await last(good, cpr=None) == (
        "MAIL",
        530,
        "5.7.0 Authentication required: use STARTTLS, then AUTH with your DP2 citizen "
        "token as the password",
    )
    stage, code, text = await last(good, cpr=None, token="dp2c.forged.token")  # noqa: S106 - a wrong one
    assert (stage, code) == ("AUTH", 535) and text.startswith("5.7.8 ") and "citizen token" in text
    stage, code, text = await last(good, cpr=None, token=expired, mechanism="LOGIN")
    assert (stage, code) == ("AUTH", 535) and "expired" in text
    assert (await last(good, starttls=False))[:2] == ("AUTH", 538), "no token in clear"
    stage, code, text = await last(good, to=["12345678@" + DOMAIN])
    assert (stage, code) == ("RCPT", 550) and text.startswith("5.1.1 <12345678@post.dp2.local>")
    assert "no authority with that address on DP2" in text
    stage, code, text = await last(good, to=[f"{AUTHORITY_CVR}@example.com"])
    assert (stage, code) == ("RCPT", 550) and text.startswith("5.7.1 Relaying denied")
    everyone = [f"{cvr}@{DOMAIN}" for cvr in [AUTHORITY_CVR, *OTHER_AUTHORITIES]]
    stage, code, text = await last(None, to=everyone)
    assert (stage, code) == ("RCPT", 452) and text.startswith("4.5.3 Too many recipients")
    stage, code, text = await last(good, size=2 * MAX_BYTES)
    assert (stage, code) == ("MAIL", 552) and text.startswith("5.3.4 Message too big")
    big = _mail("Stor", attachments=[("stor.pdf", "application/pdf", b"x" * (MAX_BYTES + 100_000))])
    stage, code, text = await last(big)
    assert (stage, code) == ("DATA", 552) and text.startswith("5.3.4 Message too big"), text
    long_text = ("a" * 99 + "\n") * (MAX_BYTES // 100 + 100)  # under SIZE, over the documents
    assert (await last(_mail("Lang", long_text)))[:2] == ("DATA", 552)
    stage, code, text = await last(_mail("Mange bilag", attachments=attachments))
    assert (stage, code) == ("DATA", 550) and text.startswith("5.6.0 MEMO_TOO_MANY_ATTACHMENTS")
    stage, code, text = await last(_mail("Ø" * 257))
    assert (stage, code) == ("DATA", 550) and text.startswith("5.6.0 MEMO_TEXT_TOO_LONG")

    async def sent_by_refused() -> list[dict[str, Any]]:
        pseudonym = gateway.stack.pseudonyms.ref("CPR", REFUSED_CPR)
        async with gateway.session.get(
            f"{gateway.stack.tracing_url}/messages",
            params={"sender": pseudonym},
            headers={"Authorization": f"Bearer {gateway.stack.operator_token()}"},
        ) as response:
            items: list[dict[str, Any]] = (await response.json())["items"]
            return items

    await asyncio.sleep(2)  # what reached Kafka would be traced and journaled by now
    assert await sent_by_refused() == []
    assert len(gateway.esdh.peer.journal) == journal_before
    message_uuid = _queued(await gateway.submit(good, cpr=REFUSED_CPR))
    await gateway.stack.wait_trace(message_uuid, "JOURNALED")
    assert [i["messageUUID"] for i in await sent_by_refused()] == [message_uuid], (
        "the check above would have seen a message"
    )


@pytest.mark.kafka
async def test_post_is_forwarded_as_chosen_and_a_reply_threads_back(gateway: Gateway) -> None:
    """Notice by default (no content, no label); full after PUT; a reply is journaled on it."""
    first = await gateway.letter(
        label="Afgørelse om byggetilladelse", case_id="SAG-2026-0555", text="Du får tilladelse."
    )
    found = await until(lambda: gateway.relay.with_id(first), what="the notice at the relay")
    recipients, notice = found
    assert recipients == [FORWARD_EMAIL] and notice["To"] == FORWARD_EMAIL
    assert notice["Reply-To"] == f"{AUTHORITY_CVR}@{DOMAIN}"
    assert not notice.is_multipart(), "a notice has no attachments"
    shown = notice.as_string() + str(notice.get_content())
    assert "tilladelse" not in shown.lower(), "neither the label nor the content"
    assert "Aarhus Kommune" in str(notice.get_content())

    assert await gateway.forwarding("GET", FORWARD_CPR) == (
        200,
        {
            "mode": "notice",
            "modes": ["full", "notice", "off"],
            "emailRegistered": True,
            "forwardedByThisProvider": True,
        },
    )
    status, body = await gateway.forwarding("PUT", FORWARD_CPR, {"mode": "loud"})
    assert status == 400 and body["reasonCode"] == "BAD_FORWARDING_MODE"
    status, body = await gateway.forwarding("PUT", None, {"mode": "full"})
    assert status == 401 and body["reasonCode"] == "AUTH_REQUIRED"
    status, body = await gateway.forwarding("PUT", FORWARD_CPR, {"mode": "full"})
    assert status == 200 and body["mode"] == "full"

    second = await gateway.letter(
        label="Partshøring om byggesag", case_id="SAG-2026-0556", text="Vi hører dig gerne."
    )
    _, full = await until(lambda: gateway.relay.with_id(second), what="the letter at the relay")
    assert full["Subject"] == "Partshøring om byggesag"
    [document] = list(full.iter_attachments())
    assert document.get_filename() == "afgoerelse.txt"
    assert document.get_payload(decode=True) == "Vi hører dig gerne.".encode()

    reply = _mail(
        f"Re: {full['Subject']}",
        "Tak, jeg har ingen bemærkninger.",
        headers={"In-Reply-To": str(full["Message-ID"]), "References": str(full["Message-ID"])},
    )
    replies = await gateway.submit(reply, cpr=FORWARD_CPR, to=[str(full["Reply-To"])])
    answer = _queued(replies)
    await gateway.stack.wait_trace(answer, "JOURNALED")
    entry = next(j for j in gateway.esdh.peer.journal if j["messageUUID"] == answer)
    assert entry["replyTo"] == second and entry["caseID"] == "SAG-2026-0556"
    assert memo.parse(entry["memo"].encode()).header.replyData[0].messageUUID == second


@pytest.mark.kafka
async def test_a_relay_that_is_down_gets_the_letter_when_it_is_back(gateway: Gateway) -> None:
    """While the relay is down the letter waits (health degraded); then it is forwarded."""
    await asyncio.to_thread(gateway.controller.stop)
    try:
        letter = await gateway.letter(
            label="Mens relæet er nede", case_id="SAG-2026-0557", text="Brevet venter."
        )
        await until(
            lambda: gateway.health()["status"] == "degraded",
            what="degraded while the relay is down",
        )
        health = gateway.health()
        assert health["forwardPending"] >= 1 and health["forwardFailing"] >= 1, health
        assert gateway.relay.with_id(letter) is None
    finally:  # a stopped Controller cannot start again: a new one on the same port
        gateway.controller = Controller(
            gateway.relay, hostname="127.0.0.1", port=gateway.relay_port
        )
        await asyncio.to_thread(gateway.controller.start)
    await until(lambda: gateway.relay.with_id(letter), what="the letter after the relay is back")
    await until(lambda: gateway.health()["status"] == "ok", what="ok once nothing waits")
    assert gateway.health()["forwardPending"] == 0


async def test_a_big_letter_is_kept_by_reference_and_forwarded_as_a_notice(
    gateway: Gateway,
) -> None:
    """Full mode, a letter with 3 MB of files (over attach_max_bytes): its document is
    decrypted into the connector's own folder, the queue row stays small, and the relay
    gets a notice saying the letter was too large, without the file; a small letter
    right after still arrives whole."""
    status, _ = await gateway.forwarding("PUT", FORWARD_CPR, {"mode": "full"})
    assert status == 200
    text = "Bilag til afgørelsen. " * 140_000  # about 3 MB: blob-stored, not inline
    big = await gateway.letter(label="Stort bilag", case_id="SAG-2026-0600", text=text)
    _, notice = await until(lambda: gateway.relay.with_id(big), what="the big letter's mail")
    assert not notice.is_multipart(), "no attachment"
    assert "for stort til at blive sendt som e-mail (3 MB)" in str(notice.get_content())
    data = gateway.stack.settings.home / "data" / "connectors" / "mail"

    def queue_row() -> tuple[int, str]:
        with contextlib.closing(sqlite3.connect(data / "mail.sqlite")) as db:
            ((row_bytes, state),) = db.execute(
                "SELECT length(envelope), state FROM outbox WHERE message_uuid = ?", (big,)
            ).fetchall()
        return int(row_bytes), str(state)

    # The relay has the mail a moment before the connector marks the row forwarded.
    await until(lambda: queue_row()[1] == "forwarded", what="the row marked forwarded")
    row_bytes, _ = queue_row()
    assert row_bytes < 100_000, row_bytes
    kept = [p.stat().st_size for p in (data / "documents").rglob("*") if p.is_file()]
    assert len(text.encode()) in kept, "the document, decrypted into the connector's folder"

    small = await gateway.letter(label="Lille brev", case_id="SAG-2026-0601", text="Kort.")
    _, whole = await until(lambda: gateway.relay.with_id(small), what="the small letter's mail")
    [document] = list(whole.iter_attachments())
    assert document.get_payload(decode=True) == b"Kort."
