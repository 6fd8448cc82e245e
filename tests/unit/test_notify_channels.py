"""SMS providers, failover and e-mail against real HTTP and SMTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from prometheus_client import CollectorRegistry

from connectors.notify.channels import (
    EmailSender,
    HttpSmsProvider,
    NotificationError,
    PermanentNotificationError,
    ProviderHealth,
    SmsRouter,
    TechnicalNotificationError,
    TemporaryNotificationError,
    TokenBucket,
    message_id,
)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ProviderPeer:
    """An SMS provider over HTTP that records requests and can fail, be slow or reject."""

    status: int = 200
    error: str = ""
    delay_s: float = 0.0
    invalid_numbers: set[str] = field(default_factory=set)
    received: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append({**body, "idempotency_key": request.headers.get("Idempotency-Key")})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if body["to"] in self.invalid_numbers:
            return web.json_response({"error": "invalid number"}, status=400)
        if self.status != 200:
            return web.json_response({"error": self.error or "failed"}, status=self.status)
        return web.json_response({"status": "queued"})


PeerFactory = Callable[[], Awaitable[ProviderPeer]]


@pytest.fixture
async def start_peer() -> AsyncIterator[PeerFactory]:
    """Starts SMS provider peers on free ports and stops them after the test."""
    runners: list[web.AppRunner] = []

    async def start() -> ProviderPeer:
        peer = ProviderPeer()
        app = web.Application()
        app.router.add_post("/sms", peer.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        peer.url = f"http://127.0.0.1:{runner.addresses[0][1]}/sms"
        return peer

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client session, closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- HTTP provider outcomes -----------------------------------------------------------


async def test_provider_sends_json_with_idempotency_key(
    start_peer: PeerFactory, session: aiohttp.ClientSession
) -> None:
    """A 2xx answer is success, and the provider got number, text and key as reference."""
    peer = await start_peer()
    await HttpSmsProvider("a", peer.url, session).send("+4512345678", "Hej", "key-1")
    assert peer.received == [
        {"to": "+4512345678", "text": "Hej", "reference": "key-1", "idempotency_key": "key-1"}
    ]


async def test_provider_invalid_number_is_permanent(
    start_peer: PeerFactory, session: aiohttp.ClientSession
) -> None:
    """A 400 saying "invalid number" is a permanent INVALID_NUMBER error."""
    peer = await start_peer()
    peer.invalid_numbers.add("+4500000000")
    with pytest.raises(PermanentNotificationError) as caught:
        await HttpSmsProvider("a", peer.url, session).send("+4500000000", "Hej", "k")
    assert caught.value.reason_code == "INVALID_NUMBER"
    assert not caught.value.retriable
    assert "+4500000000" not in str(caught.value)


async def test_provider_error_text_is_quoted_without_number_or_address(
    start_peer: PeerFactory, session: aiohttp.ClientSession
) -> None:
    """A provider's error text that echoes the number or an e-mail is quoted with them masked."""
    peer = await start_peer()
    peer.status, peer.error = 400, "number +45 12 34 56 78 of karen@privat.example is barred"
    with pytest.raises(NotificationError) as caught:
        await HttpSmsProvider("a", peer.url, session).send("+4512345678", "Hej", "k")
    message = caught.value.message
    assert "is barred" in message and "<number>" in message and "<address>" in message
    assert "12 34 56 78" not in message and "karen@privat.example" not in message


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_provider_other_rejections_are_permanent(
    start_peer: PeerFactory, session: aiohttp.ClientSession, status: int
) -> None:
    """400, 404 and 422 without "invalid number" are a permanent SMS_REJECTED error."""
    peer = await start_peer()
    peer.status, peer.error = status, "text too long"
    with pytest.raises(NotificationError) as caught:
        await HttpSmsProvider("a", peer.url, session).send("+4512345678", "Hej", "k")
    assert (caught.value.kind, caught.value.reason_code) == ("permanent", "SMS_REJECTED")


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_provider_busy_or_down_is_temporary(
    start_peer: PeerFactory, session: aiohttp.ClientSession, status: int
) -> None:
    """429 and 5xx are a retriable temporary SMS_PROVIDER_UNAVAILABLE error."""
    peer = await start_peer()
    peer.status = status
    with pytest.raises(TemporaryNotificationError) as caught:
        await HttpSmsProvider("a", peer.url, session).send("+4512345678", "Hej", "k")
    assert caught.value.reason_code == "SMS_PROVIDER_UNAVAILABLE"
    assert caught.value.retriable


