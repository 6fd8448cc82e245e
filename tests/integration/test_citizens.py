"""Citizen-facing connectors end to end: self-service forms and the mailbox-app API.

Real parts only: the session's Kafka and stack, the ESDH connector with a local
case system (conftest), the forms and apps connectors in-process over real HTTP,
citizens identified by development bearer tokens.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from brokers.contacts.records import read_contact_file
from brokers.contacts.register import publish_contacts
from brokers.runtime.host import ServiceHost
from brokers.security import sealing
from brokers.stack.access import REGISTER_IDENTITY
from brokers.stack.registry import build_service
from connectors.citizen_openapi import apps_openapi, forms_openapi
from connectors.citizens import DevTokens
from connectors.sdk import Document, build_message
from schemas import memo
from schemas.models import BlobContent, CaseID, ContentData
from tests.integration.conftest import (
    AUTHORITY_CVR,
    PROVIDER,
    REGISTERED_CPR,
    Esdh,
    Stack,
)

pytestmark = [pytest.mark.kafka]

CONSENTING_CPR = "0202021234"  # registered at the mailbox, consents to read receipts
RELATIVE_CPR = "0303031234"  # given read access by CONSENTING_CPR
STRANGER_CPR = "0404041234"  # another citizen, registered too
FORM_CITIZEN_CPR = "0505051234"


@dataclass
class Citizens:
    forms: ServiceHost
    apps: ServiceHost
    esdh: Esdh
    stack: Stack
    tokens: DevTokens
    session: aiohttp.ClientSession

    def url(self, host: ServiceHost, path: str) -> str:
        assert host.url is not None
        return f"{host.url}{path}"

    def auth(self, cpr: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens.issue(cpr)}"}

    async def call(
        self, method: str, host: ServiceHost, path: str, cpr: str | None, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = {**kwargs.pop("headers", {}), **(self.auth(cpr) if cpr else {})}
        async with self.session.request(
            method, self.url(host, path), headers=headers, **kwargs
        ) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.read()

    async def letter(
        self,
        cpr: str,
        *,
        label: str,
        case_id: str,
        reply: bool = True,
        document: Document | None = None,
    ) -> str:
        """An authority's letter to ``cpr``, sent through the ESDH connector, DELIVERED."""
        message = build_message(
            sender_cvr=AUTHORITY_CVR,
            sender_label="Aarhus Kommune",
            recipient_id=cpr,
            label=label,
            documents=[document or Document("brev.txt", "text/plain", f"Brev om {label}".encode())],
        )
        header = replace(
            message.header,
            reply=reply,
            contentData=ContentData(caseID=CaseID(caseID=case_id, caseSystem="SBSYS")),
        )
        status, body = await self.esdh.post(memo.to_xml(replace(message, header=header)))
        assert status == 202, body
        await self.stack.wait_trace(body["messageUUID"], "DELIVERED")
        return str(body["messageUUID"])


def _append_config(home: Path, text: str) -> None:
    path = home / "connectors.toml"
    path.write_text((path.read_text() if path.exists() else "") + "\n" + text)


@pytest.fixture(scope="module")
async def citizens(
    stack: Stack, esdh: Esdh, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Citizens]:
    """The forms and apps connectors, with citizens registered at the reference mailbox."""
    stack.pki.issue_provider("forms", citizen_gateway=True)
    register = tmp_path_factory.mktemp("citizens") / "contacts.json"
    register.write_text(
        json.dumps(
            [
                {
                    "id": cpr,
                    "idType": "CPR",
                    "status": "REGISTERED",
                    "provider": PROVIDER,
                    "name": name,
                    "readReceiptsConsent": consent,
                }
                for cpr, name, consent in (
                    (CONSENTING_CPR, "Bo Hansen", True),
                    (STRANGER_CPR, "Eva Berg", False),
                )
            ]
        )
    )
    await publish_contacts(
        stack.kafka(REGISTER_IDENTITY), read_contact_file(register, stack.pseudonyms)
    )
    _append_config(
        stack.settings.home,
        '[connectors.forms]\nidentity = "provider-forms"\n'
        f'[connectors.forms.authorities."{AUTHORITY_CVR}"]\nmax_bytes = 20000000\n'
        f'[connectors.apps]\nmailbox = "{PROVIDER}"\n',
    )
    await stack.apply_acls()  # the new provider and connectors get their rights, as in dp2 up
    suffix = f".{uuid.uuid4().hex[:8]}"
    forms = await build_service("connector", stack.settings, connector="forms", group_suffix=suffix)
    apps = await build_service("connector", stack.settings, connector="apps", group_suffix=suffix)
    await forms.start()
    await apps.start()
    await asyncio.sleep(1)  # their registers catch up
    async with aiohttp.ClientSession() as session:
        try:
            yield Citizens(
                forms, apps, esdh, stack, DevTokens.from_home(stack.settings.home), session
            )
        finally:
            await apps.stop()
            await forms.stop()


