"""Notifications end to end: real Kafka, a real SMTP server, real HTTP SMS providers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from brokers.contacts.records import read_contact_file
from brokers.contacts.register import publish_contacts
from brokers.runtime.host import ServiceHost
from brokers.runtime.kafka import new_consumer, read_from_start
from brokers.runtime.settings import KafkaAccess, Settings
from brokers.stack.access import REGISTER_IDENTITY
from brokers.stack.kafka import free_base_port
from brokers.stack.registry import build_service
from connectors.sdk import Document, build_message
from schemas import codec
from schemas.models import LifecycleState, MessageType
from schemas.vocabulary import LIFECYCLE_TOPIC
from tests.integration.conftest import SENDER_CVR, Stack
from tests.integration.test_evidence import _event, _intruder, _metric, _produce, _signed_by

pytestmark = pytest.mark.kafka
LETTERS_KILLED = 40  # letters of the SIGKILL test: at 16 in flight, still mid-run


# --- the peers: an SMTP server and SMS providers that record what they get ---------------
class Mailbox:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.delay_s = delay_s
        #: address -> (set when its RCPT arrives, set to let it through)
        self.hold: dict[str, tuple[threading.Event, threading.Event]] = {}

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        # A slow server keeps the kill inside the run. It is slow before it takes the
        # mail, as a real MTA (checks, greylisting): once the data is in, it records
        # and answers at once, so a client killed mid-send has either not handed the
        # mail over or just heard its 250.
        await asyncio.sleep(self.delay_s)
        held = self.hold.get(address)
        if held is not None:  # the server runs its own loop, in a thread of its own
            arrived, release = held
            arrived.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait, 60)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (list(envelope.rcpt_tos), message_from_bytes(envelope.content, policy=policy.default))
        )
        return "250 OK"

    def to(self, address: str) -> list[Message]:
        return [m for rcpts, m in self.messages if address in rcpts]


@dataclass
class SmsProviderPeer:
    """An SMS provider over HTTP that can fail, reject numbers, and dedupes by reference."""

    name: str
    fail: bool = False
    fail_times: int = 0
    invalid_numbers: set[str] = field(default_factory=set)
    sent: list[dict[str, str]] = field(default_factory=list)
    requests: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        if self.fail:
            return web.json_response({"error": "unavailable"}, status=500)
        if self.fail_times > 0:
            self.fail_times -= 1
            return web.json_response({"error": "busy"}, status=503)
        if body["to"] in self.invalid_numbers:
            return web.json_response({"error": "invalid number"}, status=400)
        if all(s["reference"] != body["reference"] for s in self.sent):
            self.sent.append(body)  # a repeat of a reference is acknowledged, not re-sent
        return web.json_response({"status": "queued"})

    def to(self, number: str) -> list[dict[str, str]]:
        return [s for s in self.sent if s["to"] == number]


@dataclass
class Peers:
    smtp: Mailbox
    smtp_port: int
    a: SmsProviderPeer
    b: SmsProviderPeer

    def env(self) -> dict[str, str]:
        return {
            "DP2_SMTP_HOST": "127.0.0.1",
            "DP2_SMTP_PORT": str(self.smtp_port),
            "DP2_SMS_PROVIDERS": f"a={self.a.url},b={self.b.url}",
        }


async def _start_peers(runners: list[web.AppRunner]) -> tuple[SmsProviderPeer, SmsProviderPeer]:
    peers = []
    for name in ("a", "b"):
        peer = SmsProviderPeer(name)
        app = web.Application()
        app.router.add_post("/sms", peer.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        peer.url = f"http://127.0.0.1:{runner.addresses[0][1]}/sms"
        runners.append(runner)
        peers.append(peer)
    return peers[0], peers[1]


@contextlib.asynccontextmanager
async def running_peers(smtp_delay_s: float = 0.0) -> AsyncIterator[Peers]:
    """An SMTP server and two SMS providers on 127.0.0.1, stopped afterwards."""
    mailbox = Mailbox(delay_s=smtp_delay_s)
    port = free_base_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    runners: list[web.AppRunner] = []
    try:
        a, b = await _start_peers(runners)
        yield Peers(mailbox, port, a, b)
    finally:
        for runner in runners:
            await runner.cleanup()
        controller.stop()


@pytest.fixture(scope="session")
async def peers() -> AsyncIterator[Peers]:
    """The session's peers, shared by the in-process notifier's tests."""
    async with running_peers() as session_peers:
        yield session_peers


@pytest.fixture(scope="session")
async def notifier(stack: Stack, peers: Peers) -> AsyncIterator[ServiceHost]:
    """The notifier, in-process, sending to the session's peers; 2 s digest window."""
    settings = Settings.from_env(
        {
            "DP2_HOME": str(stack.settings.home),
            "DP2_KAFKA_BOOTSTRAP": stack.settings.kafka_bootstrap,
            "DP2_PKI": str(stack.settings.pki_dir),
            "DP2_DIGEST_WINDOW_S": "2",
            **peers.env(),
        }
    )
    host = await build_service("notifier", settings, group_suffix=f".{uuid.uuid4().hex[:6]}")
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


