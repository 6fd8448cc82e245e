"""SF1601's shape, pure: kombi_request in, kombi_response out, KombiValgKode to DP2's routes.

Why it exists: today's municipal case systems do not post bare MeMo; they call
Serviceplatformen's SF1601 ``KombiPostAfsend`` with a ``<kombi_request>`` that wraps
one ``memo:Message`` and names the channel in ``KombiValgKode``, and ask
``PostForespoerg`` whether a person can get digital post. The ESDH connector serves
both shapes (connectors.esdh.sf1601_http) so that such an integration moves to DP2 by
changing its base URL and token. This module holds what needs no I/O: reading the
request, the channel rules, checking the transaction headers and identifiers,
NgDP's event names for business receipts, and writing the answer.

KombiValgKode, and what DP2 does with it (docs/migrating-from-sf1601.md):

- ``Automatisk Valg`` (DIGITALPOST): as ``POST /memo`` — digital when the recipient
  is registered, else paper;
- ``Digital Post`` (DIGITALPOST): digital only — refused (SF1601_RECIPIENT_NOT_DIGITAL)
  unless registered, and sealed for the mailbox provider, so the router can never
  print it (a register change meanwhile is FAILED, ENCRYPTED_FOR_OTHER_PROVIDER);
- ``Fysisk Post`` (DIGITALPOST): paper only — sealed for the print provider, which the
  router honours as the sender's signed choice: PRINTED even when registered;
- ``NemSMS`` (NEMSMS): a text message — refused (SF1601_NEMSMS_UNAVAILABLE) unless the
  recipient is a person (CPR) registered for digital post; the notifier sends it.

NemSMS availability is "a person registered for digital post": the directory the
connector may read holds status and provider only, not the notification channels
(contact details only the notifier and print read). A NemSMS to someone without an
SMS channel is NOTIFICATION_FAILED (NO_SMS_NUMBER) on its trace, never silent.

The answer (XML, or JSON when the request accepts only JSON) follows SF1601's
``kombi_response`` as its clients read it — ``Result``, ``TransmissionID`` and
``HovedoplysningerSvarREST/SvarReaktion/Advis/AdvisTekst`` = ``Received`` — with the
request's ``X-TransaktionsId`` echoed; an error has ``Result`` false, ``Fejl``
(``FejlId`` = DP2's reason code, ``FejlTekst``) and DP2's usual ``reasonCode``,
``message``, ``hint`` and ``violations``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import IO, Any, Final, NoReturn
from xml.parsers import expat

from brokers.runtime.records import iso_z
from schemas import memo
from schemas.errors import Dp2Error
from schemas.models import ContactRecord, ContactStatus, Envelope, IdType, MessageType
from schemas.models import LifecycleState as S
from schemas.values import is_ascii_digits

TRANSACTION_ID_HEADER: Final = "X-TransaktionsId"
TRANSACTION_TIME_HEADER: Final = "X-TransaktionsTid"
#: SF1601's word for a message it has taken (its clients compare AdvisTekst with it).
RECEIVED: Final = "Received"
_TRANSACTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_FJERNPRINT = "ForsendelseISamling"


class Sf1601Error(Dp2Error):
    """A request that does not fit SF1601's shape; the status is the HTTP answer's."""

    reason_code = "SF1601_KOMBI_MALFORMED"
    hint = (
        "POST <kombi_request><KombiValgKode>Digital Post</KombiValgKode><memo:Message "
        'xmlns:memo="https://DigitalPost.dk/MeMo-1" ...>...</memo:Message></kombi_request>.'
    )

    def __init__(
        self,
        message: str,
        *,
        reason_code: str | None = None,
        hint: str | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(message, reason_code=reason_code, hint=hint)
        self.status: int = status


class KombiValgKode(StrEnum):
    """The channel a kombi_request asks for."""

    AUTOMATISK_VALG = "Automatisk Valg"
    DIGITAL_POST = "Digital Post"
    FYSISK_POST = "Fysisk Post"
    NEMSMS = "NemSMS"


@dataclass(frozen=True, slots=True)
class Route:
    """What a KombiValgKode means on DP2: the messageType it needs, whether the
    recipient must be on digital post, and whether the letter is sealed for print."""

    message_type: MessageType
    needs_digital: bool
    paper: bool


ROUTES: Final[Mapping[KombiValgKode, Route]] = {
    KombiValgKode.AUTOMATISK_VALG: Route(MessageType.DIGITALPOST, needs_digital=False, paper=False),
    KombiValgKode.DIGITAL_POST: Route(MessageType.DIGITALPOST, needs_digital=True, paper=False),
    KombiValgKode.FYSISK_POST: Route(MessageType.DIGITALPOST, needs_digital=False, paper=True),
    KombiValgKode.NEMSMS: Route(MessageType.NEMSMS, needs_digital=True, paper=False),
}


@dataclass(frozen=True, slots=True)
class KombiRequest:
    """A read kombi_request: the channel and the MeMo message's own XML."""

    choice: KombiValgKode
    memo: bytes

    @property
    def route(self) -> Route:
        return ROUTES[self.choice]

    @property
    def digest_variant(self) -> bytes:
        """Added to the message's digest for resend detection: a resend through another
        channel is another send (409), and ``Automatisk Valg`` is exactly ``POST /memo``."""
        if self.choice is KombiValgKode.AUTOMATISK_VALG:
            return b""
        return f"\0KombiValgKode={self.choice.value}".encode()