def _journal_entry(citizens: Citizens, message_uuid: str) -> dict[str, Any] | None:
    return next((j for j in citizens.esdh.peer.journal if j["messageUUID"] == message_uuid), None)


# --- forms ----------------------------------------------------------------------------
SUBMISSION = {
    "label": "Ansøgning om parkeringstilladelse",
    "text": "Jeg søger om en beboerparkeringstilladelse.",
    "formData": {"taskKey": "FORM-PARK-01", "version": "2", "label": "Beboerparkering"},
    "kle": {"subjectKey": "05.13.08", "version": "2.0", "label": "Parkering"},
    "caseID": "SAG-FORM-0001",
    "fields": {"Nummerplade": "AB 12 345", "Adresse": "Vestergade 1"},
}


async def test_a_form_submission_is_journaled_on_its_case(citizens: Citizens) -> None:
    """A JSON form becomes a signed message with FORMdata/KLE, journaled on its case."""
    status, body = await citizens.call(
        "POST",
        citizens.forms,
        f"/forms/{AUTHORITY_CVR}/submissions",
        FORM_CITIZEN_CPR,
        json=SUBMISSION,
    )
    assert status == 202, body
    message_uuid = body["messageUUID"]
    await citizens.stack.wait_trace(message_uuid, "JOURNALED")
    entry = _journal_entry(citizens, message_uuid)
    assert entry is not None and entry["caseID"] == "SAG-FORM-0001"
    journaled = memo.parse(entry["memo"].encode())
    header = journaled.header
    assert header.sender.senderID == FORM_CITIZEN_CPR and header.sender.idType.value == "CPR"
    assert header.contentData is not None and header.contentData.formData is not None
    assert header.contentData.formData.taskKey == "FORM-PARK-01"
    assert header.contentData.kleData is not None
    assert header.contentData.kleData.subjectKey == "05.13.08"
    assert journaled.body is not None
    main = journaled.body.mainDocument.file[0].content
    assert b"AB 12 345" in getattr(main, "data", b"")


async def test_a_multipart_submission_carries_its_attachments(citizens: Citizens) -> None:
    """A multipart form with a file arrives at the ESDH with that file as an attachment."""
    form = aiohttp.FormData()
    form.add_field(
        "submission",
        json.dumps({**SUBMISSION, "caseID": "SAG-FORM-0002"}),
        content_type="application/json",
    )
    form.add_field(
        "bilag", b"%PDF-1.4 tegning", filename="tegning.pdf", content_type="application/pdf"
    )
    status, body = await citizens.call(
        "POST",
        citizens.forms,
        f"/forms/{AUTHORITY_CVR}/submissions",
        FORM_CITIZEN_CPR,
        data=form,
    )
    assert status == 202, body
    await citizens.stack.wait_trace(body["messageUUID"], "JOURNALED")
    entry = _journal_entry(citizens, body["messageUUID"])
    assert entry is not None and entry["caseID"] == "SAG-FORM-0002"
    journaled = memo.parse(entry["memo"].encode())
    assert journaled.body is not None
    attached = [f for d in journaled.body.additionalDocument for f in d.file]
    assert [f.filename for f in attached][-1] == "tegning.pdf"
    assert getattr(attached[-1].content, "data", b"") == b"%PDF-1.4 tegning"


