"""SF1601 on the real stack: KombiPostAfsend per KombiValgKode, PostForespoerg, receipts.

An SF1601 integration talks to the ESDH connector's ``/sf1601/`` routes as it talked
to Serviceplatformen: a ``kombi_request`` with the ``Holder-of-key`` token and the
transaction headers. The module runs the installed print connector (test_print's
helper) and a notifier of its own with SMS peers (test_notify's), so that each
channel is seen where it ends: DELIVERED in the mailbox, PRINTED by remote print, the
NemSMS text at the SMS provider.
"""

from __future__ import annotations

import asyncio
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from brokers.contacts.records import read_contact_file
from brokers.contacts.register import publish_contacts
from brokers.runtime.host import ServiceHost
from brokers.runtime.settings import Settings
from brokers.stack.access import REGISTER_IDENTITY
from brokers.stack.registry import build_service
from connectors.esdh.sf1601_http import FORESPOERG, KOMBI
from connectors.sdk import Document, build_message
from schemas import memo
from schemas.models import MessageType
from schemas.vocabulary import LIFECYCLE_TOPIC
from tests.integration.conftest import (
    AUTHORITY_CVR,
    EXEMPT_CPR,
    PROVIDER,
    REGISTERED_CPR,
    UNKNOWN_CPR,
    Esdh,
    Stack,
    until,
)
from tests.integration.test_notify import (
    Peers,
    Recipient,
    _start_group_at_end,
    new_recipient,
    running_peers,
)
from tests.integration.test_print import print_connector

pytestmark = [pytest.mark.kafka]

NEMSMS_TEXT = "Husk din tid hos tandlægen i morgen kl. 9"


@dataclass
class Channels:
    """What the module runs beside the ESDH connector, and its recipients."""

    esdh: Esdh
    drop_dir: Path
    peers: Peers
    texter: Recipient  # registered, with an SMS channel
    on_paper_cpr: str  # registered (digital post), with a postal address

    async def kombi(
        self,
        code: str,
        xml: bytes,
        *,
        token: str | None = None,
        transaction: str | None = None,
        path: str = "kombi",
        accept: str = "application/xml",
    ) -> tuple[int, dict[str, str], bytes]:
        """POST a kombi_request as an SF1601 client does (Holder-of-key, transaction ids)."""
        headers = {
            "Content-Type": "application/xml;charset=UTF-8",
            "Accept": accept,
            "authorization": f"Holder-of-key {self.esdh.token() if token is None else token}",
            "X-TransaktionsId": transaction or str(uuid.uuid4()),
            "X-TransaktionsTid": "2026-12-01T09:00:00Z",
        }
        async with self.esdh.session.post(
            f"{self.esdh.url}{KOMBI}/{path}", data=kombi_request(code, xml), headers=headers
        ) as response:
            return response.status, dict(response.headers), await response.read()

    async def forespoerg(
        self, service: str, query: str, *, authorization: str | None = None
    ) -> tuple[int, Any]:
        """GET PostForespoerg as an SF1601 client does."""
        headers = {"X-TransaktionsId": str(uuid.uuid4()), "X-TransaktionsTid": "2026-12-01T09:00Z"}
        headers["authorization"] = (
            f"Holder-of-key {self.esdh.token()}" if authorization is None else authorization
        )
        url = f"{self.esdh.url}{FORESPOERG}/{service}?{query}"
        async with self.esdh.session.get(url, headers=headers) as response:
            return response.status, await response.json()


def kombi_request(code: str, memo_xml: bytes) -> bytes:
    """SF1601's wrapper around one MeMo message (its XML declaration taken off)."""
    body = memo_xml.split(b"?>", 1)[1] if memo_xml.startswith(b"<?xml") else memo_xml
    return b"<kombi_request><KombiValgKode>%s</KombiValgKode>%s</kombi_request>" % (
        code.encode(),
        body,
    )


def letter(recipient: str, label: str = "Afgørelse om boligstøtte") -> bytes:
    """A MeMo letter from the ESDH connector's authority."""
    return memo.to_xml(
        build_message(
            sender_cvr=AUTHORITY_CVR,
            sender_label="Aarhus Kommune",
            recipient_id=recipient,
            label=label,
            documents=[Document("brev.txt", "text/plain", "Du får boligstøtte.".encode())],
            case_id="SAG-2026-1601",
        )
    )


