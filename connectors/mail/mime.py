"""E-mail to MeMo and back: the decisions of the mail connector, as pure functions.

Why a module of its own: what becomes the label, the case, the reply link, the
letter and its attachments is where a mail gateway loses or mangles things, so it
is decided here over bytes and values and tested without a server.

A citizen's mail (``read_mail``, then ``citizen_envelope`` per authority):

- ``Subject`` is the label; a tag ``[sag:SAG-2026-0042]`` (or ``[case:...]``) is the
  ContentData CaseID and is taken out of the label; no subject: "Besked fra borger".
  A label over MeMo's 256 characters is refused (MEMO_TEXT_TOO_LONG), not cut.
- The text/plain body is the MainDocument's file ``besked.txt``; a text/html
  alternative is a second file ``besked.html`` of the same MainDocument (MeMo's
  File list holds renderings of one document, and it takes no attachment's place).
- Every other part — attachments, inline images, an enclosed mail (``.eml``) — is an
  AdditionalDocument with its bytes as sent and a file name MeMo accepts.
- ``In-Reply-To`` (else the last of ``References``) naming ``<message-uuid@domain>``
  is the ReplyData: the authority's ESDH files the answer with the letter it answers.

A letter to a citizen (``forward_mail``): ``full`` — the main text as the body,
every file attached, the label as subject; ``notice`` — only who sent it (and the
label if the sender marked it non-sensitive), in the citizen's language. Both have
``Message-ID: <uuid@domain>`` and, from an authority, ``Reply-To: <cvr>@<domain>``,
so answering in the mail client threads back to the letter.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from email.utils import formatdate
from typing import Literal

from brokers.security.sealing import files_of
from connectors.citizens import citizen_message
from connectors.notify.templates import render
from connectors.sdk import UNNAMED_CASE_SYSTEM, Document
from schemas.errors import Dp2Error
from schemas.memo_rules import NOT_XML
from schemas.models import CaseID, ContentData, Envelope, File, IdType, InlineContent, ReplyData
from schemas.values import FILENAME_FORBIDDEN_CATEGORIES

Mode = Literal["full", "notice", "off"]
MODES: tuple[Mode, ...] = ("full", "notice", "off")
DEFAULT_LABEL = "Besked fra borger"
CITIZEN_LABEL = "Borger"  # the sender's name would travel in the clear header; the CPR identifies
TEXT_FILE, HTML_FILE = "besked.txt", "besked.html"
_CASE_TAG = re.compile(r"\[\s*(?:sag|case)\s*:\s*([^\]\s][^\]]*?)\s*\]", re.IGNORECASE)
_MESSAGE_REF = re.compile(r"<([0-9a-fA-F-]{36})@([^<>\s]+)>")
_FORBIDDEN = frozenset('<>:"/\\|?*\r\n')
_MAX_FILENAME = 200  # under MeMo's 256, leaving room for a suffix


class MailError(Dp2Error):
    """A mail that cannot become a DP2 message; nothing was sent."""

    reason_code = "MAIL_UNREADABLE"
    hint = "Send the mail again as an ordinary text or HTML message with attachments."


@dataclass(frozen=True, slots=True)
class Mail:
    """What DP2 takes from a citizen's mail (the same for every authority it is sent to)."""

    label: str
    case_id: str | None
    reply_to: str | None
    text: str | None
    html: str | None
    attachments: tuple[Document, ...]

    @property
    def size(self) -> int:
        """Bytes of documents, as the validator counts them against the citizen limit."""
        body = len((self.text or "").encode()) + len((self.html or "").encode())
        return body + sum(len(d.data) for d in self.attachments)