async def test_provider_timeout_is_technical(
    start_peer: PeerFactory, session: aiohttp.ClientSession
) -> None:
    """A provider slower than the timeout gives a technical SMS_PROVIDER_UNREACHABLE error."""
    peer = await start_peer()
    peer.delay_s = 0.5
    provider = HttpSmsProvider("a", peer.url, session, timeout_s=0.05)
    with pytest.raises(TechnicalNotificationError) as caught:
        await provider.send("+4512345678", "Hej", "k")
    assert caught.value.reason_code == "SMS_PROVIDER_UNREACHABLE"
    assert isinstance(caught.value.__cause__, TimeoutError)


async def test_provider_connection_refused_is_technical(session: aiohttp.ClientSession) -> None:
    """Nobody listening on the port gives a technical SMS_PROVIDER_UNREACHABLE error."""
    provider = HttpSmsProvider("a", f"http://127.0.0.1:{_free_port()}/sms", session)
    with pytest.raises(NotificationError) as caught:
        await provider.send("+4512345678", "Hej", "k")
    assert (caught.value.kind, caught.value.reason_code) == (
        "technical",
        "SMS_PROVIDER_UNREACHABLE",
    )
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


# --- Errors, token bucket, health ----------------------------------------------------


def test_error_kind_picks_branch_and_retriable() -> None:
    """NotificationError(kind=...) is the matching branch; only permanent is not retriable."""
    for kind, cls, retriable in [
        ("temporary", TemporaryNotificationError, True),
        ("technical", TechnicalNotificationError, True),
        ("permanent", PermanentNotificationError, False),
    ]:
        error = NotificationError("m", kind=kind, reason_code="X")  # type: ignore[arg-type]
        assert type(error) is cls
        assert (error.kind, error.retriable, error.reason_code) == (kind, retriable, "X")
    with pytest.raises(ValueError, match="kind"):
        NotificationError("m")
    with pytest.raises(ValueError, match="kind"):
        NotificationError("m", kind="sometimes")  # type: ignore[arg-type]


def test_token_bucket_bursts_then_refills() -> None:
    """A bucket gives `burst` tokens at once, then one per 1/rate seconds, never above burst."""
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2, burst=3, clock=clock)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)
    assert bucket.try_take()
    assert not bucket.try_take()
    clock.advance(60)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]


async def test_token_bucket_take_waits_for_a_token() -> None:
    """take() returns at once with a token and waits about 1/rate seconds without one."""
    bucket = TokenBucket(rate_per_s=20, burst=1)
    started = time.monotonic()
    await bucket.take()
    assert time.monotonic() - started < 0.03
    await bucket.take()
    assert time.monotonic() - started >= 0.04


def test_health_trips_at_threshold_and_half_opens_after_cooldown() -> None:
    """Half the window failing makes it unhealthy; after cooldown one trial is allowed."""
    clock = FakeClock()
    health = ProviderHealth(window=4, threshold=0.5, cooldown_s=5, clock=clock)
    for _ in range(3):
        health.record_success()
    health.record_failure()
    assert health.healthy and health.error_rate == 0.25
    health.record_failure()  # window: ok ok fail fail
    assert not health.healthy and health.error_rate == 0.5
    assert not health.allow()
    clock.advance(5)
    assert health.allow()  # the trial
    assert not health.allow()  # only one trial per cooldown
    health.record_failure()
    clock.advance(4.9)
    assert not health.allow()
    clock.advance(0.1)
    assert health.allow()
    health.record_success()
    assert health.healthy and health.error_rate == 0.0


# --- Router ---------------------------------------------------------------------------