def text_message(recipient: str) -> bytes:
    """A MeMo NEMSMS from the authority."""
    return memo.to_xml(
        build_message(
            sender_cvr=AUTHORITY_CVR,
            sender_label="Aarhus Kommune",
            recipient_id=recipient,
            label="Påmindelse",
            notification=NEMSMS_TEXT,
            message_type=MessageType.NEMSMS,
        )
    )


def uuid_of(xml: bytes) -> str:
    return memo.parse(xml).header.messageUUID


def read(answer: bytes) -> ET.Element:
    """The kombi_response the connector wrote."""
    return ET.fromstring(answer)  # noqa: S314 - DP2's own answer in a test


def fault(answer: bytes) -> str | None:
    return read(answer).findtext("HovedoplysningerSvarREST/SvarReaktion/Fejl/FejlId")


async def _notifier(stack: Stack, peers: Peers, home: Path) -> ServiceHost:
    """A notifier of this module (its own outbox), reading dp2.lifecycle from now on."""
    suffix = f".sf1601-{uuid.uuid4().hex[:6]}"
    await _start_group_at_end(stack.admin, f"dp2.notifier{suffix}", LIFECYCLE_TOPIC)
    settings = Settings.from_env(
        {
            "DP2_HOME": str(home),
            "DP2_KAFKA_BOOTSTRAP": stack.settings.kafka_bootstrap,
            "DP2_PKI": str(stack.settings.pki_dir),
            "DP2_KAFKA_TLS": "1" if stack.admin.tls else "0",
            "DP2_DIGEST_WINDOW_S": "0",
            **peers.env(),
        }
    )
    host = await build_service("notifier", settings, group_suffix=suffix)
    await host.start()
    return host


@pytest.fixture(scope="module")
async def channels(esdh: Esdh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Channels]:
    """The ESDH connector, remote print to a folder, a notifier with SMS peers, and a
    recipient for paper and one for NemSMS that the connector's register knows."""
    stack = esdh.stack
    on_paper = f"{uuid.uuid4().int % 10**10:010d}"
    register = tmp_path_factory.mktemp("sf1601-contacts") / "contacts.json"
    register.write_text(
        json.dumps(
            [
                {
                    "id": on_paper,
                    "status": "REGISTERED",
                    "provider": PROVIDER,
                    "name": "Poul Papir",
                    "address": {"street": "Brevvej 3", "postcode": "8000", "city": "Aarhus C"},
                }
            ]
        )
    )
    await publish_contacts(
        stack.kafka(REGISTER_IDENTITY), read_contact_file(register, stack.pseudonyms)
    )
    texter = await new_recipient(stack)
    drop_dir = tmp_path_factory.mktemp("sf1601-print")
    async with (
        running_peers() as peers,
        print_connector(stack, drop_dir=str(drop_dir), poll_s=0.2, retry_max_s=1.0),
    ):
        notifier = await _notifier(stack, peers, tmp_path_factory.mktemp("sf1601-notifier"))
        try:
            found = Channels(esdh, drop_dir, peers, texter, on_paper)
            for cpr in (on_paper, texter.cpr):  # the connector's register follows the topic
                for _ in range(100):
                    if (await found.forespoerg("digitalpost", f"cprNumber={cpr}"))[1]["result"]:
                        break
                    await asyncio.sleep(0.2)
            yield found
        finally:
            await notifier.stop()


async def test_digital_post_is_delivered_digitally(channels: Channels) -> None:
    """Digital Post to a registered person: Result true, TransmissionID, DELIVERED."""
    xml = letter(REGISTERED_CPR)
    status, headers, answer = await channels.kombi("Digital Post", xml, transaction="tx-1")
    assert status == 200, answer
    root = read(answer)
    assert root.findtext("Result") == "true"
    assert root.findtext("TransmissionID") == uuid_of(xml)
    assert root.findtext("HovedoplysningerSvarREST/SvarReaktion/Advis/AdvisTekst") == "Received"
    assert root.findtext("HovedoplysningerSvarREST/TransaktionsId") == "tx-1"
    assert headers["X-TransaktionsId"] == "tx-1" and headers["X-DP2-Status"] == "SUBMITTED"
    trace = await channels.esdh.stack.wait_trace(uuid_of(xml), "DELIVERED")
    routed = next(e for e in trace["timeline"] if e["state"] == "ROUTED")
    assert routed["channel"] == "digital"