def choice_of(text: str | None) -> KombiValgKode:
    """The KombiValgKode in ``text`` (case and spacing as a person might write it)."""
    wanted = " ".join((text or "").split()).casefold()
    for choice in KombiValgKode:
        if choice.value.casefold() == wanted:
            return choice
    known = ", ".join(c.value for c in KombiValgKode)
    raise Sf1601Error(
        "KombiValgKode is missing" if not wanted else "KombiValgKode is not one SF1601 knows",
        reason_code="SF1601_KOMBI_CODE_INVALID",
        hint=f"Write KombiValgKode as one of: {known}.",
    )


def parse_kombi(xml: bytes | IO[bytes]) -> KombiRequest:
    """The channel and MeMo message of a kombi_request (Sf1601Error says what is wrong).

    The memo:Message is handed on as XML of its own, namespace declarations of the
    wrapper included, for schemas.memo to read and validate like ``POST /memo``.
    """
    root = _read_tree(xml)
    if root.tag != "kombi_request":
        raise Sf1601Error(f"the root element is {_local(root.tag)!r}, not kombi_request")
    choice = choice_of(root.findtext("KombiValgKode"))
    messages = [child for child in root if child.tag == f"{{{memo.NS}}}Message"]
    if len(messages) != 1:
        fjernprint = any(_local(child.tag) == _FJERNPRINT for child in root)
        raise Sf1601Error(
            "the kombi_request holds a fjernprint ForsendelseISamling, which DP2 does not take"
            if fjernprint and not messages
            else f"the kombi_request holds {len(messages)} memo:Message elements, not one",
            reason_code="SF1601_MEMO_MISSING",
            hint="Put exactly one MeMo message (memo:Message) in the kombi_request; for paper, "
            "send it with KombiValgKode Fysisk Post: DP2 prints MeMo itself.",
        )
    messages[0].tail = None  # the text after it is the wrapper's, not the message's
    return KombiRequest(choice, ET.tostring(messages[0], encoding="utf-8"))


def check_message_type(choice: KombiValgKode, message: Envelope) -> None:
    """NemSMS goes with messageType NEMSMS, every other KombiValgKode with DIGITALPOST."""
    wanted = ROUTES[choice].message_type
    if message.header.messageType is not wanted:
        raise Sf1601Error(
            f"KombiValgKode {choice.value} needs messageType {wanted.value}, "
            f"not {message.header.messageType.value}",
            reason_code="SF1601_MESSAGE_TYPE_MISMATCH",
            hint="Send a text message as KombiValgKode NemSMS with messageType NEMSMS; a "
            "letter as Digital Post, Fysisk Post or Automatisk Valg with DIGITALPOST.",
            status=422,
        )