def read_mail(raw: bytes, domain: str) -> Mail:
    """The label, case, reply link, body and attachments of a mail as it came over SMTP."""
    try:
        message = BytesParser(policy=policy.default).parsebytes(raw)
        subject = _one_line(NOT_XML.sub(" ", str(message.get("Subject", "")))) or ""
        plain = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        chosen = {id(part) for part in (plain, html) if part is not None}
        attachments = tuple(
            _attachment(part, n)
            for n, part in enumerate((p for p in _leaves(message) if id(p) not in chosen), start=1)
        )
        references = [
            str(message.get("In-Reply-To", "")),
            *reversed(str(message.get("References", "")).split()),
        ]
    except (ValueError, TypeError, LookupError, IndexError) as exc:
        raise MailError(f"the mail cannot be read ({type(exc).__name__})") from exc
    case_id = None
    found = _CASE_TAG.search(subject)
    if found:
        case_id = found.group(1)
        subject = _one_line(subject[: found.start()] + subject[found.end() :]) or ""
    return Mail(
        label=subject or DEFAULT_LABEL,
        case_id=case_id,
        reply_to=_replied_message(references, domain),
        text=_text_of(plain) if plain is not None else None,
        html=_text_of(html) if html is not None else None,
        attachments=attachments,
    )


def citizen_envelope(
    mail: Mail, *, cpr: str, cvr: str, message_uuid: str, now: datetime
) -> Envelope:
    """The plain MeMo 1.2 message from the citizen ``cpr`` to the authority ``cvr``."""
    main: list[Document] = []
    if mail.text is not None or mail.html is None:  # a mail of attachments only: empty text
        main.append(Document(TEXT_FILE, "text/plain", (mail.text or "").encode()))
    if mail.html is not None:
        main.append(Document(HTML_FILE, "text/html", mail.html.encode()))
    return citizen_message(
        cpr=cpr,
        authority_cvr=cvr,
        label=mail.label,
        main=main,
        attachments=mail.attachments,
        content_data=ContentData(caseID=CaseID(caseID=mail.case_id, caseSystem=UNNAMED_CASE_SYSTEM))
        if mail.case_id
        else None,
        reply_data=[ReplyData(messageUUID=mail.reply_to)] if mail.reply_to else [],
        sender_label=CITIZEN_LABEL,
        message_uuid=message_uuid,
        created=now,
    )


def safe_filename(name: str | None, fallback: str) -> str:
    """``name`` with what MeMo forbids replaced by ``_``; ``fallback`` when nothing is left."""
    cleaned = "".join(
        "_"
        if char in _FORBIDDEN
        or (unicodedata.category(char) in FILENAME_FORBIDDEN_CATEGORIES and char != " ")
        else char
        for char in NOT_XML.sub("_", name or "")
    ).strip()
    if not cleaned.strip("._ "):
        cleaned = fallback
    if len(cleaned) > _MAX_FILENAME:
        stem, dot, suffix = cleaned.rpartition(".")
        if dot and 0 < len(suffix) <= 16:
            cleaned = stem[: _MAX_FILENAME - len(suffix) - 1] + "." + suffix
        else:
            cleaned = cleaned[:_MAX_FILENAME]
    return cleaned


#: What a ``notice`` says when the citizen chose ``full`` but the letter's files are
#: over the connector's ``attach_max_bytes`` (mail relays cap a mail's size).
TOO_LARGE = {
    "da": "Brevet er for stort til at blive sendt som e-mail ({mb:.0f} MB).",
    "en": "The letter is too large to be sent by e-mail ({mb:.0f} MB).",
}