async def test_digital_post_never_falls_back_to_paper(channels: Channels) -> None:
    """Digital Post to an exempt or an unknown person: 422 with its reason, nothing sent."""
    for cpr in (EXEMPT_CPR, UNKNOWN_CPR):
        xml = letter(cpr, label="Kun digitalt")
        status, _, answer = await channels.kombi("Digital Post", xml)
        assert status == 422 and fault(answer) == "SF1601_RECIPIENT_NOT_DIGITAL", answer
        assert read(answer).findtext("Result") == "false"
        assert read(answer).findtext("hint"), "the answer says how to fix it"
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(channels.esdh.stack.trace, uuid_of(xml)) is None


async def test_fysisk_post_is_printed_even_for_a_registered_person(channels: Channels) -> None:
    """Fysisk Post to someone on digital post: ROUTED to print, PRINTED, the PDF dropped."""
    xml = letter(channels.on_paper_cpr, label="Brev på papir")
    status, _, answer = await channels.kombi("Fysisk Post", xml)
    assert status == 200 and read(answer).findtext("Result") == "true", answer
    message_uuid = uuid_of(xml)
    trace = await channels.esdh.stack.wait_trace(message_uuid, "PRINTED", timeout=60)
    routed = next(e for e in trace["timeline"] if e["state"] == "ROUTED")
    assert routed["channel"] == "print"
    assert "DELIVERED" not in [e["state"] for e in trace["timeline"]]
    assert (channels.drop_dir / f"{message_uuid}.pdf").exists()


async def test_automatisk_valg_is_digital_when_it_can_be_and_paper_when_not(
    channels: Channels,
) -> None:
    """Automatisk Valg: DELIVERED for a registered person, PRINTED for an exempt one."""
    digital, paper = letter(REGISTERED_CPR), letter(EXEMPT_CPR, label="Automatisk valg")
    for xml in (digital, paper):
        status, _, answer = await channels.kombi("Automatisk Valg", xml, path="memos")
        assert status == 200, answer
    await channels.esdh.stack.wait_trace(uuid_of(digital), "DELIVERED")
    await channels.esdh.stack.wait_trace(uuid_of(paper), "PRINTED", timeout=60)


async def test_nemsms_reaches_the_sms_provider(channels: Channels) -> None:
    """NemSMS with a NEMSMS message: DELIVERED, and the text itself at the SMS server."""
    phone = channels.texter.phone
    xml = text_message(channels.texter.cpr)
    status, _, answer = await channels.kombi("NemSMS", xml)
    assert status == 200, answer
    await channels.esdh.stack.wait_trace(uuid_of(xml), "DELIVERED")
    peers = channels.peers
    await until(
        lambda: any(s["text"] == NEMSMS_TEXT for s in peers.a.to(phone) + peers.b.to(phone)),
        what="the NemSMS at the SMS provider",
    )


async def test_nemsms_needs_a_nemsms_and_a_person_on_digital_post(channels: Channels) -> None:
    """A letter as NemSMS is a mismatch; a NemSMS to an exempt person is unavailable."""
    status, _, answer = await channels.kombi("NemSMS", letter(REGISTERED_CPR))
    assert status == 422 and fault(answer) == "SF1601_MESSAGE_TYPE_MISMATCH", answer
    status, _, answer = await channels.kombi("NemSMS", text_message(EXEMPT_CPR))
    assert status == 422 and fault(answer) == "SF1601_NEMSMS_UNAVAILABLE", answer