def digital_post_available(record: ContactRecord | None) -> bool:
    """PostForespoerg digitalpost: the recipient is registered for digital post."""
    return record is not None and record.status is ContactStatus.REGISTERED


def nemsms_available(id_type: IdType, record: ContactRecord | None) -> bool:
    """PostForespoerg nemsms: a person (CPR) registered for digital post (module docstring)."""
    return id_type is IdType.CPR and digital_post_available(record)


def refusal(
    choice: KombiValgKode, id_type: IdType, record: ContactRecord | None
) -> Sf1601Error | None:
    """Why the channel cannot reach this recipient now (nothing is sent), or None."""
    if choice is KombiValgKode.DIGITAL_POST and not digital_post_available(record):
        return Sf1601Error(
            "the recipient does not receive digital post, and Digital Post never falls "
            "back to paper",
            reason_code="SF1601_RECIPIENT_NOT_DIGITAL",
            hint="Send it as Automatisk Valg (digital, else paper) or Fysisk Post; "
            "PostForespoerg digitalpost tells beforehand.",
            status=422,
        )
    if choice is KombiValgKode.NEMSMS and not nemsms_available(id_type, record):
        return Sf1601Error(
            "the recipient cannot receive NemSMS (only a person registered for digital post can)",
            reason_code="SF1601_NEMSMS_UNAVAILABLE",
            hint="Send a letter instead (Automatisk Valg); PostForespoerg nemsms tells beforehand.",
            status=422,
        )
    return None


def transaction_id(headers: Mapping[str, str]) -> str:
    """The request's X-TransaktionsId, which the answer echoes (SF1601 requires it)."""
    value = headers.get(TRANSACTION_ID_HEADER, "").strip()
    if not _TRANSACTION_ID.fullmatch(value):
        raise Sf1601Error(
            f"the {TRANSACTION_ID_HEADER} header is "
            + ("missing" if not value else "not 1-128 letters, digits, '.', '_', ':' or '-'"),
            reason_code="SF1601_TRANSACTION_ID_MISSING",
            hint=f"Send {TRANSACTION_ID_HEADER}: <a new UUID> (and {TRANSACTION_TIME_HEADER}) "
            "with every request, as Serviceplatformen requires.",
        )
    return value


def lookup_identifier(query: Mapping[str, str]) -> tuple[IdType, str]:
    """PostForespoerg's one identifier: ``cprNumber`` (10 digits) or ``cvrNumber`` (8)."""
    given = [(IdType.CPR, "cprNumber", 10), (IdType.CVR, "cvrNumber", 8)]
    present = [(kind, name, digits) for kind, name, digits in given if name in query]
    if len(present) == 1:
        kind, name, digits = present[0]
        if is_ascii_digits(query[name], digits):
            return kind, query[name]
        problem = f"{name} is not {digits} digits"
    else:
        problem = "give exactly one of cprNumber and cvrNumber"
    raise Sf1601Error(
        problem,
        reason_code="SF1601_BAD_IDENTIFIER",
        hint="Ask ?cprNumber=0101011234 (10 digits) or ?cvrNumber=29189846 (8 digits), as "
        "text with leading zeros kept.",
    )


#: DP2's lifecycle states in NgDP's event names, where one fits (business receipts).
NGDP_EVENTS: Final[Mapping[S, str]] = {
    S.SUBMITTED: "MEMO_SEND_RECEIVED",
    S.ACCEPTED: "MEMO_SEND_VALIDATED",
    S.DELIVERED: "MEMO_AVAILABLE_TO_RECIPIENT",
    S.READ: "MESSAGE_READ",
    S.PRINTED: "PHYSICAL_LETTER_SENT",
    S.NOTIFIED: "NOTIFICATION_SENT",
    S.NOTIFICATION_FAILED: "NOTIFICATION_FAILED",
    S.RECALLED: "DELAYED_MEMO_MESSAGE_RECALLED",
}


