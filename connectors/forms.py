"""Self-service forms connector: a citizen's form submission becomes signed post.

Why it exists: municipalities' self-service forms (selvbetjeningsløsninger) today
end in e-mail inboxes or bespoke integrations. Here a form posts one submission;
the connector binds it to the citizen who is logged in (a bearer token, see
connectors.citizens), turns it into a MeMo message from that CPR number to the
authority — with FORMdata and KLE in ContentData so the ESDH can file it — and
sends it signed and encrypted. The answer is a receipt with the message UUID; the
ESDH connector journals it on the case.

    POST /forms/{cvr}/submissions      Authorization: Bearer <citizen token>
      application/json:     {"label", "text"?, "formData": {"taskKey", ...},
                             "kle"?: {"subjectKey", ...}, "caseID"?, "fields"?: {...},
                             "attachments"?: [{"filename", "mimeType", "content" (base64)}]}
      multipart/form-data:  a "submission" part with that JSON, plus file parts

Limits: 10 MB per submission (MeMo's citizen-to-authority limit); an authority may
allow up to 60 MB (``[connectors.forms.authorities."<cvr>"] max_bytes``), refused with
413 ``SUBMISSION_TOO_LARGE`` at once when Content-Length says so, else as soon as the
bytes read pass it (the body is read a piece at a time, never whole first). Nothing
reaches Kafka unless the whole submission is valid. Attachments' ``content`` is strict
base64 (``INVALID_BASE64``); file names follow the validator's rule
(``INVALID_FILENAME``, ``UNSAFE_FILENAME``); ``caseID`` must be a case id a journal
folder can be named after (``INVALID_CASE_ID``: not ``..``, no control characters).
"""

from __future__ import annotations

import io
import json
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import BodyPartReader, StreamReader, web
from aiokafka.errors import KafkaError

from brokers.contacts.register import ContactRegister
from brokers.runtime.records import iso_z
from brokers.runtime.tasks import AsyncResource
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from connectors.base import ConnectorContext, error_response
from connectors.citizen_openapi import forms_openapi
from connectors.citizens import Citizen, DevTokens, IdentityProvider, bearer, citizen_message
from connectors.sdk import UNNAMED_CASE_SYSTEM, Document, Dp2Client
from schemas import memo
from schemas.errors import ConfigError, Dp2Error
from schemas.models import CaseID, ContactStatus, ContentData, Envelope, FORMdata, KLEdata
from schemas.values import (
    FILENAME_FORBIDDEN_CATEGORIES,
    decode_base64_strict,
    filename_problem,
    is_ascii_digits,
)

log = structlog.get_logger("dp2.forms")

DEFAULT_MAX_BYTES = 10_000_000
CEILING_BYTES = 60_000_000
MAX_CASE_ID = 256  # MeMo's text limit


_STATUS = {
    "AUTH_REQUIRED": 401,
    "INVALID_TOKEN": 401,
    "TOKEN_EXPIRED": 401,
    "UNKNOWN_AUTHORITY": 404,
    "SUBMISSION_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "BACKBONE_UNAVAILABLE": 503,
}


class SubmissionError(Dp2Error):
    """A submission that cannot be turned into a message; nothing was sent."""

    reason_code = "INVALID_SUBMISSION"


def create(context: ConnectorContext) -> FormsConnector:
    return FormsConnector(context)