async def test_bad_submissions_get_their_error_and_nothing_reaches_kafka(
    citizens: Citizens,
) -> None:
    """Each bad submission gets its code; none is sent; a good one afterwards is."""
    cpr = "0606061234"
    path = f"/forms/{AUTHORITY_CVR}/submissions"
    big = {
        **SUBMISSION,
        "attachments": [
            {"filename": "stor.bin", "content": base64.b64encode(b"x" * 21_000_000).decode()}
        ],
    }
    no_boundary = {"data": b"--xyz\r\n", "headers": {"Content-Type": "multipart/form-data"}}
    no_submission = {
        "data": b'--xyz\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--xyz--\r\n',
        "headers": {"Content-Type": "multipart/form-data; boundary=xyz"},
    }
    cases: list[tuple[str | None, str, dict[str, Any], int, str]] = [
        (
            cpr,
            path,
            {
                "data": io.BytesIO(json.dumps(big).encode()),
                "headers": {"Content-Type": "application/json"},
            },
            413,
            "SUBMISSION_TOO_LARGE",
        ),
        (
            cpr,
            path,
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "MALFORMED_JSON",
        ),
        (cpr, path, no_boundary, 400, "MALFORMED_MULTIPART"),
        (cpr, path, no_submission, 400, "MALFORMED_MULTIPART"),
        (
            cpr,
            path,
            {"data": b"x", "headers": {"Content-Type": "text/plain"}},
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
        (cpr, path, {"json": {**SUBMISSION, "formData": None}}, 400, "INVALID_SUBMISSION"),
        (cpr, path, {"json": {**SUBMISSION, "label": "x" * 300}}, 422, "MEMO_TEXT_TOO_LONG"),
        (cpr, "/forms/12345678/submissions", {"json": SUBMISSION}, 404, "UNKNOWN_AUTHORITY"),
        (None, path, {"json": SUBMISSION}, 401, "AUTH_REQUIRED"),
        (
            None,
            path,
            {"json": SUBMISSION, "headers": {"Authorization": "Bearer dp2c.x.y"}},
            401,
            "INVALID_TOKEN",
        ),
    ]
    before = len(citizens.esdh.peer.journal)
    for who, where, kwargs, status, code in cases:
        got, body = await citizens.call("POST", citizens.forms, where, who, **kwargs)
        codes = {body["reasonCode"], *(v["code"] for v in body.get("violations", []))}
        assert got == status and code in codes, body
        assert body["hint"]
    expired = citizens.tokens.issue(cpr, ttl=timedelta(seconds=-1))
    got, body = await citizens.call(
        "POST",
        citizens.forms,
        path,
        None,
        json=SUBMISSION,
        headers={"Authorization": f"Bearer {expired}"},
    )
    assert (got, body["reasonCode"]) == (401, "TOKEN_EXPIRED")

    status, body = await citizens.call("POST", citizens.forms, path, cpr, json=SUBMISSION)
    assert status == 202, body
    await citizens.stack.wait_trace(body["messageUUID"], "JOURNALED")
    ref = citizens.stack.pseudonyms.ref("CPR", cpr)
    async with citizens.session.get(
        f"{citizens.stack.tracing_url}/messages",
        params={"sender": ref},
        headers={"Authorization": f"Bearer {citizens.stack.operator_token()}"},
    ) as response:
        sent = (await response.json())["items"]
    assert [m["messageUUID"] for m in sent] == [body["messageUUID"]], "only the good one went"
    assert len(citizens.esdh.peer.journal) == before + 1


# --- mailbox apps ---------------------------------------------------------------------
async def _wait_listed(citizens: Citizens, cpr: str, message_uuid: str) -> dict[str, Any]:
    async def listed() -> dict[str, Any] | None:
        _, page = await citizens.call("GET", citizens.apps, "/mailboxes/me/messages", cpr)
        return next((m for m in page["items"] if m["messageUUID"] == message_uuid), None)

    deadline = asyncio.get_running_loop().time() + 20
    while (found := await listed()) is None:
        assert asyncio.get_running_loop().time() < deadline, "the letter never reached the app"
        await asyncio.sleep(0.2)
    return found


async def test_a_big_document_is_streamed_from_the_mailbox_folder_checked(
    citizens: Citizens,
) -> None:
    """A 700 KB document, which the mailbox keeps in its own folder by reference, is listed
    with its size and served byte for byte; changed in the folder, it is never served
    whole (the connection is cut before its last piece)."""
    data = os.urandom(700_000)  # over the claim-check threshold, under aiohttp's 1 MiB body
    letter = await citizens.letter(
        CONSENTING_CPR,
        label="Stort bilag",
        case_id="SAG-APP-0009",
        document=Document("bilag.pdf", "application/pdf", data),
    )
    mailbox = citizens.stack.mailbox_store()
    stored = mailbox.get(letter)
    assert stored is not None
    [file] = sealing.files_of(stored.body)
    assert isinstance(file.content, BlobContent) and file.nonce is None, "kept by reference"
    status, detail = await citizens.call(
        "GET", citizens.apps, f"/mailboxes/me/messages/{letter}", CONSENTING_CPR
    )
    assert status == 200 and detail["files"][0]["size"] == len(data)
    path = f"/mailboxes/me/messages/{letter}/files/0"
    status, content = await citizens.call("GET", citizens.apps, path, CONSENTING_CPR)
    assert status == 200 and content == data

    kept = mailbox.documents.path_of(file.content.ref)
    damaged = bytearray(kept.read_bytes())
    damaged[100] ^= 0xFF
    kept.write_bytes(bytes(damaged))
    with pytest.raises(aiohttp.ClientPayloadError):
        await citizens.call("GET", citizens.apps, path, CONSENTING_CPR)
    kept.write_bytes(data)  # put right: served again
    status, content = await citizens.call("GET", citizens.apps, path, CONSENTING_CPR)
    assert status == 200 and content == data


async def test_the_app_lists_reads_and_replies_and_the_reply_is_journaled(
    citizens: Citizens,
) -> None:
    """List, read (READ with consent), reply: the reply is journaled on the letter's case."""
    letter = await citizens.letter(
        CONSENTING_CPR, label="Partshøring om byggeri", case_id="SAG-APP-0001"
    )
    listed = await _wait_listed(citizens, CONSENTING_CPR, letter)
    assert listed["label"] == "Partshøring om byggeri" and listed["read"] is False
    status, detail = await citizens.call(
        "GET", citizens.apps, f"/mailboxes/me/messages/{letter}", CONSENTING_CPR
    )
    assert status == 200 and detail["replyAllowed"] is True
    status, content = await citizens.call(
        "GET", citizens.apps, f"/mailboxes/me/messages/{letter}/files/0", CONSENTING_CPR
    )
    assert status == 200 and content == "Brev om Partshøring om byggeri".encode()
    status, read = await citizens.call(
        "POST", citizens.apps, f"/mailboxes/me/messages/{letter}/read", CONSENTING_CPR
    )
    assert status == 200 and read["readReceiptSent"] is True
    await citizens.stack.wait_trace(letter, "READ")

    status, reply = await citizens.call(
        "POST",
        citizens.apps,
        f"/mailboxes/me/messages/{letter}/replies",
        CONSENTING_CPR,
        json={"text": "Jeg har ingen indvendinger."},
    )
    assert status == 202, reply
    await citizens.stack.wait_trace(reply["messageUUID"], "JOURNALED")
    entry = _journal_entry(citizens, reply["messageUUID"])
    assert entry is not None
    assert entry["caseID"] == "SAG-APP-0001" and entry["replyTo"] == letter
    await citizens.stack.wait_trace(letter, "REPLIED")


async def test_read_appears_in_the_trace_only_with_consent(citizens: Citizens) -> None:
    """A citizen without read-receipt consent reads; the trace gets no READ."""
    letter = await citizens.letter(REGISTERED_CPR, label="Orientering", case_id="SAG-APP-0002")
    await _wait_listed(citizens, REGISTERED_CPR, letter)
    status, read = await citizens.call(
        "POST", citizens.apps, f"/mailboxes/me/messages/{letter}/read", REGISTERED_CPR
    )
    assert status == 200 and read["readReceiptSent"] is False
    # A later event on the same message proves the trace is up to date when we look.
    status, _ = await citizens.call(
        "POST",
        citizens.apps,
        f"/mailboxes/me/messages/{letter}/replies",
        REGISTERED_CPR,
        json={"text": "Tak."},
    )
    assert status == 202
    doc = await citizens.stack.wait_trace(letter, "REPLIED")
    assert "READ" not in [e["state"] for e in doc["timeline"]]


async def test_a_delegate_reads_cannot_act_and_loses_access_at_once(citizens: Citizens) -> None:
    """A relative with read access lists and reads, cannot act, and loses access at once."""
    letter = await citizens.letter(CONSENTING_CPR, label="Ny sag", case_id="SAG-APP-0003")
    await _wait_listed(citizens, CONSENTING_CPR, letter)
    status, granted = await citizens.call(
        "POST", citizens.apps, "/access", CONSENTING_CPR, json={"delegateCpr": RELATIVE_CPR}
    )
    assert status == 201, granted
    status, access = await citizens.call("GET", citizens.apps, "/access", RELATIVE_CPR)
    mailbox = access["received"][0]["mailbox"]
    assert mailbox == granted["mailbox"]

    status, page = await citizens.call(
        "GET", citizens.apps, f"/mailboxes/{mailbox}/messages", RELATIVE_CPR
    )
    assert status == 200 and letter in [m["messageUUID"] for m in page["items"]]
    status, detail = await citizens.call(
        "GET", citizens.apps, f"/mailboxes/{mailbox}/messages/{letter}", RELATIVE_CPR
    )
    assert status == 200 and detail["replyAllowed"] is False
    for action, kwargs in (("read", {}), ("replies", {"json": {"text": "Hej"}})):
        status, body = await citizens.call(
            "POST",
            citizens.apps,
            f"/mailboxes/{mailbox}/messages/{letter}/{action}",
            RELATIVE_CPR,
            **kwargs,
        )
        assert (status, body["reasonCode"]) == (403, "READ_ONLY_ACCESS")

    status, _ = await citizens.call(
        "DELETE", citizens.apps, f"/access/{granted['delegate']}", CONSENTING_CPR
    )
    assert status == 200
    for path in (f"/mailboxes/{mailbox}/messages", f"/mailboxes/{mailbox}/messages/{letter}"):
        status, body = await citizens.call("GET", citizens.apps, path, RELATIVE_CPR)
        assert status == 404, body

    status, audit = await citizens.call("GET", citizens.apps, "/audit", CONSENTING_CPR)
    relative = citizens.stack.pseudonyms.ref("CPR", RELATIVE_CPR)
    outcomes = [(e["actor"], e["action"], e["outcome"]) for e in audit["entries"]]
    assert (relative, "read-message", "ok") in outcomes
    assert (relative, "reply", "refused:READ_ONLY_ACCESS") in outcomes
    assert (relative, "list", "refused:UNKNOWN_MAILBOX") in outcomes
    assert RELATIVE_CPR not in json.dumps(audit), "the audit shows pseudonyms"


async def test_one_citizens_token_never_reaches_anothers_post(citizens: Citizens) -> None:
    """Citizen B, on every endpoint, with A's message and mailbox ids, gets nothing of A's."""
    letter = await citizens.letter(CONSENTING_CPR, label="Fortroligt", case_id="SAG-APP-0004")
    await _wait_listed(citizens, CONSENTING_CPR, letter)
    owner = citizens.stack.pseudonyms.ref("CPR", CONSENTING_CPR)
    for mailbox in ("me", owner):
        requests: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", f"/mailboxes/{mailbox}/messages", {}),
            ("GET", f"/mailboxes/{mailbox}/messages/{letter}", {}),
            ("GET", f"/mailboxes/{mailbox}/messages/{letter}/files/0", {}),
            ("POST", f"/mailboxes/{mailbox}/messages/{letter}/read", {}),
            ("POST", f"/mailboxes/{mailbox}/messages/{letter}/replies", {"json": {"text": "x"}}),
        ]
        for method, path, kwargs in requests:
            status, body = await citizens.call(method, citizens.apps, path, STRANGER_CPR, **kwargs)
            if status == 200:  # only B's own (empty of A's) list may answer
                assert mailbox == "me" and path.endswith("/messages"), (path, body)
                assert letter not in json.dumps(body)
            else:
                assert status == 404, (method, path, status, body)
    status, body = await citizens.call(
        "DELETE",
        citizens.apps,
        f"/access/{citizens.stack.pseudonyms.ref('CPR', RELATIVE_CPR)}",
        STRANGER_CPR,
    )
    assert status == 404
    doc = await citizens.stack.wait_trace(letter, "DELIVERED")
    assert "READ" not in [e["state"] for e in doc["timeline"]]


