"""Issue 15 end to end: each bad input refused with its own reason code, where it was found.

Each test sends its bad input through the public interface it was found on — Kafka
through the SDK or a raw producer, HTTP for the trace API and the forms connector —
asserts the reason code on the trace (or in the HTTP answer), that nothing wrong was
stored, delivered or written, and that a good letter sent right after still arrives.
The pure rules behind them are in tests/unit/test_bad_inputs_rules.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from brokers.runtime.host import ServiceHost
from brokers.runtime.kafka import new_producer
from brokers.runtime.records import position_uuid_of
from brokers.security.pki import provider_identity_name
from brokers.stack.registry import build_service
from connectors.citizens import DevTokens
from connectors.sdk import Document, Dp2Client, build_message
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import (
    Envelope,
    File,
    InlineContent,
    LifecycleState,
    MessageType,
    TechnicalDocument,
)
from schemas.vocabulary import MESSAGE_UUID_HEADER, PRINT_TOPIC, SUBMITTED_TOPIC
from tests.integration.conftest import (
    AUTHORITY_CVR,
    EXEMPT_CPR,
    REGISTERED_CPR,
    SENDER_CVR,
    Esdh,
    Stack,
    until,
)
from tests.integration.test_print import print_connector
from tracing.access import Users
from tracing.deadletters import DeadLetter, DeadLetterStore

pytestmark = [pytest.mark.kafka]

FORMS_PROVIDER = "forms-edge"  # its own identity: test_citizens issues "forms" itself
CITIZEN_CPR = "0707071234"
FINAL = {"DELIVERED", "REJECTED", "FAILED", "DUPLICATE", "SCHEDULED", "PRINTED"}


def letter(recipient: str = REGISTERED_CPR, **kwargs: Any) -> Envelope:
    return build_message(
        sender_cvr=SENDER_CVR,
        sender_label="Aarhus Kommune",
        recipient_id=recipient,
        label="Afgørelse om boligstøtte",
        documents=kwargs.pop("documents", [Document("afgoerelse.txt", "text/plain", b"Bevilget.")]),
        notification="Du har fået post fra Aarhus Kommune",
        **kwargs,
    )


def states(doc: dict[str, Any] | None) -> list[str]:
    return [e["state"] for e in doc["timeline"]] if doc else []


async def rejected_with(stack: Stack, client: Dp2Client, message: Envelope) -> str:
    """Send ``message``; it must be REJECTED (with a how-to-fix sentence), never carried."""
    receipt = await client.send(message)
    event = await client.wait_for(receipt.message_uuid, FINAL | {"ACCEPTED"})
    assert event.state is LifecycleState.REJECTED, f"{event.state} {event.reasonCode}"
    assert event.reasonText and len(event.reasonText) > 20, "every refusal says how to fix it"
    doc = await stack.wait_trace(receipt.message_uuid, "REJECTED")
    assert doc["timeline"][-1]["reasonCode"] == event.reasonCode
    assert not {"ACCEPTED", "ROUTED", "SCHEDULED", "DELIVERED"} & set(states(doc))
    assert stack.mailbox_store().count(receipt.message_uuid) == 0, "nothing was delivered"
    return event.reasonCode or ""


async def good_letter_arrives(stack: Stack, client: Dp2Client) -> str:
    """A good letter sent right after the bad input is DELIVERED and in the mailbox."""
    receipt = await client.send(letter())
    await client.wait_for(receipt.message_uuid, {"DELIVERED"}, timeout=30)
    assert stack.mailbox_store().count(receipt.message_uuid) == 1
    return receipt.message_uuid


# --- 1. one canonical form of a message UUID ------------------------------------------------
async def test_a_letter_resubmitted_in_upper_case_is_a_duplicate_delivered_once(
    stack: Stack,
) -> None:
    """The same signed letter again with its UUID in upper case is DUPLICATE on the first
    timeline: one DELIVERED, one mailbox row, whichever case the UUID is asked in."""
    async with stack.client() as client:
        signed, ref = client.seal_and_sign(letter())
        message_uuid = signed.header.messageUUID
        raw = codec.encode(signed)
        await client.submit(raw, message_uuid, ref)
        await client.wait_for(message_uuid, {"DELIVERED"})
        upper = raw.replace(message_uuid.encode(), message_uuid.upper().encode())
        assert upper != raw, "the UUID is on the wire in upper case"
        await client.submit(upper, message_uuid.upper(), ref)
        duplicate = await client.wait_for(message_uuid.upper(), {"DUPLICATE"})
        assert duplicate.messageUUID == message_uuid
        # Built in upper case by a connector: the model folds it, so it is the same UUID.
        again = await client.send(letter(message_uuid=message_uuid.upper()))
        assert again.message_uuid == message_uuid
        await until(
            lambda: (
                sum(e.state is LifecycleState.DUPLICATE for e in client.events(message_uuid)) >= 2
            ),
            what="a second DUPLICATE",
        )
        await asyncio.sleep(1.0)  # room for a second delivery, were there one
        doc = await stack.wait_trace(message_uuid.upper(), "DUPLICATE")
        assert states(doc).count("DELIVERED") == 1 and states(doc).count("ACCEPTED") == 1
        assert doc["messageUUID"] == message_uuid and doc["state"] == "DELIVERED"
        mailbox = stack.mailbox_store()
        assert mailbox.count(message_uuid) == 1 and mailbox.count(message_uuid.upper()) == 1
        await good_letter_arrives(stack, client)


# --- 2. NemSMS scheduled a century ahead -----------------------------------------------------
async def test_a_nemsms_scheduled_a_century_ahead_is_schedule_too_far(stack: Stack) -> None:
    """A NemSMS with doNotDeliverUntilDate 100 years ahead is REJECTED SCHEDULE_TOO_FAR, as a
    letter is, and the router holds nothing for it."""
    far = date.today() + timedelta(days=36525)
    nemsms = build_message(
        sender_cvr=SENDER_CVR,
        sender_label="Aarhus Kommune",
        recipient_id=REGISTERED_CPR,
        label="Påmindelse",
        notification="Husk din tid hos tandlægen",
        message_type=MessageType.NEMSMS,
        do_not_deliver_until=far,
    )
    async with stack.client() as client:
        code = await rejected_with(stack, client, nemsms)
        assert code == "SCHEDULE_TOO_FAR"
        with sqlite3.connect(stack.settings.home / "data" / "router.sqlite") as schedule:
            held = schedule.execute(
                "SELECT COUNT(*) FROM scheduled WHERE message_uuid = ?",
                (nemsms.header.messageUUID,),
            ).fetchone()[0]
        assert held == 0, "nothing was scheduled"
        await good_letter_arrives(stack, client)


# --- 3. the trace API reads ASCII digits only -------------------------------------------------
async def test_the_trace_api_answers_400_for_a_limit_in_other_digits(stack: Stack) -> None:
    """GET /messages?limit=² (and Arabic-Indic, full-width digits) is 400 JSON BAD_QUERY, not
    500; the API goes on serving, and a good letter's trace is found after."""
    # The deployment's own operator token, as dp2 trace mints it (tracing.access).
    auth = {"Authorization": f"Bearer {Users(stack.settings.home).local_token()}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        for limit in ("²", "٣", "\uff15", "1_0"):
            async with session.get(
                f"{stack.tracing_url}/messages", params={"limit": limit}
            ) as response:
                assert response.status == 400, limit
                error = (await response.json())["error"]
                assert error["reasonCode"] == "BAD_QUERY" and error["hint"], limit
        async with stack.client() as client:
            good = await good_letter_arrives(stack, client)
        async with session.get(f"{stack.tracing_url}/messages", params={"limit": "5"}) as ok:
            assert ok.status == 200
            assert len((await ok.json())["items"]) <= 5
        doc = await stack.wait_trace(good.upper(), "DELIVERED")
        assert doc["messageUUID"] == good


# --- 4. createdDateTime and replyByDateTime ----------------------------------------------------
def dated(created: datetime, reply_by: datetime | None = None) -> Envelope:
    message = letter()
    assert message.body is not None
    return dataclasses.replace(
        message,
        header=dataclasses.replace(
            message.header, reply=reply_by is not None, replyByDateTime=reply_by
        ),
        body=dataclasses.replace(message.body, createdDateTime=created),
    )


async def test_letter_dates_out_of_bounds_are_refused(stack: Stack) -> None:
    """createdDateTime in 2999 or 1900, and replyByDateTime before createdDateTime, are each
    REJECTED with their own code and never delivered."""
    now = datetime.now(UTC)
    async with stack.client() as client:
        codes = {
            "2999": await rejected_with(stack, client, dated(datetime(2999, 1, 1, tzinfo=UTC))),
            "1900": await rejected_with(stack, client, dated(datetime(1900, 1, 1, tzinfo=UTC))),
            "reply": await rejected_with(
                stack, client, dated(now, reply_by=now - timedelta(hours=1))
            ),
        }
        await good_letter_arrives(stack, client)
    assert codes == {
        "2999": "CREATED_IN_FUTURE",
        "1900": "CREATED_TOO_OLD",
        "reply": "REPLY_BY_BEFORE_CREATED",
    }


# --- 5. how many documents and files ----------------------------------------------------------
def _file(name: str) -> File:
    return File(encodingFormat="text/plain", filename=name, content=InlineContent(data=b"data"))


async def test_too_many_technical_documents_or_files_are_refused(stack: Stack) -> None:
    """Eleven TechnicalDocuments, or fifty files in one document, are REJECTED with
    TOO_MANY_TECHNICAL_DOCUMENTS and TOO_MANY_FILES."""
    base = letter()
    assert base.body is not None
    eleven = dataclasses.replace(
        base,
        body=dataclasses.replace(
            base.body,
            technicalDocument=[TechnicalDocument(file=[_file(f"data{i}.xml")]) for i in range(11)],
        ),
    )
    fifty = dataclasses.replace(
        base,
        header=dataclasses.replace(base.header, messageUUID=str(uuid.uuid4())),  # its own timeline
        body=dataclasses.replace(
            base.body,
            mainDocument=dataclasses.replace(
                base.body.mainDocument, file=[_file(f"side{i}.txt") for i in range(50)]
            ),
        ),
    )
    async with stack.client() as client:
        assert await rejected_with(stack, client, eleven) == "TOO_MANY_TECHNICAL_DOCUMENTS"
        assert await rejected_with(stack, client, fifty) == "TOO_MANY_FILES"
        await good_letter_arrives(stack, client)


# --- forms: the citizen-facing edge of items 6 and 7 -------------------------------------------
@dataclass
class Forms:
    host: ServiceHost
    esdh: Esdh
    tokens: DevTokens
    session: aiohttp.ClientSession

    async def submit(self, submission: dict[str, Any]) -> tuple[int, Any]:
        assert self.host.url is not None
        async with self.session.post(
            f"{self.host.url}/forms/{AUTHORITY_CVR}/submissions",
            json=submission,
            headers={"Authorization": f"Bearer {self.tokens.issue(CITIZEN_CPR)}"},
        ) as response:
            return response.status, await response.json()

    def journaled_cases(self) -> list[str | None]:
        return [entry.get("caseID") for entry in self.esdh.peer.journal]

    def submitted(self) -> int:
        """How many submissions the connector has sent to Kafka (its /healthz check)."""
        check = next(c for c in self.host.health()["checks"] if c["check"] == "forms")
        return int(check["submitted"])


@contextmanager
def connector_table(stack: Stack, name: str, body: str) -> Iterator[None]:
    """``[connectors.<name>]`` in connectors.toml for the block, then taken out again, so
    the other modules' fixtures find the file as they left it."""
    path = stack.settings.home / "connectors.toml"
    # The table and its sub-tables ([connectors.NAME.authorities."..."] and the like).
    pattern = rf"(?ms)^\[connectors\.{re.escape(name)}(?:\.[^\]\n]*)?\]\n.*?(?=^\[|\Z)"

    def write(table: str) -> None:
        text = re.sub(pattern, "", path.read_text() if path.exists() else "").rstrip("\n")
        path.write_text(f"{text}\n\n{table}" if text else table)

    write(f"[connectors.{name}]\n{body}")
    try:
        yield
    finally:
        write("")


@pytest.fixture(scope="module")
async def forms(stack: Stack, esdh: Esdh) -> AsyncIterator[Forms]:
    """The forms connector, signing as its own provider identity, posting to the ESDH."""
    try:
        stack.pki.identity(provider_identity_name(FORMS_PROVIDER))
    except Dp2Error:
        stack.pki.issue_provider(FORMS_PROVIDER, citizen_gateway=True)
    with connector_table(
        stack, "forms", f'identity = "{provider_identity_name(FORMS_PROVIDER)}"\n'
    ):
        await stack.apply_acls()
        host = await build_service(
            "connector", stack.settings, connector="forms", group_suffix=f".{uuid.uuid4().hex[:8]}"
        )
        await host.start()
        await asyncio.sleep(1)  # its register sees the authority
        async with aiohttp.ClientSession() as session:
            try:
                yield Forms(host, esdh, DevTokens.from_home(stack.settings.home), session)
            finally:
                await host.stop()


SUBMISSION: dict[str, Any] = {
    "label": "Ansøgning om parkeringstilladelse",
    "text": "Jeg søger om en beboerparkeringstilladelse.",
    "formData": {"taskKey": "FORM-PARK-01", "version": "2", "label": "Beboerparkering"},
}


async def good_form_is_journaled(stack: Stack, forms: Forms, case_id: str) -> None:
    """A good submission right after is accepted and journaled on its case."""
    status, body = await forms.submit({**SUBMISSION, "caseID": case_id})
    assert status == 202, body
    await stack.wait_trace(body["messageUUID"], "JOURNALED", timeout=60)
    entry = next(e for e in forms.esdh.peer.journal if e["messageUUID"] == body["messageUUID"])
    assert entry["caseID"] == case_id


# --- 6. unsafe file names and loose base64 ------------------------------------------------------
async def test_unsafe_file_names_and_loose_base64_are_refused(stack: Stack, forms: Forms) -> None:
    """A file named ``..`` sent over Kafka is REJECTED UNSAFE_FILENAME and not delivered; over
    the forms API it is 400 UNSAFE_FILENAME, and ``SGVq=`` is 400 INVALID_BASE64, nothing
    sent; good post flows on both ways."""
    async with stack.client() as client:
        dotdot = letter(documents=[Document("..", "text/plain", b"Hej")])
        assert await rejected_with(stack, client, dotdot) == "UNSAFE_FILENAME"
        await good_letter_arrives(stack, client)
    sent_before = forms.submitted()
    for attachment, code in (
        ({"filename": "bilag.txt", "content": "SGVq="}, "INVALID_BASE64"),
        ({"filename": "..", "content": "SGVq"}, "UNSAFE_FILENAME"),
    ):
        status, body = await forms.submit({**SUBMISSION, "attachments": [attachment]})
        assert status == 400 and body["reasonCode"] == code, body
        assert body["hint"] and "messageUUID" not in body
    assert forms.submitted() == sent_before, "nothing reached Kafka"
    await good_form_is_journaled(stack, forms, "SAG-EDGE-0006")
    assert forms.submitted() == sent_before + 1


# --- 7. folder drops stay inside their folder ----------------------------------------------------
async def test_names_from_messages_never_leave_their_folder(
    stack: Stack, forms: Forms, tmp_path: Path
) -> None:
    """A signed letter whose UUID is ``../escaped-…`` put straight on dp2.print is FAILED
    INVALID_MESSAGE_UUID and writes nothing outside (or inside) the print outbox; a form
    with caseID ``..`` is 400 INVALID_CASE_ID; good post is printed and journaled after."""
    drop_dir = tmp_path / "outbox"
    bad_uuid = f"../escaped-{uuid.uuid4().hex[:8]}"
    async with (
        print_connector(stack, drop_dir=str(drop_dir), poll_s=0.2, retry_max_s=1.0),
        stack.client() as client,
    ):
        sealed, ref = client.seal_and_sign(letter(EXEMPT_CPR, message_uuid=bad_uuid))
        assert sealed.header.messageUUID == bad_uuid
        producer = new_producer(stack.admin)  # as if the router were compromised
        await producer.start()
        try:
            await producer.send_and_wait(
                PRINT_TOPIC,
                codec.encode(sealed),
                key=ref.encode(),
                headers=[(MESSAGE_UUID_HEADER, bad_uuid.encode())],
            )
        finally:
            await producer.stop()
        failed = await client.wait_for(bad_uuid, {"FAILED", "PRINTED"}, timeout=60)
        assert failed.state is LifecycleState.FAILED
        assert failed.reasonCode == "INVALID_MESSAGE_UUID" and failed.reasonText
        good = await client.send(letter(EXEMPT_CPR))
        printed = await client.wait_for(good.message_uuid, {"PRINTED", "FAILED"}, timeout=60)
        assert printed.state is LifecycleState.PRINTED, printed.reasonText
        assert (drop_dir / f"{good.message_uuid}.pdf").exists()
    name = bad_uuid.removeprefix("../")
    assert not list(tmp_path.rglob(f"{name}*")), "nothing written for the bad UUID"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox"]

    sent_before = forms.submitted()
    status, body = await forms.submit({**SUBMISSION, "caseID": ".."})
    assert status == 400 and body["reasonCode"] == "INVALID_CASE_ID", body
    assert forms.submitted() == sent_before and ".." not in forms.journaled_cases()
    await good_form_is_journaled(stack, forms, "SAG-EDGE-0007")


# --- 8. a tombstone stays a tombstone -----------------------------------------------------------
def _letters_of(store: DeadLetterStore, message_uuid: str) -> list[DeadLetter]:
    return [d for d in store.list() if d.message_uuid == message_uuid]


async def test_a_tombstone_is_dead_lettered_and_redriven_as_a_tombstone(stack: Stack) -> None:
    """A tombstone on dp2.submitted is REJECTED MALFORMED_RECORD, parked as a tombstone (not an
    empty value), and a re-drive sends a tombstone again; good post flows on."""
    tomb_uuid = str(uuid.uuid4())
    store = DeadLetterStore(stack.settings.home / "data" / "deadletters.sqlite")
    try:
        async with stack.client() as client:
            producer = client._require_producer()
            landed = await producer.send_and_wait(
                SUBMITTED_TOPIC,
                None,
                key=b"psn-tombstone",
                headers=[(MESSAGE_UUID_HEADER, tomb_uuid.encode())],
            )
            # Nobody vouches for a tombstone: its REJECTED is on its own timeline, never
            # on the UUID its header names (records.unverified_rejection).
            source = f"{landed.topic}/{landed.partition}/{landed.offset}"
            doc = await stack.wait_trace(position_uuid_of(source), "REJECTED")
            assert await asyncio.to_thread(stack.trace, tomb_uuid) is None
            assert doc["timeline"][-1]["reasonCode"] == "MALFORMED_RECORD"
            assert "tombstone" in (doc["timeline"][-1]["reasonText"] or "")
            [parked] = await until(lambda: _letters_of(store, tomb_uuid), what="the dead letter")
            assert parked.tombstone and parked.size == 0
            assert parked.reason_code == "MALFORMED_RECORD" and parked.topic == SUBMITTED_TOPIC

            await store.redrive(parked.source, producer, "test")
            letters = await until(
                lambda: [d for d in _letters_of(store, tomb_uuid) if d.source != parked.source],
                what="the re-driven tombstone parked again",
            )
            assert all(d.tombstone and d.size == 0 for d in letters), "re-driven as a tombstone"
            await good_letter_arrives(stack, client)
    finally:
        store.close()