class FormsConnector(AsyncResource):
    """Connector + HttpConnector for self-service forms (see the module docstring)."""

    def __init__(
        self, context: ConnectorContext, identities: IdentityProvider | None = None
    ) -> None:
        self.name = context.name
        self._settings = context.settings
        self._identities = identities or DevTokens.from_home(context.settings.home)
        self._default_max = int(context.option("max_bytes", DEFAULT_MAX_BYTES))
        self._limits: dict[str, int] = {}
        for cvr, table in dict(context.option("authorities", {})).items():
            limit = int(table.get("max_bytes", self._default_max))
            if limit > CEILING_BYTES:
                raise ConfigError(
                    f"forms: authority {cvr} allows {limit} bytes, above MeMo's 60 MB",
                    hint="Set max_bytes to at most 60000000.",
                )
            self._limits[str(cvr)] = limit
        self._pseudonyms = Pseudonymizer(pseudonym_key(context.settings.home))
        self._contacts = ContactRegister(context.settings.kafka)
        self._client = Dp2Client.from_settings(
            context.settings,
            str(context.require("identity")),
            contacts=self._contacts,
            actor=f"connector:{context.name}",
        )
        self._started = False
        self.submitted = 0

    async def start(self) -> None:
        if not self._started:
            await self._contacts.start()
            await self._client.start()
            self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._client.stop()
            await self._contacts.stop()

    def health(self) -> Mapping[str, Any]:
        return {
            "check": "forms",
            "status": "ok" if self._started else "failing",
            "submitted": self.submitted,
        }

    def routes(self) -> Iterable[web.AbstractRouteDef]:
        return [
            web.post("/forms/{cvr}/submissions", self._submit),
            web.get("/openapi.json", self._openapi),
        ]

    def limit_for(self, cvr: str) -> int:
        return self._limits.get(cvr, self._default_max)

    async def _submit(self, request: web.Request) -> web.Response:
        try:
            body = await self._accept(request)
        except memo.MemoError as exc:
            return error_response(422, exc, exc.violations)
        except Dp2Error as exc:
            fallback = 503 if exc.retriable else (400 if isinstance(exc, SubmissionError) else 422)
            return error_response(_STATUS.get(exc.reason_code, fallback), exc)
        return web.json_response(body, status=202)

    async def _accept(self, request: web.Request) -> dict[str, Any]:
        """Authenticate, read, build, validate and send one submission (raises Dp2Error)."""
        citizen = self._identities.authenticate(bearer(request.headers.get("Authorization")))
        cvr = request.match_info["cvr"]
        if not is_ascii_digits(cvr, 8) or not self._is_registered(cvr):
            raise Dp2Error(
                "there is no authority on DP2 with that CVR number",
                reason_code="UNKNOWN_AUTHORITY",
                hint="Post to /forms/<the authority's 8-digit CVR>/submissions.",
            )
        limit = self.limit_for(cvr)
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        submission, files = await self._read(request, limit)
        message = _message(citizen, cvr, submission, files)
        violations = memo.validate(message, now=datetime.now(UTC))
        if violations:
            raise memo.MemoError(violations)
        try:
            receipt = await self._client.send(message)
        except (KafkaError, OSError) as exc:
            log.warning("submit_failed", error=repr(exc))
            raise Dp2Error(
                "the backbone did not take the submission; nothing was sent",
                reason_code="BACKBONE_UNAVAILABLE",
                hint="Submit again in a little while.",
            ) from exc
        self.submitted += 1
        log.info("form_submitted", message_id=receipt.message_uuid, token_id=citizen.token_id)
        return {
            "messageUUID": receipt.message_uuid,
            "status": "SUBMITTED",
            "authority": cvr,
            "submittedAt": iso_z(receipt.submitted_at, "auto"),
        }

    def _is_registered(self, cvr: str) -> bool:
        record = self._contacts.get(self._pseudonyms.ref("CVR", cvr))
        return record is not None and record.status is ContactStatus.REGISTERED

    async def _read(
        self, request: web.Request, limit: int
    ) -> tuple[dict[str, Any], list[Document]]:
        """The submission JSON and its files, refusing more than ``limit`` bytes in all."""
        if request.content_type == "application/json":
            raw = await _read_limited(request.content, limit)
            submission = _json_object(raw, "the request body")
            return submission, _inline_attachments(submission)
        if request.content_type != "multipart/form-data":
            raise SubmissionError(
                f"Content-Type {request.content_type!r} is not a form submission",
                reason_code="UNSUPPORTED_MEDIA_TYPE",
                hint="Send application/json, or multipart/form-data with a 'submission' part.",
            )
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:
            raise _bad_multipart(str(exc)) from exc
        found: dict[str, Any] | None = None
        files: list[Document] = []
        budget = limit
        while True:
            try:
                part = await reader.next()
            except (ValueError, AssertionError) as exc:
                raise _bad_multipart(str(exc)) from exc
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise _bad_multipart("nested multipart parts are not supported")
            data = await _read_limited(part, budget)
            budget -= len(data)
            if part.name == "submission" and part.filename is None:
                found = _json_object(data, "the 'submission' part")
            elif part.filename:
                files.append(
                    Document(
                        part.filename,
                        part.headers.get("Content-Type", "application/octet-stream"),
                        data,
                    )
                )
        if found is None:
            raise _bad_multipart("there is no 'submission' part with the form's JSON")
        return found, [*_inline_attachments(found), *files]

    async def _openapi(self, _: web.Request) -> web.Response:
        return web.json_response(forms_openapi())


async def _read_limited(stream: StreamReader | BodyPartReader, limit: int) -> bytes:
    """At most ``limit`` bytes of a request body or part (SubmissionError beyond), read
    a piece at a time into one buffer: refused as soon as the count passes the limit,
    and held once (not as pieces and their join)."""
    body = io.BytesIO()
    while True:
        if isinstance(stream, BodyPartReader):
            chunk = await stream.read_chunk(256 * 1024)
        else:
            chunk = await stream.read(256 * 1024)
        if not chunk:
            break
        if body.tell() + len(chunk) > limit:
            raise _too_large(limit)
        body.write(chunk)
    return body.getvalue()


def _too_large(limit: int) -> SubmissionError:
    return SubmissionError(
        f"the submission is larger than the {limit // 1_000_000} MB this authority accepts",
        reason_code="SUBMISSION_TOO_LARGE",
        hint="Attach fewer or smaller files.",
    )