async def test_business_receipts_carry_ngdps_event_names(channels: Channels) -> None:
    """Receipts pushed to the case system name NgDP's events next to DP2's states."""
    digital, paper = letter(REGISTERED_CPR), letter(channels.on_paper_cpr, label="Kvittering")
    for code, xml in (("Digital Post", digital), ("Fysisk Post", paper)):
        status, _, answer = await channels.kombi(code, xml)
        assert status == 200, answer
    peer = channels.esdh.peer

    def named(message_uuid: str) -> dict[str, str | None]:
        return {
            r["state"]: r.get("ngdpEvent")
            for r in peer.receipts
            if r["messageUUID"] == message_uuid
        }

    await until(lambda: "DELIVERED" in named(uuid_of(digital)), what="DELIVERED receipt")
    await until(lambda: "PRINTED" in named(uuid_of(paper)), timeout=60, what="PRINTED receipt")
    assert named(uuid_of(digital))["DELIVERED"] == "MEMO_AVAILABLE_TO_RECIPIENT"
    assert named(uuid_of(digital))["ACCEPTED"] == "MEMO_SEND_VALIDATED"
    assert named(uuid_of(digital))["ROUTED"] is None, "no NgDP name fits ROUTED"
    assert named(uuid_of(paper))["PRINTED"] == "PHYSICAL_LETTER_SENT"


async def test_a_resend_is_answered_as_the_first_and_sends_nothing_more(
    channels: Channels,
) -> None:
    """The same kombi_request again: the same answer, DUPLICATE to DP2, one letter;
    the same message through another channel is a conflict."""
    xml = letter(REGISTERED_CPR, label="Sendt to gange")
    first = await channels.kombi("Digital Post", xml, transaction="first")
    again = await channels.kombi("Digital Post", xml, transaction="again")
    assert first[0] == again[0] == 200
    for element in ("Result", "TransmissionID", "HovedoplysningerSvarREST/SvarReaktion"):
        assert ET.tostring(read(first[2]).find(element)) == ET.tostring(
            read(again[2]).find(element)
        )
    assert again[1]["X-DP2-Status"] == "DUPLICATE"
    assert read(again[2]).findtext("HovedoplysningerSvarREST/TransaktionsId") == "again"
    trace = await channels.esdh.stack.wait_trace(uuid_of(xml), "DELIVERED")
    await asyncio.sleep(1.0)  # a second letter would be on its way now
    trace = await asyncio.to_thread(channels.esdh.stack.trace, uuid_of(xml))
    assert trace is not None
    states = [e["state"] for e in trace["timeline"]]
    assert states.count("SUBMITTED") == 1 and states.count("DELIVERED") == 1
    status, _, answer = await channels.kombi("Fysisk Post", xml)
    assert status == 409 and fault(answer) == "MEMO_UUID_REUSED", answer


async def test_only_this_authority_may_send(channels: Channels) -> None:
    """No token is 401, another authority's token 403, both in SF1601's shape; nothing sent."""
    xml = letter(REGISTERED_CPR, label="Uden adgang")
    for token, status, code in (
        ("", 401, "AUTHORITY_TOKEN_MISSING"),
        (channels.esdh.token("11111111"), 403, "AUTHORITY_TOKEN_WRONG_CVR"),
    ):
        answered, _, answer = await channels.kombi("Digital Post", xml, token=token)
        assert answered == status and fault(answer) == code, answer
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(channels.esdh.stack.trace, uuid_of(xml)) is None


async def test_requests_out_of_shape_get_their_reason(channels: Channels) -> None:
    """No transaction id, an unknown KombiValgKode, broken MeMo: each its code, and JSON
    when only JSON is accepted."""
    esdh = channels.esdh
    headers = {"authorization": f"Holder-of-key {esdh.token()}", "Content-Type": "text/xml"}
    async with esdh.session.post(
        f"{esdh.url}{KOMBI}/kombi",
        data=kombi_request("Digital Post", letter(REGISTERED_CPR)),
        headers=headers,
    ) as response:
        assert response.status == 400
        assert fault(await response.read()) == "SF1601_TRANSACTION_ID_MISSING"
    status, _, answer = await channels.kombi("Brevdue", letter(REGISTERED_CPR))
    assert status == 400 and fault(answer) == "SF1601_KOMBI_CODE_INVALID"
    broken = letter(REGISTERED_CPR).replace(b"<memo:label>", b"<memo:labl>", 1)
    status, _, answer = await channels.kombi(
        "Digital Post",
        broken.replace(b"</memo:label>", b"</memo:labl>", 1),
        accept="application/json",
    )
    body = json.loads(answer)
    assert status == 422 and body["Result"] is False and body["violations"], body
    assert body["HovedoplysningerSvarREST"]["SvarReaktion"]["Fejl"]["FejlId"] == body["reasonCode"]


