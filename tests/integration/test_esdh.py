"""The ESDH connector end to end: MeMo in over HTTP and a folder, receipts and journal out.

A local aiohttp server plays the authority's case system (ESDH): it takes business
receipts and journal entries, and can be taken down and brought back. The
connector runs in-process on the session's real Kafka, next to the test stack.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.esdh.openapi import openapi_document
from connectors.sdk import Document, build_message
from schemas import memo
from schemas.models import (
    CaseID,
    ContentData,
    Envelope,
    File,
    IdType,
    InlineContent,
    MainDocument,
    MessageBody,
    MessageHeader,
    MessageType,
    Recipient,
    ReplyData,
    Sender,
)
from tests.integration.conftest import (
    AUTHORITY_CVR,
    PROVIDER,
    REGISTERED_CPR,
    Esdh,
    until,
)
from tests.unit.test_memo import VARIANTS

pytestmark = [pytest.mark.kafka]

SAMPLES = Path(__file__).parent.parent / "data" / "memo"


def _letter(case_id: str = "SAG-2026-0042", label: str = "Afgørelse om boligstøtte") -> bytes:
    message = build_message(
        sender_cvr=AUTHORITY_CVR,
        sender_label="Aarhus Kommune",
        recipient_id=REGISTERED_CPR,
        label=label,
        documents=[Document("afgoerelse.txt", "text/plain", "Du får boligstøtte.".encode())],
        case_id=case_id,
    )
    header = message.header
    content = replace(
        header.contentData or ContentData(), caseID=CaseID(caseID=case_id, caseSystem="SBSYS")
    )
    return memo.to_xml(replace(message, header=replace(header, contentData=content, reply=True)))


def _citizen_message(*, case_id: str | None = None, reply_to: str | None = None) -> Envelope:
    """A citizen's message to the authority (as the citizen's mailbox app sends it)."""
    return Envelope(
        memoVersion="1.2",
        header=MessageHeader(
            messageType=MessageType.DIGITALPOST,
            messageUUID=str(uuid.uuid4()),
            label="Spørgsmål til min sag",
            sender=Sender(senderID=REGISTERED_CPR, idType=IdType.CPR, label="Karen Jensen"),
            recipient=Recipient(recipientID=AUTHORITY_CVR, idType=IdType.CVR),
            contentData=ContentData(caseID=CaseID(caseID=case_id, caseSystem="SBSYS"))
            if case_id
            else None,
            replyData=[ReplyData(messageUUID=reply_to)] if reply_to else [],
        ),
        body=MessageBody(
            createdDateTime=datetime.now(UTC),
            mainDocument=MainDocument(
                label="Mit svar",
                file=[
                    File(
                        encodingFormat="text/plain",
                        filename="svar.txt",
                        language="da",
                        content=InlineContent(data="Tak, jeg har et spørgsmål.".encode()),
                    )
                ],
            ),
        ),
    )


async def test_a_memo_letter_is_received_delivered_and_its_receipts_reach_the_esdh(
    esdh: Esdh,
) -> None:
    """POST /memo answers with a receipt echoing the UUID; business receipts follow by callback."""
    xml = _letter()
    status, body = await esdh.post(xml)
    assert status == 202, body
    message_uuid = memo.parse(xml).header.messageUUID
    assert body["messageUUID"] == message_uuid and body["status"] == "SUBMITTED"
    await esdh.stack.wait_trace(message_uuid, "DELIVERED")
    await until(
        lambda: {"ACCEPTED", "ROUTED", "DELIVERED"} <= set(esdh.peer.states_of(message_uuid)),
        what="receipts at the ESDH",
    )
    states = esdh.peer.states_of(message_uuid)
    assert states.index("ACCEPTED") < states.index("DELIVERED")
    assert all(
        r["caseID"] == "SAG-2026-0042"
        for r in esdh.peer.receipts
        if r["messageUUID"] == message_uuid
    )
    status, found = await esdh.get(f"/messages/{message_uuid}")
    assert status == 200 and found["caseID"] == "SAG-2026-0042"

    again_status, again = await esdh.post(xml)
    assert again_status == 200 and again["status"] == "DUPLICATE", "a resend is not an error"
    changed = xml.replace("Afgørelse om boligstøtte".encode(), b"Noget andet")
    conflict_status, conflict = await esdh.post(changed)
    assert conflict_status == 409 and conflict["reasonCode"] == "MEMO_UUID_REUSED"


async def test_every_sample_goes_through(esdh: Esdh) -> None:
    """Each authority's sample is submitted; a citizen's sample is not the ESDH's to send."""
    samples = sorted(SAMPLES.glob("*.xml"))
    assert samples, "tests/data/memo holds the MeMo samples"
    in_a_month = (datetime.now(UTC).date() + timedelta(days=30)).isoformat().encode()
    submitted = 0
    for path in samples:
        # A fixed delivery date in a sample would one day be past (MEMO_DELIVERY_DATE_PAST).
        xml = re.sub(
            rb"(doNotDeliverUntilDate>)\d{4}-\d{2}-\d{2}<",
            rb"\g<1>" + in_a_month + b"<",
            path.read_bytes(),
        )
        message = memo.parse(xml)
        status, body = await esdh.post(xml)
        if message.header.sender.senderID != AUTHORITY_CVR:
            assert status == 422 and body["violations"][0]["code"] == "MEMO_WRONG_SENDER"
            continue
        assert status == 202, (path.name, body)
        assert body["messageUUID"] == message.header.messageUUID
        submitted += 1
    assert submitted == len(samples) - 1