def ngdp_event(state: S) -> str | None:
    """NgDP's name for a lifecycle state, or None where NgDP has none that fits."""
    return NGDP_EVENTS.get(state)


# --- the answer ---------------------------------------------------------------------
def success_body(message_uuid: str, transaction: str | None, now: datetime) -> dict[str, Any]:
    """SF1601's answer to a message taken (the same for its resend)."""
    return {
        "Result": True,
        "TransmissionID": message_uuid,
        "HovedoplysningerSvarREST": _context(
            transaction, now, {"Advis": {"AdvisId": "MEMO_SEND_RECEIVED", "AdvisTekst": RECEIVED}}
        ),
    }


def error_answer_body(
    error: Mapping[str, Any], transaction: str | None, now: datetime
) -> dict[str, Any]:
    """SF1601's answer to a refusal, around DP2's error body (connectors.base.error_body)."""
    fault = {"FejlId": error.get("reasonCode"), "FejlTekst": error.get("message")}
    return {
        "Result": False,
        "HovedoplysningerSvarREST": _context(transaction, now, {"Fejl": fault}),
        **error,
    }


def _context(transaction: str | None, now: datetime, reaction: dict[str, Any]) -> dict[str, Any]:
    return {
        "TransaktionsId": transaction,
        "TransaktionsTid": iso_z(now, "seconds"),
        "SvarReaktion": reaction,
    }


def wants_json(accept: str) -> bool:
    """JSON only when the caller accepts JSON and not XML (SF1601 answers XML)."""
    accept = accept.lower()
    return "json" in accept and "xml" not in accept


def to_xml(body: Mapping[str, Any], root: str = "kombi_response") -> bytes:
    """A body of nested dicts, lists and scalars as XML (None is left out)."""
    element = ET.Element(root)
    for name, value in body.items():
        _write(element, name, value)
    data: bytes = ET.tostring(element, encoding="utf-8", xml_declaration=True)
    return data


def _write(parent: ET.Element, name: str, value: Any) -> None:
    if value is None:
        return
    child = ET.SubElement(parent, name)
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _write(child, key, inner)
    elif isinstance(value, list):
        item = name[:-1] if name.endswith("s") else "item"
        for inner in value:
            _write(child, item, inner)
    elif isinstance(value, bool):
        child.text = "true" if value else "false"
    else:
        child.text = str(value)


# --- reading ------------------------------------------------------------------------
class _Refused(Exception):
    """A DOCTYPE or entity declaration: refused before anything could expand."""


def _refuse(*_: object) -> NoReturn:
    raise _Refused


def _qualified(name: str) -> str:
    uri, _, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if uri else local


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _read_tree(xml: bytes | IO[bytes]) -> ET.Element:
    """The element tree of ``xml`` (stdlib expat, DOCTYPEs refused as schemas.memo does)."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.StartElementHandler = lambda name, attributes: builder.start(
        _qualified(name), {_qualified(k): v for k, v in attributes.items()}
    )
    parser.EndElementHandler = lambda name: builder.end(_qualified(name))
    parser.CharacterDataHandler = builder.data
    parser.buffer_text = True
    try:
        if isinstance(xml, bytes):
            parser.Parse(xml, True)
        else:  # a spooled body, read a piece at a time
            parser.ParseFile(xml)
    except _Refused:
        raise Sf1601Error("the request declares a DOCTYPE or an entity") from None
    except expat.ExpatError as exc:
        where = f"line {exc.lineno}, column {exc.offset + 1}"
        raise Sf1601Error(
            f"the request is not well-formed XML: {expat.ErrorString(exc.code)} at {where}"
        ) from exc
    return builder.close()
