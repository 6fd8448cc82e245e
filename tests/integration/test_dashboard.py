"""The operators' dashboard in a real headless Chromium (Debian's, driven by Playwright).

The tracing service of the session stack serves the dashboard; users are made with
tracing.access as `dp2 dashboard user add` makes them. Each page visited is kept as
a screenshot under tests/artifacts/dashboard/.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from playwright.async_api import Browser, Page, async_playwright

from brokers.runtime.kafka import new_producer
from connectors.sdk import Document, build_message
from schemas import codec
from schemas.vocabulary import MESSAGE_UUID_HEADER, SIGNER_CERT_HEADER
from tests.integration.conftest import REGISTERED_CPR, SENDER, SENDER_CVR, Stack
from tracing.access import Users

pytestmark = [pytest.mark.kafka, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("DP2_TEST_ARTIFACTS", "tests/artifacts")) / "dashboard"
PASSWORD = "correct horse battery"  # noqa: S105 - a test user on 127.0.0.1
OTHER_CVR = "29189846"


@pytest.fixture(scope="module")
async def browser(stack: Stack) -> AsyncIterator[Browser]:
    """Chromium from Debian, headless, with users for an operator and two authorities."""
    users = Users(stack.settings.home)
    users.add("ops", PASSWORD, "operator")
    users.add("aarhus", PASSWORD, "authority", SENDER_CVR)
    users.add("other", PASSWORD, "authority", OTHER_CVR)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            yield launched
        finally:
            await launched.close()


async def _login(browser: Browser, stack: Stack, user: str) -> Page:
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    await page.goto(f"{stack.tracing_url}/dashboard/")
    assert page.url.endswith("/dashboard/login"), "an anonymous visitor is sent to log in"
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/dashboard/")
    return page


async def _letter(stack: Stack, label: str) -> str:
    async with stack.client() as client:
        receipt = await client.send(
            build_message(
                sender_cvr=SENDER_CVR,
                sender_label="Aarhus",
                recipient_id=REGISTERED_CPR,
                label=label,
                documents=[Document("brev.txt", "text/plain", b"Hej")],
            )
        )
    await stack.wait_trace(receipt.message_uuid, "DELIVERED")
    return receipt.message_uuid


async def _shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert (ARTIFACTS / f"{name}.png").stat().st_size > 1000


async def test_search_finds_a_message_and_shows_its_timeline(
    stack: Stack, browser: Browser
) -> None:
    """An operator searches a UUID and reads the message's timeline, live chart drawn."""
    message_uuid = await _letter(stack, "Afgørelse")
    page = await _login(browser, stack, "ops")
    await page.wait_for_function("document.getElementById('live').dataset.drawn !== undefined")
    await page.wait_for_selector("#services")
    await _shot(page, "overview")
    await page.fill("#search input[name=uuid]", message_uuid)
    await page.click("#search button[type=submit]")
    await page.wait_for_url(f"**/dashboard/messages/{message_uuid}")
    states = await page.locator("#timeline td.state").all_inner_texts()
    assert states[:4] == ["SUBMITTED", "ACCEPTED", "ROUTED", "DELIVERED"]
    assert await page.locator("#state").inner_text() == "DELIVERED"
    assert REGISTERED_CPR not in await page.content(), "pseudonyms only"
    await _shot(page, "message")
    await page.goto(f"{stack.tracing_url}/dashboard/search?state=DELIVERED")
    assert message_uuid in await page.locator("#results").inner_text()
    await _shot(page, "search")


async def test_the_statistics_page_renders_its_chart(stack: Stack, browser: Browser) -> None:
    """The statistics page draws the digital-share chart and offers CSV and JSON."""
    await _letter(stack, "Til statistikken")
    page = await _login(browser, stack, "aarhus")
    await page.goto(f"{stack.tracing_url}/dashboard/stats?kind=day")
    await page.wait_for_function("document.getElementById('share').dataset.drawn > 0")
    rows = await page.locator("#stats tr").count()
    assert rows >= 2, "a header and at least one period"
    assert "digital" in (await page.locator("#stats").inner_text()).lower()
    await _shot(page, "statistics")
    csv = await page.request.get(f"{stack.tracing_url}/dashboard/stats.csv?kind=day")
    assert csv.ok and (await csv.text()).splitlines()[0].startswith("period")