async def test_every_broken_variant_gets_its_error_and_the_next_message_goes(esdh: Esdh) -> None:
    """Each broken MeMo variant gets 422 with its violations; a good message right after is sent."""
    own_code = 0
    for variant in VARIANTS:
        xml = variant.xml()
        try:
            memo.parse_and_validate(xml, now=datetime.now(UTC))
            continue  # a date rule that the real clock does not break today
        except memo.MemoError as exc:
            expected = {v.code for v in exc.violations}
        status, body = await esdh.post(xml)
        assert status == 422, (variant.code, body)
        answered = {v["code"] for v in body["violations"]}
        assert answered in (expected, {"MEMO_WRONG_SENDER"}), (variant.code, body)
        assert all(v["hint"] for v in body["violations"])
        own_code += variant.code in answered
        good = _letter(label=f"Efter {variant.code}")
        status, body = await esdh.post(good)
        assert status == 202, body
    # Today every variant gets exactly its own code; date rules may drift with the clock.
    assert own_code >= len(VARIANTS) - 3
    status, body = await esdh.post(b"<memo:Message")
    assert status == 422 and body["reasonCode"] == "MEMO_MALFORMED_XML"
    status, body = await esdh.post(_letter(), content_type="application/json")
    assert status == 415 and body["reasonCode"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_a_memo_file_dropped_in_the_watched_folder_is_sent(esdh: Esdh) -> None:
    """A good file moves to processed/ with its receipt, a bad one to failed/ with its errors."""
    good, bad = esdh.inbox / "brev.xml", esdh.inbox / "forkert.xml"
    xml = _letter(label="Brev fra mappen")
    (esdh.inbox / "brev.part").write_bytes(xml)
    (esdh.inbox / "brev.part").replace(good)
    bad.write_bytes(b"<memo:Message xmlns:memo='https://DigitalPost.dk/MeMo-1'/>")
    receipt = esdh.inbox / "processed" / "brev.xml.receipt.json"
    await until(receipt.exists, what="the folder receipt")
    assert json.loads(receipt.read_text())["messageUUID"] == memo.parse(xml).header.messageUUID
    error = esdh.inbox / "failed" / "forkert.xml.error.json"
    await until(error.exists, what="the folder error")
    assert json.loads(error.read_text())["violations"]
    assert not good.exists() and not bad.exists()
    await esdh.stack.wait_trace(memo.parse(xml).header.messageUUID, "DELIVERED")


async def test_a_reply_is_journaled_on_the_case_of_the_message_it_answers(esdh: Esdh) -> None:
    """The citizen's reply names no case; the connector finds it from the replied-to message."""
    xml = _letter(case_id="SAG-2026-0777", label="Partshøring")
    status, body = await esdh.post(xml)
    assert status == 202, body
    original = body["messageUUID"]
    await esdh.stack.wait_trace(original, "DELIVERED")

    reply = _citizen_message(reply_to=original)
    async with esdh.stack.client(f"provider-{PROVIDER}") as app:
        await app.send(reply)
    doc = await esdh.stack.wait_trace(reply.header.messageUUID, "JOURNALED")
    journaled = next(e for e in doc["timeline"] if e["state"] == "JOURNALED")
    assert journaled["relatedMessageUUID"] == original
    entry = next(j for j in esdh.peer.journal if j["messageUUID"] == reply.header.messageUUID)
    assert entry["caseID"] == "SAG-2026-0777" and entry["replyTo"] == original
    assert memo.parse(entry["memo"].encode()).header.sender.senderID == REGISTERED_CPR
    assert REGISTERED_CPR not in json.dumps(doc), "the trace shows a pseudonym, not the CPR"


async def test_an_esdh_that_is_down_gets_receipts_and_journal_when_back(esdh: Esdh) -> None:
    """While the ESDH is down, receipts and journal entries wait (visible); then all arrive."""
    await esdh.peer.stop()
    try:
        status, body = await esdh.post(_letter(case_id="SAG-2026-0900", label="Mens ESDH er nede"))
        assert status == 202, body
        sent = body["messageUUID"]
        question = _citizen_message(case_id="SAG-2026-0901")
        async with esdh.stack.client(f"provider-{PROVIDER}") as app:
            await app.send(question)
        await esdh.stack.wait_trace(question.header.messageUUID, "DELIVERED")

        async def pending() -> list[dict[str, Any]]:
            _, listing = await esdh.get("/journal?status=pending")
            return [
                e for e in listing["entries"] if e["messageUUID"] == question.header.messageUUID
            ]

        deadline = asyncio.get_running_loop().time() + 20
        while not [e for e in await pending() if e["attempts"] > 0]:
            assert asyncio.get_running_loop().time() < deadline, "journal entry never pending"
            await asyncio.sleep(0.2)
        health = esdh.host.health()
        assert health["status"] == "degraded", health
        assert esdh.peer.states_of(sent) == []
    finally:
        await esdh.peer.start()  # same port: the connector's URLs stay right

    await until(lambda: "DELIVERED" in esdh.peer.states_of(sent), what="receipts after downtime")
    await esdh.stack.wait_trace(question.header.messageUUID, "JOURNALED")
    assert [
        j["caseID"] for j in esdh.peer.journal if j["messageUUID"] == question.header.messageUUID
    ] == ["SAG-2026-0901"]
    _, journaled = await esdh.get("/journal?status=journaled")
    assert question.header.messageUUID in [e["messageUUID"] for e in journaled["entries"]]


async def test_the_api_answers_only_the_authority_it_serves(esdh: Esdh) -> None:
    """No token is 401, another authority's token 403, a forged one 401; nothing is sent."""
    xml = _letter(label="Uden adgang")
    forged = esdh.token()[:-4] + "AAAA"
    for token, status, code in (
        ("", 401, "AUTHORITY_TOKEN_MISSING"),
        (forged, 401, "AUTHORITY_TOKEN_INVALID"),
        (esdh.token("11111111"), 403, "AUTHORITY_TOKEN_WRONG_CVR"),
    ):
        for answer in (
            await esdh.post(xml, token=token),
            await esdh.get("/journal", token=token),
        ):
            assert answer[0] == status, answer
            assert answer[1]["reasonCode"] == code
    sent = memo.parse(xml).header.messageUUID
    assert await asyncio.to_thread(esdh.stack.trace, sent) is None
    holder_of_key = {"Authorization": f"Holder-of-key {esdh.token()}"}
    async with esdh.session.get(f"{esdh.url}/journal", headers=holder_of_key) as response:
        assert response.status == 200  # SF1601's form of the header


async def test_openapi_describes_exactly_the_routes_served(esdh: Esdh) -> None:
    """Every route the connector serves is in /openapi.json, and nothing else is."""
    status, served_doc = await esdh.get("/openapi.json")
    assert status == 200 and served_doc == openapi_document()
    app = esdh.host._app
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    described = {
        (method, path.replace("{message_uuid}", "{message_uuid}"))
        for path, operations in served_doc["paths"].items()
        for method in operations
    }
    assert served == described


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error(esdh: Esdh, tmp_path: Path) -> None:
    """Generated requests against the OpenAPI description never get a 5xx."""
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is a test dependency (pyproject.toml)"
    process = await asyncio.create_subprocess_exec(
        schemathesis,
        "run",
        f"{esdh.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "40",
        "--seed",
        "2026",
        "--header",
        f"Authorization: Bearer {esdh.token()}",
        "--workers",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await process.communicate()
    report = output.decode()
    assert process.returncode == 0, report[-4000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated and int(generated[1]) >= 50 and generated[1] == generated[2], report[-2000:]