def _bad_multipart(detail: str) -> SubmissionError:
    return SubmissionError(
        f"the multipart body cannot be read: {detail}",
        reason_code="MALFORMED_MULTIPART",
        hint="Send multipart/form-data with a boundary, a 'submission' JSON part and file parts.",
    )


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SubmissionError(
            f"{where} is not valid JSON",
            reason_code="MALFORMED_JSON",
            hint="Send one JSON object, UTF-8 encoded.",
        ) from exc
    if not isinstance(value, dict):
        raise SubmissionError(
            f"{where} is not a JSON object",
            reason_code="MALFORMED_JSON",
            hint='Send an object such as {"label": ..., "formData": {"taskKey": ...}}.',
        )
    return value


def _text(submission: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = submission.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SubmissionError(
            f"'{key}' must be a non-empty string",
            hint=f'Give \'{key}\' as text, e.g. "{key}": "...".',
        )
    return value


def _inline_attachments(submission: Mapping[str, Any]) -> list[Document]:
    listed = submission.get("attachments", [])
    if not isinstance(listed, list):
        raise SubmissionError("'attachments' must be a list", hint="Send a list of objects.")
    documents = []
    for n, item in enumerate(listed, start=1):
        if not isinstance(item, dict):
            raise SubmissionError(
                f"attachment {n} is not an object", hint="See the API description."
            )
        name = _text(item, "filename", required=True)
        mime = _text(item, "mimeType") or "application/octet-stream"
        content = item.get("content", "")
        try:
            data = decode_base64_strict(content if isinstance(content, str) else "")
        except ValueError as exc:
            raise SubmissionError(
                f"attachment {n}'s content is not standard base64 with canonical padding",
                reason_code="INVALID_BASE64",
                hint="Encode each attachment's bytes as standard base64 (RFC 4648): the "
                "alphabet A-Z a-z 0-9 + /, padded with = to a multiple of 4, no line breaks.",
            ) from exc
        assert name is not None  # noqa: S101 - required above
        documents.append(Document(name, mime, data))
    return documents


def _check_case_id(case_id: str) -> None:
    """A case id names the case folder of the ESDH's journal: refuse one that cannot.

    Slashes and other characters are fine (``24/1234``; the journal makes them ``_``),
    but not a name a file system reads as a folder (``.``, ``..``), control characters,
    or more than MeMo's 256 characters.
    """
    odd = any(
        unicodedata.category(c) in FILENAME_FORBIDDEN_CATEGORIES and c != " " for c in case_id
    )
    if set(case_id) <= {".", " "} or len(case_id) > MAX_CASE_ID or odd:
        raise SubmissionError(
            "'caseID' is not a case id a case system can file on",
            reason_code="INVALID_CASE_ID",
            hint='Give the case\'s own number, e.g. "SAG-2026-0042" or "24/1234": at '
            "most 256 characters, not only dots, no control characters or line breaks.",
        )


def _message(
    citizen: Citizen, cvr: str, submission: Mapping[str, Any], files: list[Document]
) -> Envelope:
    label = _text(submission, "label", required=True)
    form = submission.get("formData")
    if not isinstance(form, dict):
        raise SubmissionError(
            "'formData' with the form's taskKey is missing",
            hint='Add "formData": {"taskKey": "<the FORM task key>"}.',
        )
    kle = submission.get("kle")
    if kle is not None and not isinstance(kle, dict):
        raise SubmissionError("'kle' must be an object", hint='Send {"subjectKey": "..."}.')
    fields = submission.get("fields", {})
    if not isinstance(fields, dict):
        raise SubmissionError("'fields' must be an object", hint="Send name/value pairs.")
    case_id = _text(submission, "caseID")
    if case_id is not None:
        _check_case_id(case_id)
    for document in files:
        problem = filename_problem(document.filename)
        if problem is not None:
            raise SubmissionError(
                problem.message,
                reason_code=problem.code,
                hint="Name every file like bilag.pdf: no empty or dot-only names, no "
                '< > : " / \\ | ? *, line breaks, control characters or unusual spaces.',
            )
    content = ContentData(
        formData=FORMdata(
            # MeMo's FORMdata and KLEdata require version and label (the XSD).
            taskKey=str(_text(form, "taskKey", required=True)),
            version=_text(form, "version", required=True),
            activityFacet=_text(form, "activityFacet"),
            label=_text(form, "label", required=True),
        ),
        kleData=KLEdata(
            subjectKey=str(_text(kle, "subjectKey", required=True)),
            version=_text(kle, "version", required=True),
            activityFacet=_text(kle, "activityFacet"),
            label=_text(kle, "label", required=True),
        )
        if kle
        else None,
        caseID=CaseID(caseID=case_id, caseSystem=UNNAMED_CASE_SYSTEM) if case_id else None,
    )
    text = _text(submission, "text") or ""
    lines = [str(label), "", text, ""] + [f"{k}: {v}" for k, v in fields.items()]
    rendered = Document("formular.txt", "text/plain", "\n".join(lines).strip().encode())
    data = Document(
        "formular.json",
        "application/json",
        json.dumps({"fields": fields, "text": text}, ensure_ascii=False).encode(),
        label="Formularens data",
    )
    assert label is not None  # noqa: S101 - required above
    return citizen_message(
        cpr=citizen.cpr,
        authority_cvr=cvr,
        label=label,
        main=[rendered],
        attachments=[data, *files],
        content_data=content,
    )