@dataclass(frozen=True)
class Recipient:
    cpr: str
    email: str
    phone: str


async def new_recipient(stack: Stack, language: str = "da", sms: bool = True) -> Recipient:
    """A registered recipient of its own, with e-mail and SMS, known to every service."""
    cpr = f"{uuid.uuid4().int % 10**10:010d}"
    tag = uuid.uuid4().hex[:8]
    recipient = Recipient(cpr, f"borger-{tag}@example.dk", f"+45{uuid.uuid4().int % 10**8:08d}")
    channels = [{"channel": "EMAIL", "address": recipient.email}]
    if sms:
        channels.append({"channel": "SMS", "address": recipient.phone})
    path = stack.settings.home / f"contact-{tag}.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": cpr,
                    "idType": "CPR",
                    "status": "REGISTERED",
                    "provider": "mitpost",
                    "name": "Test Borger",
                    "channels": channels,
                    "language": language,
                }
            ]
        )
    )
    await publish_contacts(
        stack.kafka(REGISTER_IDENTITY), read_contact_file(path, stack.pseudonyms)
    )
    ref = stack.pseudonyms.ref("CPR", cpr)
    async with asyncio.timeout(10):
        while stack.contacts.get(ref) is None:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the router's and notifier's own caches follow the same topic
    return recipient


async def send_letters(stack: Stack, recipient: Recipient, count: int, **kwargs: Any) -> list[str]:
    uuids = []
    async with stack.client() as client:
        for _ in range(count):
            message = build_message(
                sender_cvr=SENDER_CVR,
                sender_label="Aarhus Kommune",
                recipient_id=recipient.cpr,
                label="Afgørelse om boligstøtte",
                documents=[Document("brev.txt", "text/plain", b"HEMMELIGT INDHOLD")],
                **kwargs,
            )
            uuids.append((await client.send(message)).message_uuid)
        for message_uuid in uuids:
            await client.wait_for(message_uuid, {"DELIVERED"})
    return uuids


async def eventually(check: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.1)


# --- the tests ------------------------------------------------------------------------------
async def test_delivered_letter_gives_one_email_and_one_sms(
    stack: Stack, peers: Peers, notifier: ServiceHost
) -> None:
    """One DELIVERED: exactly one e-mail and one SMS, in Danish, without content or CPR."""
    recipient = await new_recipient(stack)
    [message_uuid] = await send_letters(stack, recipient, 1)
    await eventually(
        lambda: (
            peers.smtp.to(recipient.email)
            and (peers.a.to(recipient.phone) or peers.b.to(recipient.phone))
        )
    )
    await stack.wait_trace(message_uuid, "NOTIFIED")
    await asyncio.sleep(1.0)  # anything extra would arrive now
    # Each channel's NOTIFIED comes when its own send is done (no rounds): wait for both.
    async with asyncio.timeout(30):
        while True:
            doc = await stack.wait_trace(message_uuid, "NOTIFIED")
            if len({e["channel"] for e in doc["timeline"] if e["state"] == "NOTIFIED"}) == 2:
                break
            await asyncio.sleep(0.2)
    [mail] = peers.smtp.to(recipient.email)
    [sms] = peers.a.to(recipient.phone) + peers.b.to(recipient.phone)
    body = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert mail["Subject"] == "Du har fået digital post"
    assert "Aarhus Kommune" in body and "Aarhus Kommune" in sms["text"]
    for text in (body, sms["text"], str(mail["Subject"])):
        assert "HEMMELIGT" not in text and recipient.cpr not in text
        assert "boligstøtte" not in text, "the label is sensitive unless the sender says not"
    assert len(sms["text"]) <= 160
    notified = [e for e in doc["timeline"] if e["state"] == "NOTIFIED"]
    assert {e["channel"] for e in notified} == {"EMAIL", "SMS"}