async def test_postforespoerg_says_only_whether(channels: Channels) -> None:
    """digitalpost is true for a registered person and false for an exempt or unknown one,
    in exactly the same shape; nemsms likewise; a CVR gets no NemSMS."""
    for service, query, expected in (
        ("digitalpost", f"cprNumber={REGISTERED_CPR}", True),
        ("digitalpost", f"cprNumber={EXEMPT_CPR}", False),
        ("digitalpost", f"cprNumber={UNKNOWN_CPR}", False),
        ("digitalpost", f"cvrNumber={AUTHORITY_CVR}", True),
        ("nemsms", f"cprNumber={channels.texter.cpr}", True),
        ("nemsms", f"cprNumber={EXEMPT_CPR}", False),
        ("nemsms", f"cprNumber={UNKNOWN_CPR}", False),
        ("nemsms", f"cvrNumber={AUTHORITY_CVR}", False),
    ):
        status, body = await channels.forespoerg(service, query)
        assert (status, body) == (200, {"result": expected}), (service, query)
    status, body = await channels.forespoerg("digitalpost", "cprNumber=12345")
    assert status == 400 and body["reasonCode"] == "SF1601_BAD_IDENTIFIER"


async def test_postforespoerg_needs_the_authoritys_token(channels: Channels) -> None:
    """Without credentials PostForespoerg is 401; with another authority's token 403."""
    query = f"cprNumber={REGISTERED_CPR}"
    status, body = await channels.forespoerg("digitalpost", query, authorization="")
    assert status == 401 and body["reasonCode"] == "AUTHORITY_TOKEN_MISSING"
    other = f"Holder-of-key {channels.esdh.token('11111111')}"
    status, body = await channels.forespoerg("nemsms", query, authorization=other)
    assert status == 403 and body["reasonCode"] == "AUTHORITY_TOKEN_WRONG_CVR"
    assert "result" not in body


async def test_odd_requests_are_refused_never_a_server_error(channels: Channels) -> None:
    """Garbage bodies, bytes that are not UTF-8, odd queries and headers: 4xx, never 5xx."""
    esdh = channels.esdh
    auth = {"authorization": f"Holder-of-key {esdh.token()}", "X-TransaktionsId": "t"}
    for body, content_type in (
        (b"", "application/xml"),
        (b"\xff\xfe\x00<", "application/xml"),
        (b"<kombi_request/>", "application/json"),
        (kombi_request("NemSMS", b"<memo:Message xmlns:memo='x'/>"), "text/xml"),
    ):
        headers = {**auth, "Content-Type": content_type, "Accept": "*/*"}
        async with esdh.session.post(
            f"{esdh.url}{KOMBI}/memos", data=body, headers=headers
        ) as response:
            assert 400 <= response.status < 500, (body, response.status)
    for query in ("cprNumber=%FF%FE", "cprNumber=1&cprNumber=2", "cvrNumber=", "x=1"):
        async with esdh.session.get(
            f"{esdh.url}{FORESPOERG}/digitalpost?{query}", headers=auth
        ) as response:
            assert response.status == 400, (query, response.status)


async def test_openapi_describes_the_sf1601_routes_served(channels: Channels) -> None:
    """Every /sf1601 route the connector serves is in /openapi.json with its token, and
    nothing more."""
    status, document = await channels.esdh.get("/openapi.json")
    assert status == 200
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in channels.esdh.host._app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and route.resource.canonical.startswith("/sf1601/")
    }
    described = {
        (method, path)
        for path, operations in document["paths"].items()
        if path.startswith("/sf1601/")
        for method in operations
    }
    assert served == described and len(served) == 4
    for method, path in described:
        operation = document["paths"][path][method]
        assert operation["security"] == [{"authorityToken": []}]
        assert {"401", "403", "400"} <= set(operation["responses"])