# --- the APIs' descriptions -----------------------------------------------------------
@pytest.mark.parametrize("which", ["forms", "apps"])
async def test_openapi_describes_exactly_the_routes_served(citizens: Citizens, which: str) -> None:
    """Every route served is in /openapi.json, and nothing else is."""
    host = citizens.forms if which == "forms" else citizens.apps
    expected = forms_openapi() if which == "forms" else apps_openapi()
    status, served_doc = await citizens.call("GET", host, "/openapi.json", None)
    assert status == 200 and served_doc == expected
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in host._app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    described = {
        (method, path) for path, operations in expected["paths"].items() for method in operations
    }
    assert served == described


@pytest.mark.slow
@pytest.mark.parametrize("which", ["forms", "apps"])
async def test_schemathesis_finds_no_server_error(
    citizens: Citizens, which: str, tmp_path: Path
) -> None:
    """Generated requests, with and without a valid token, never get a 5xx."""
    host = citizens.forms if which == "forms" else citizens.apps
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is a test dependency (pyproject.toml)"
    process = await asyncio.create_subprocess_exec(
        schemathesis,
        "run",
        citizens.url(host, "/openapi.json"),
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "30",
        "--seed",
        "2026",
        "--workers",
        "1",
        "--header",
        f"Authorization: Bearer {citizens.tokens.issue(STRANGER_CPR)}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await process.communicate()
    report = output.decode()
    assert process.returncode == 0, report[-4000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", report)
    assert generated and int(generated[1]) >= 50 and generated[1] == generated[2], report[-2000:]