async def test_failover_to_b_and_back_to_a(
    stack: Stack, peers: Peers, notifier: ServiceHost
) -> None:
    """Provider A failing → B delivers; once A recovers (after its cool-down) A is used again."""
    peers.a.fail = True
    try:
        first = await new_recipient(stack)
        await send_letters(stack, first, 1)
        await eventually(lambda: peers.b.to(first.phone))
        assert not peers.a.to(first.phone)
    finally:
        peers.a.fail = False
    await asyncio.sleep(6.0)  # A's cool-down (5 s) passes; the next send tries A again
    second = await new_recipient(stack)
    await send_letters(stack, second, 1)
    await eventually(lambda: peers.a.to(second.phone) or peers.b.to(second.phone))
    assert peers.a.to(second.phone), "A is used again after it recovered"


async def test_permanent_failure_is_traced_and_temporary_is_retried(
    stack: Stack, peers: Peers, notifier: ServiceHost
) -> None:
    """An invalid number fails at once (NOTIFICATION_FAILED); a busy provider is retried."""
    bad = await new_recipient(stack)
    peers.a.invalid_numbers.add(bad.phone)
    peers.b.invalid_numbers.add(bad.phone)
    [failed_uuid] = await send_letters(stack, bad, 1)
    doc = await stack.wait_trace(failed_uuid, "NOTIFICATION_FAILED")
    failure = next(e for e in doc["timeline"] if e["state"] == "NOTIFICATION_FAILED")
    assert failure["channel"] == "SMS" and failure["reasonCode"] == "INVALID_NUMBER"
    assert "permanent" in failure["reasonText"]

    busy = await new_recipient(stack)
    peers.a.fail_times = 2
    peers.b.fail_times = 2
    [retried_uuid] = await send_letters(stack, busy, 1)
    await eventually(lambda: peers.a.to(busy.phone) or peers.b.to(busy.phone), timeout=60)
    # The e-mail's NOTIFIED may reach the trace first: wait for the SMS channel's own.
    doc = await stack.wait_trace(retried_uuid, "NOTIFIED")
    deadline = asyncio.get_running_loop().time() + 30
    while not any(e.get("channel") == "SMS" for e in doc["timeline"]):
        assert asyncio.get_running_loop().time() < deadline, f"no SMS event: {doc}"
        await asyncio.sleep(0.2)
        doc = await asyncio.to_thread(stack.trace, retried_uuid)
    await asyncio.sleep(1.0)  # a second SMS event (a retry counted twice) would land now
    doc = await asyncio.to_thread(stack.trace, retried_uuid)
    sms_events = [e for e in doc["timeline"] if e.get("channel") == "SMS"]
    assert [e["state"] for e in sms_events] == ["NOTIFIED"]


async def test_five_letters_in_the_window_give_one_digest(
    stack: Stack, peers: Peers, notifier: ServiceHost
) -> None:
    """Five letters inside the digest window: one e-mail and one SMS naming the count."""
    recipient = await new_recipient(stack, language="en")
    uuids = await send_letters(stack, recipient, 5)
    for message_uuid in uuids:
        await stack.wait_trace(message_uuid, "NOTIFIED")
    await asyncio.sleep(2.5)  # a second notification, were there one, would come now
    [mail] = peers.smtp.to(recipient.email)
    [sms] = peers.a.to(recipient.phone) + peers.b.to(recipient.phone)
    assert "5" in sms["text"] and "5" in mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert mail["Subject"] == "You have 5 new letters", "in the language the recipient chose"


# --- SIGKILL: a real notifier process ------------------------------------------------------
@pytest.fixture
async def other_peers() -> AsyncIterator[Peers]:
    """Peers of their own, so only the subprocess notifier's sends are counted; the
    slow SMTP server keeps the kill inside the run."""
    async with running_peers(smtp_delay_s=0.3) as own:
        yield own