async def test_an_authority_user_cannot_see_another_authoritys_messages(
    stack: Stack, browser: Browser
) -> None:
    """Aarhus's user sees its letter; another authority's user gets 'not found' everywhere."""
    message_uuid = await _letter(stack, "Kun for Aarhus")
    own = await _login(browser, stack, "aarhus")
    await own.goto(f"{stack.tracing_url}/dashboard/messages/{message_uuid}")
    assert await own.locator("#state").inner_text() == "DELIVERED"

    other = await _login(browser, stack, "other")
    response = await other.goto(f"{stack.tracing_url}/dashboard/messages/{message_uuid}")
    assert response is not None and response.status == 404
    await _shot(other, "other-authority-not-found")
    await other.goto(f"{stack.tracing_url}/dashboard/search?state=DELIVERED&sender={SENDER_CVR}")
    assert message_uuid not in await other.content()
    response = await other.goto(f"{stack.tracing_url}/dashboard/search?uuid={message_uuid}")
    assert response is not None and response.status == 404
    for path in ("/dashboard/deadletters", "/dashboard/api/services"):
        response = await other.goto(f"{stack.tracing_url}{path}")
        assert response is not None and response.status in (401, 403), path
    api = await other.request.get(f"{stack.tracing_url}/dashboard/stats.json?sender={SENDER_CVR}")
    assert all(p["sender"] == OTHER_CVR for p in (await api.json())["periods"])


async def _park(stack: Stack) -> tuple[str, str]:
    """A letter parked on dp2.deadletter as a failing validator parks it: (source, uuid)."""
    async with stack.client() as client:
        signed, ref = client.seal_and_sign(
            build_message(
                sender_cvr=SENDER_CVR,
                sender_label="Aarhus",
                recipient_id=REGISTERED_CPR,
                label="Parkeret brev",
                documents=[Document("brev.txt", "text/plain", b"Hej")],
            )
        )
        der = client.identity.certificate.public_bytes(Encoding.DER)
    message_uuid = signed.header.messageUUID
    # Exactly what brokers.runtime.worker parks when a handler fails on a record of dp2.submitted.
    source = f"dp2.submitted/0/{uuid.uuid4().int % 10**9}"
    producer = new_producer(stack.admin)  # what a DP2 service parks
    await producer.start()
    try:
        await producer.send_and_wait(
            "dp2.deadletter",
            codec.encode(signed),
            key=ref.encode(),
            headers=[
                (MESSAGE_UUID_HEADER, message_uuid.encode()),
                (SIGNER_CERT_HEADER, der),
                ("dp2-reason-code", b"PROCESSING_FAILED"),
                ("dp2-reason", b"validator failed on this record: a bug since fixed"),
                ("dp2-source", source.encode()),
                ("dp2-service", b"validator"),
            ],
        )
    finally:
        await producer.stop()
    return source, message_uuid


async def _until_listed(page: Page, stack: Stack, source: str) -> None:
    for _ in range(50):
        await page.goto(f"{stack.tracing_url}/dashboard/deadletters")
        if source in await page.locator("#deadletters").inner_text():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{source} never listed")


async def test_a_redrive_without_the_csrf_token_is_refused(stack: Stack, browser: Browser) -> None:
    """A POST that carries the session cookie but not the page's CSRF token changes nothing."""
    source, message_uuid = await _park(stack)
    page = await _login(browser, stack, "ops")
    await _until_listed(page, stack, source)
    url = f"{stack.tracing_url}/dashboard/deadletters/redrive"
    for form in ({"source": source}, {"source": source, "csrf": "0" * 64}):
        response = await page.request.post(url, form=form, max_redirects=0)
        assert response.status == 403
        assert (await response.json())["reasonCode"] == "CSRF_TOKEN_INVALID"
    await page.goto(f"{stack.tracing_url}/dashboard/deadletters")
    row = page.locator("#deadletters tr", has_text=source)
    assert "re-driven" not in await row.inner_text()
    assert await asyncio.to_thread(stack.trace, message_uuid) is None  # nothing was sent
    await page.close()