def forward_mail(
    letter: Envelope,
    *,
    mode: Mode,
    to: str,
    from_address: str,
    domain: str,
    language: str = "da",
    read: Callable[[File], bytes] | None = None,
    too_large_bytes: int | None = None,
) -> EmailMessage:
    """A letter as e-mail to its recipient: the whole letter (``full``) or a ``notice``.

    ``read`` gives a file's bytes (connectors.documents, for files kept by reference);
    without it every file must be inline. ``too_large_bytes``: the notice says the
    letter (of that many bytes of files) was too large to send whole.
    """
    header = letter.header
    sender_label = _one_line(header.sender.label) or "DP2"
    mail = EmailMessage()
    user, _, host = from_address.partition("@")
    mail["From"] = Address(display_name=f"{sender_label} via DP2", username=user, domain=host)
    mail["To"] = to
    if header.sender.idType is IdType.CVR:
        mail["Reply-To"] = f"{header.sender.senderID}@{domain}"
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = message_id(header.messageUUID, domain)
    if mode == "notice":
        shown = None if header.labelIsSensitive else header.label
        rendered = render("EMAIL", language, count=1, sender_label=sender_label, label=shown)
        mail["Subject"] = rendered.subject or ""
        notice = rendered.text
        if too_large_bytes is not None:
            line = TOO_LARGE["en" if language == "en" else "da"]
            notice = f"{notice}\n\n{line.format(mb=too_large_bytes / 1_000_000)}"
        mail.set_content(notice)
        return mail
    content = read or _inline
    mail["Subject"] = _one_line(header.label) or sender_label
    files = files_of(letter.body)
    text = next((f for f in files if f.encodingFormat == "text/plain"), None)
    mail.set_content(
        content(text).decode("utf-8", errors="replace")
        if text is not None
        else f"Brevet fra {sender_label} er vedhæftet."
    )
    for file in files:
        maintype, _, subtype = file.encodingFormat.partition("/")
        if not subtype or "/" in subtype:
            maintype, subtype = "application", "octet-stream"
        mail.add_attachment(
            content(file), maintype=maintype, subtype=subtype, filename=file.filename
        )
    return mail


def message_id(message_uuid: str, domain: str) -> str:
    """The Message-ID of a forwarded letter, which a reply names in In-Reply-To."""
    return f"<{message_uuid}@{domain}>"


def _leaves(part: MIMEPart) -> Iterator[MIMEPart]:
    """Every non-multipart part; an enclosed message/rfc822 stays one part (an .eml)."""
    if part.get_content_maintype() == "multipart":
        for child in part.iter_parts():
            yield from _leaves(child)
    else:
        yield part


def _attachment(part: MIMEPart, number: int) -> Document:
    mime_type = part.get_content_type()
    if part.is_multipart():  # message/rfc822: the enclosed mail, as one file
        enclosed = part.get_payload()
        data = b"".join(m.as_bytes() for m in enclosed if isinstance(m, Message))
        extension = ".eml"
    else:
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        extension = mimetypes.guess_extension(mime_type) or ".bin"
    name = safe_filename(part.get_filename(), f"vedhaeftning-{number}{extension}")
    return Document(name, mime_type, data)


def _text_of(part: MIMEPart) -> str:
    """A body's text with plain line ends (CRLF is how SMTP carries lines, not content)."""
    try:
        content = part.get_content()
    except (LookupError, UnicodeError):  # an unknown or lying charset: keep what decodes
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
    return content.replace("\r\n", "\n") if isinstance(content, str) else ""


def _replied_message(references: list[str], domain: str) -> str | None:
    """The first version-4 UUID written as ``<uuid@domain>`` among the references."""
    for reference in references:
        for found in _MESSAGE_REF.finditer(reference):
            if found.group(2).lower() != domain:
                continue
            try:
                parsed = uuid.UUID(found.group(1))
            except ValueError:
                continue
            if parsed.version == 4:
                return str(parsed)
    return None


def _inline(file: File) -> bytes:
    """A received file's bytes (connectors.delivery has decrypted and fetched them)."""
    if not isinstance(file.content, InlineContent):
        raise MailError(
            f"file {file.filename!r} is not inline",
            reason_code="NOT_PLAIN",
            hint="Forward only messages opened by connectors.delivery.",
        )
    return file.content.data


def _one_line(value: str | None) -> str | None:
    """Whitespace collapsed: a sender's text cannot add header lines."""
    return " ".join(value.split()) or None if value else None