async def test_router_fails_over_and_returns_after_cooldown(
    start_peer: PeerFactory, session: aiohttp.ClientSession
) -> None:
    """A 500 from A fails over to B; A is skipped until cooldown, then used again once well."""
    a, b = await start_peer(), await start_peer()
    a.status = 500
    clock = FakeClock()
    registry = CollectorRegistry()
    router = SmsRouter(
        [HttpSmsProvider("a", a.url, session), HttpSmsProvider("b", b.url, session)],
        cooldown_s=5,
        clock=clock,
        registry=registry,
    )

    def gauge(name: str) -> float | None:
        return registry.get_sample_value("dp2_notify_provider_healthy", {"provider": name})

    assert gauge("a") == 1.0
    assert await router.send("+4512345678", "Hej", "k1") == "b"
    assert [r["reference"] for r in b.received] == ["k1"]
    assert router.health() == {
        "a": {"healthy": False, "error_rate": 1.0},
        "b": {"healthy": True, "error_rate": 0.0},
    }
    assert gauge("a") == 0.0

    a.status = 200  # A recovers, but is not tried again before the cooldown ends
    assert await router.send("+4512345678", "Hej", "k2") == "b"
    assert len(a.received) == 1

    clock.advance(5)
    assert await router.send("+4512345678", "Hej", "k3") == "a"
    assert router.health()["a"]["healthy"]
    assert gauge("a") == 1.0
    assert await router.send("+4512345678", "Hej", "k4") == "a"
    assert [r["reference"] for r in a.received] == ["k1", "k3", "k4"]


async def test_router_fails_over_from_a_slow_provider(
    start_peer: PeerFactory, session: aiohttp.ClientSession
) -> None:
    """A provider slower than its timeout is a technical failure, so B sends the SMS."""
    a, b = await start_peer(), await start_peer()
    a.delay_s = 0.5
    router = SmsRouter(
        [HttpSmsProvider("a", a.url, session, timeout_s=0.05), HttpSmsProvider("b", b.url, session)]
    )
    assert await router.send("+4512345678", "Hej", "k") == "b"
    assert len(b.received) == 1


async def test_router_does_not_fail_over_on_permanent_error(
    start_peer: PeerFactory, session: aiohttp.ClientSession
) -> None:
    """An invalid number is raised from A at once; B never sees it and A stays healthy."""
    a, b = await start_peer(), await start_peer()
    a.invalid_numbers.add("+4500000000")
    router = SmsRouter([HttpSmsProvider("a", a.url, session), HttpSmsProvider("b", b.url, session)])
    with pytest.raises(PermanentNotificationError) as caught:
        await router.send("+4500000000", "Hej", "k")
    assert caught.value.reason_code == "INVALID_NUMBER"
    assert b.received == []
    assert router.health()["a"] == {"healthy": True, "error_rate": 0.0}


async def test_router_raises_last_error_when_all_fail(
    start_peer: PeerFactory, session: aiohttp.ClientSession
) -> None:
    """When every provider fails the last temporary error is raised; then all cool down."""
    a, b = await start_peer(), await start_peer()
    a.status, b.status = 500, 503
    router = SmsRouter(
        [HttpSmsProvider("a", a.url, session), HttpSmsProvider("b", b.url, session)],
        clock=FakeClock(),
    )
    with pytest.raises(TemporaryNotificationError) as caught:
        await router.send("+4512345678", "Hej", "k")
    assert "'b' answered 503" in caught.value.message
    with pytest.raises(TemporaryNotificationError, match="cooling down"):
        await router.send("+4512345678", "Hej", "k")
    assert (len(a.received), len(b.received)) == (1, 1)


# --- E-mail ---------------------------------------------------------------------------


@dataclass
class SmtpRecorder:
    """An aiosmtpd handler that records envelopes and refuses chosen recipients."""

    refuse: dict[str, str] = field(default_factory=dict)
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(mail, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), mail))
        return "250 OK"


@dataclass
class Smtp:
    recorder: SmtpRecorder
    port: int
    controller: Controller | None = None


@pytest.fixture
def smtp() -> Iterator[Smtp]:
    """A real SMTP server on 127.0.0.1 for one test."""
    recorder = SmtpRecorder()
    port = _free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    server = Smtp(recorder, port, controller)
    try:
        yield server
    finally:
        if server.controller is not None:
            server.controller.stop()


def smtp_controller_stop(smtp: Smtp) -> None:
    """Stop the fixture's server now (a test that restarts it on the same port)."""
    assert smtp.controller is not None
    smtp.controller.stop()
    smtp.controller = None


async def test_email_arrives_with_subject_text_and_message_id(smtp: Smtp) -> None:
    """The SMTP server gets the e-mail with sender, subject, text and a key-derived Message-ID."""
    sender = EmailSender("127.0.0.1", smtp.port)
    await sender.send("borger@example.dk", "Du har fået digital post", "Log på æøå.", "key-1")
    [(rcpts, mail)] = smtp.recorder.messages
    assert rcpts == ["borger@example.dk"]
    assert mail["Subject"] == "Du har fået digital post"
    assert mail["From"] == "DP2 <noreply@dp2.local>"
    assert mail["Message-ID"] == message_id("key-1")
    assert mail["Message-ID"].endswith("@dp2>") and "key-1" not in mail["Message-ID"]
    assert mail.get_content().strip() == "Log på æøå."