async def test_logout_really_ends_the_session(stack: Stack, browser: Browser) -> None:
    """A session cookie kept from before logging out no longer opens anything."""
    page = await _login(browser, stack, "ops")
    cookies = await page.context.cookies()
    await page.click("header button")  # Log out
    await page.wait_for_url("**/dashboard/login")
    replay = await browser.new_context()
    await replay.add_cookies(cookies)  # type: ignore[arg-type]
    stolen = await replay.new_page()
    await stolen.goto(f"{stack.tracing_url}/dashboard/")
    assert stolen.url.endswith("/dashboard/login")
    api = await replay.request.get(f"{stack.tracing_url}/dashboard/api/throughput")
    assert api.status == 401
    messages = await replay.request.get(f"{stack.tracing_url}/messages")
    assert messages.status == 401
    await replay.close()
    await page.close()


async def test_password_guessing_is_throttled_per_user(stack: Stack, browser: Browser) -> None:
    """After five wrong passwords for a user even the right one waits: 429 with Retry-After."""
    users = Users(stack.settings.home)
    users.add("guessed", PASSWORD, "operator")
    context = await browser.new_context()
    url = f"{stack.tracing_url}/dashboard/login"
    for attempt in range(5):
        wrong = await context.request.post(
            url, form={"user": "guessed", "password": f"guess-{attempt}"}, max_redirects=0
        )
        assert wrong.status == 401
    right = await context.request.post(
        url, form={"user": "guessed", "password": PASSWORD}, max_redirects=0
    )
    assert right.status == 429
    assert (await right.json())["reasonCode"] == "LOGIN_THROTTLED"
    assert int(right.headers["retry-after"]) > 0
    await context.close()


async def test_a_dead_letter_is_redriven_and_then_delivered(stack: Stack, browser: Browser) -> None:
    """A message parked by a failing service is inspected, re-driven, and gets DELIVERED."""
    source, message_uuid = await _park(stack)
    page = await _login(browser, stack, "ops")
    for _ in range(50):
        await page.goto(f"{stack.tracing_url}/dashboard/deadletters")
        if source in await page.locator("#deadletters").inner_text():
            break
        await asyncio.sleep(0.2)
    await _shot(page, "deadletters")
    await page.click(f"a[href*='{source}']")
    assert "PROCESSING_FAILED" in await page.locator("#letter").inner_text()
    await _shot(page, "deadletter")
    await page.click("button.redrive")
    await page.wait_for_url("**/dashboard/deadletters")
    assert "re-driven" in await page.locator("#deadletters").inner_text()
    await stack.wait_trace(message_uuid, "DELIVERED")
    await page.goto(f"{stack.tracing_url}/dashboard/messages/{message_uuid}")
    assert await page.locator("#state").inner_text() == "DELIVERED"
    await _shot(page, "redriven-message")


async def test_the_timeline_shows_verified_signers_and_offers_the_receipt(
    stack: Stack, browser: Browser
) -> None:
    """A message's page names the certificate that signed each event and links a receipt
    that holds those events."""
    message_uuid = await _letter(stack, "Med kvittering")
    page = await _login(browser, stack, "ops")
    await page.goto(f"{stack.tracing_url}/dashboard/messages/{message_uuid}")
    signers = await page.locator("#timeline td.signer").all_inner_texts()
    assert signers[:4] == [
        f"sender:{SENDER}",
        "service:dp2-validator",
        "service:dp2-router",
        "provider:mitpost",
    ]
    response = await page.request.get(
        f"{stack.tracing_url}/dashboard/messages/{message_uuid}/receipt"
    )
    assert response.status == 200
    receipt = await response.json()
    assert receipt["messageUUID"] == message_uuid and len(receipt["events"]) >= 4
    await _shot(page, "timeline-signers")
    await page.close()