def _notifier_process(stack: Stack, peers: Peers, home: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DP2_HOME": str(home),
        "DP2_KAFKA_BOOTSTRAP": stack.settings.kafka_bootstrap,
        "DP2_PKI": str(stack.settings.pki_dir),
        "DP2_DIGEST_WINDOW_S": "0",
        "DP2_LOG_FORMAT": "json",
        **peers.env(),
    }
    with open(home / "notifier.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "brokers.cli", "run", "notifier"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def _start_group_at_end(kafka: KafkaAccess, group: str, topic: str) -> None:
    """Commit the group's offsets at the topic's end: the process starts from now on,
    not with the notifications of every earlier test in the session."""
    consumer = new_consumer(
        kafka,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="latest",
    )
    await consumer.start()
    try:
        partitions = await read_from_start(consumer, [topic], to_end=True)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit(ends)
    finally:
        await consumer.stop()


@pytest.fixture
def process_home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


async def test_sigkill_mid_run_sends_nothing_twice_and_loses_nothing(
    stack: Stack, other_peers: Peers, process_home: Path, notifier: ServiceHost
) -> None:
    """A notifier SIGKILLed while sending and restarted: every letter notified exactly once."""
    recipient = await new_recipient(stack)
    await _start_group_at_end(stack.admin, "dp2.notifier", "dp2.lifecycle")
    process = _notifier_process(stack, other_peers, process_home)
    try:
        uuids = await send_letters(stack, recipient, LETTERS_KILLED)
        await eventually(lambda: len(other_peers.smtp.to(recipient.email)) >= 3, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_at = len(other_peers.smtp.to(recipient.email))
        process = _notifier_process(stack, other_peers, process_home)
        await eventually(
            lambda: (
                len({m["Message-ID"] for m in other_peers.smtp.to(recipient.email)})
                >= LETTERS_KILLED
                and len(other_peers.a.to(recipient.phone) + other_peers.b.to(recipient.phone))
                >= LETTERS_KILLED
            ),
            timeout=120,
        )
        await asyncio.sleep(2.0)  # duplicates, if any, would arrive now
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    mails = other_peers.smtp.to(recipient.email)
    sms = other_peers.a.to(recipient.phone) + other_peers.b.to(recipient.phone)
    assert len(sms) == LETTERS_KILLED, "each SMS sent once (a repeat reference is never re-sent)"
    assert len({m["Message-ID"] for m in mails}) == LETTERS_KILLED, "every letter notified"
    # SMTP has no idempotency key: a kill between the SMTP 250 and the outbox's
    # ``handed`` commit can re-send that mail with the same Message-ID, which mailboxes
    # collapse. With DP2_NOTIFY_CONCURRENCY (16) sends in flight, that moment is still
    # one local commit: at most one repeat.
    assert len(mails) <= LETTERS_KILLED + 1, (
        f"{len(mails)} mails for {LETTERS_KILLED} letters (killed after {killed_at})"
    )
    assert killed_at < LETTERS_KILLED, "the kill happened mid-run"
    assert len(uuids) == LETTERS_KILLED


async def test_a_slow_notification_holds_up_no_other(stack: Stack, process_home: Path) -> None:
    """One e-mail held by the SMTP server (under the client's 10 s timeout) while a
    later letter's e-mail goes out and is NOTIFIED: the slow send's first attempt is
    still in flight then. (The notifier used to dispatch in rounds, and a round waited
    for its slowest send.) Released, the held one is sent once too."""
    slow_one = await new_recipient(stack, sms=False)
    fast_one = await new_recipient(stack, sms=False)
    arrived, release = threading.Event(), threading.Event()
    suffix = f".{uuid.uuid4().hex[:6]}"
    await _start_group_at_end(stack.admin, f"dp2.notifier{suffix}", LIFECYCLE_TOPIC)
    async with running_peers() as own:
        own.smtp.hold[slow_one.email] = (arrived, release)
        settings = Settings.from_env(
            {
                "DP2_HOME": str(process_home),
                "DP2_KAFKA_BOOTSTRAP": stack.settings.kafka_bootstrap,
                "DP2_PKI": str(stack.settings.pki_dir),
                "DP2_DIGEST_WINDOW_S": "0",
                **own.env(),
            }
        )
        host = await build_service("notifier", settings, group_suffix=suffix)
        await host.start()
        try:
            [slow] = await send_letters(stack, slow_one, 1)
            assert await asyncio.to_thread(arrived.wait, 30), "the held send reached the server"
            [fast] = await send_letters(stack, fast_one, 1)
            await stack.wait_trace(fast, "NOTIFIED")
            with contextlib.closing(
                sqlite3.connect(process_home / "data" / "notifier.sqlite")
            ) as db:
                row = db.execute(
                    "SELECT state, attempts FROM outbox WHERE message_uuid = ?", (slow,)
                ).fetchone()
            assert row == ("sending", 1), "the slow send's first attempt is still in flight"
            assert own.smtp.to(fast_one.email) and not own.smtp.to(slow_one.email)
            release.set()
            await stack.wait_trace(slow, "NOTIFIED")
            await asyncio.sleep(1.0)  # a repeat, were there one, would arrive now
            assert len(own.smtp.to(slow_one.email)) == 1
        finally:
            release.set()
            await host.stop()


async def test_nemsms_is_the_sms_and_a_public_label_is_shown(
    stack: Stack, peers: Peers, notifier: ServiceHost
) -> None:
    """A NemSMS arrives as the SMS itself; a letter marked non-sensitive names its label."""
    recipient = await new_recipient(stack)
    async with stack.client() as client:
        nemsms = build_message(
            sender_cvr=SENDER_CVR,
            sender_label="Aarhus Kommune",
            recipient_id=recipient.cpr,
            label="Påmindelse",
            notification="Husk din tid hos tandlægen i morgen kl. 9",
            message_type=MessageType.NEMSMS,
        )
        public = build_message(
            sender_cvr=SENDER_CVR,
            sender_label="Aarhus Kommune",
            recipient_id=recipient.cpr,
            label="Nyhedsbrev om affaldssortering",
            documents=[Document("nyhed.txt", "text/plain", b"indhold")],
            label_is_sensitive=False,
        )
        for message in (nemsms, public):
            receipt = await client.send(message)
            await client.wait_for(receipt.message_uuid, {"DELIVERED"})
    await eventually(lambda: len(peers.a.to(recipient.phone) + peers.b.to(recipient.phone)) >= 2)
    texts = [s["text"] for s in peers.a.to(recipient.phone) + peers.b.to(recipient.phone)]
    assert "Husk din tid hos tandlægen i morgen kl. 9" in texts
    assert any("Nyhedsbrev om affaldssortering" in t for t in texts if "Husk" not in t)
    await eventually(lambda: len(peers.smtp.to(recipient.email)) >= 1)
    await asyncio.sleep(1.0)
    assert len(peers.smtp.to(recipient.email)) == 1, "a NemSMS sends no e-mail"


# --- only believed events are notified (issue 14) ------------------------------------------
S = LifecycleState


async def test_a_forged_delivered_sends_no_notification(
    stack: Stack,
    peers: Peers,
    notifier: ServiceHost,
) -> None:
    """An unsigned DELIVERED with a NemSMS text, and one by another provider, for a held
    letter to a registered citizen with e-mail and SMS: no e-mail, no SMS, both refused."""
    intruder = await _intruder(stack)
    recipient = await new_recipient(stack)
    ref = stack.pseudonyms.ref("CPR", recipient.cpr)
    async with stack.client() as client:
        receipt = await client.send(
            build_message(
                sender_cvr=SENDER_CVR,
                sender_label="Aarhus Kommune",
                recipient_id=recipient.cpr,
                label="Venter",
                documents=[Document("brev.txt", "text/plain", b"Hej")],
                do_not_deliver_until=date.today() + timedelta(days=30),
            )
        )
        await client.wait_for(receipt.message_uuid, {"SCHEDULED"})
    victim = receipt.message_uuid
    before = await _metric(notifier, "dp2_notifier_unbelieved_events")
    forged = [
        _event(victim, S.DELIVERED, recipientRef=ref, attributes={"nemSmsText": "Betal nu"}),
        _signed_by(stack, intruder, _event(victim, S.DELIVERED, recipientRef=ref)),
    ]
    for event in forged:
        await _produce(stack, intruder, LIFECYCLE_TOPIC, codec.encode(event), key=victim.encode())
    async with asyncio.timeout(120):  # a notifier started now reads the session's events first
        while await _metric(notifier, "dp2_notifier_unbelieved_events") < before + 2:
            await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # the dispatch loop would have sent by now (poll 0.5 s)
    assert peers.smtp.to(recipient.email) == []
    assert not [m for m in peers.a.sent + peers.b.sent if m.get("to") == recipient.phone]