async def test_email_same_key_same_message_id(smtp: Smtp) -> None:
    """Sending again with the same key repeats the Message-ID, so a retry can be deduped."""
    sender = EmailSender("127.0.0.1", smtp.port)
    await sender.send("borger@example.dk", "S", "T", "key-2")
    await sender.send("borger@example.dk", "S", "T", "key-2")
    ids = {m["Message-ID"] for _, m in smtp.recorder.messages}
    assert ids == {message_id("key-2")}


async def test_email_refused_recipient_is_permanent(smtp: Smtp) -> None:
    """A 550 for the recipient is a permanent INVALID_ADDRESS error and nothing is delivered."""
    smtp.recorder.refuse["nobody@example.dk"] = "550 5.1.1 No such user"
    with pytest.raises(PermanentNotificationError) as caught:
        await EmailSender("127.0.0.1", smtp.port).send("nobody@example.dk", "S", "T", "k")
    assert caught.value.reason_code == "INVALID_ADDRESS"
    assert smtp.recorder.messages == []


@pytest.mark.parametrize(
    "address",
    [
        "borger@example.dk\r\nBcc: everyone@example.dk",  # a header of its own
        "borger@example.dk\nSubject: forged",
        "Karen <borger@example.dk>",
        "borger@example.dk, other@example.dk",
        "no address",
    ],
)
async def test_email_an_address_that_is_not_one_plain_address_is_refused_and_nothing_sent(
    smtp: Smtp, address: str
) -> None:
    """A contact register address with a line break (header injection), a display
    name or a second address is a permanent INVALID_ADDRESS; the server gets nothing,
    and the error does not repeat the address (it is personal data)."""
    with pytest.raises(PermanentNotificationError) as caught:
        await EmailSender("127.0.0.1", smtp.port).send(address, "S", "T", "k")
    assert caught.value.reason_code == "INVALID_ADDRESS"
    assert "example.dk" not in str(caught.value)
    assert smtp.recorder.messages == []


async def test_email_greylisted_recipient_is_temporary(smtp: Smtp) -> None:
    """A 4xx for the recipient is a temporary SMTP_UNAVAILABLE error."""
    smtp.recorder.refuse["later@example.dk"] = "451 4.7.1 Try again later"
    with pytest.raises(TemporaryNotificationError) as caught:
        await EmailSender("127.0.0.1", smtp.port).send("later@example.dk", "S", "T", "k")
    assert caught.value.reason_code == "SMTP_UNAVAILABLE"


async def test_email_server_down_is_temporary() -> None:
    """No SMTP server listening is a temporary SMTP_UNAVAILABLE error."""
    sender = EmailSender("127.0.0.1", _free_port(), timeout_s=2)
    with pytest.raises(TemporaryNotificationError) as caught:
        await sender.send("borger@example.dk", "S", "T", "k")
    assert caught.value.reason_code == "SMTP_UNAVAILABLE"
    assert caught.value.__cause__ is not None


async def test_email_connections_are_kept_open_and_reopened_when_the_server_closed_them(
    smtp: Smtp,
) -> None:
    """Five mails in a row use one connection; four at once use at most four; after
    the server restarts (the idle connection is dead), the next mail still arrives, on
    a new connection, without an error."""
    sender = EmailSender("127.0.0.1", smtp.port)
    for n in range(5):
        await sender.send(f"b{n}@example.dk", "S", "T", f"k{n}")
    assert sender.opened == 1
    await asyncio.gather(*(sender.send(f"c{n}@example.dk", "S", "T", f"c{n}") for n in range(4)))
    assert sender.opened <= 4
    assert len(smtp.recorder.messages) == 9

    restarted = Controller(smtp.recorder, hostname="127.0.0.1", port=smtp.port)
    smtp_controller_stop(smtp)
    restarted.start()
    try:
        before = sender.opened
        await sender.send("after@example.dk", "S", "T", "k-after")
        assert sender.opened == before + 1
        assert smtp.recorder.messages[-1][0] == ["after@example.dk"]
    finally:
        await sender.close()
        restarted.stop()
