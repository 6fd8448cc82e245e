"""The ESDH connector's SF1601 routes: KombiPostAfsend and PostForespoerg, as today's
integrations call them on Serviceplatformen.

Under the connector's base URL plus ``/sf1601/`` (what an SF1601 client is configured
with in place of ``https://prod.serviceplatformen.dk/``):

- ``POST service/KombiPostAfsend_1/kombi`` (and ``.../memos``): a kombi_request, sent
  like ``POST /memo`` on the channel its KombiValgKode names;
- ``GET service/PostForespoerg_1/digitalpost?cprNumber=`` (or ``cvrNumber=``):
  ``{"result": true}`` when the recipient is registered for digital post;
- ``GET service/PostForespoerg_1/nemsms?cprNumber=``: ``{"result": true}`` when a
  NemSMS can reach the person.

A kombi_request is read as it streams in, into a private temporary file in the
connector's data folder (connectors.bodies), and refused ``413 REQUEST_TOO_LARGE``
in the kombi_response shape over 140 MiB: at once when ``Content-Length`` says so,
else as soon as the bytes read pass it; nothing is parsed or sent then.

Every route needs the authority's access token, as the rest of the connector's API
(``authorization: Holder-of-key <token>`` or ``Bearer``), and ``X-TransaktionsId``,
which every answer echoes. The rules and the answers' shape are connectors.esdh.sf1601;
sending, resend detection and the store are the connector's own (``submit``), so a
kombi_request and ``POST /memo`` are one implementation.

PostForespoerg says only true or false, in the same shape and by the same lookup (a
keyed pseudonym, one dictionary read) for a registered, an exempt and an unknown
person: no provider, no name, no status reason.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

from aiohttp import web

from brokers.runtime.blobstore import FileBlobStore
from brokers.runtime.settings import Settings
from brokers.security import sealing, signing
from brokers.security.pseudonyms import Pseudonymizer
from brokers.security.trust import TrustStore
from connectors.base import error_body
from connectors.bodies import MEMO_BODY_LIMIT, BodyTooLargeError, spool
from connectors.esdh import sf1601
from connectors.esdh.sf1601 import TRANSACTION_ID_HEADER, KombiValgKode, Sf1601Error
from connectors.sdk import Dp2Client, Receipt, check_plain
from schemas import codec, memo
from schemas.models import Envelope
from schemas.vocabulary import PRINT_PROVIDER

if TYPE_CHECKING:
    from connectors.esdh.connector import Answer, EsdhConnector

BASE: Final = "/sf1601/service"
KOMBI: Final = f"{BASE}/KombiPostAfsend_1"
FORESPOERG: Final = f"{BASE}/PostForespoerg_1"
#: DP2's own word on a kombi answer: SUBMITTED, or DUPLICATE for a resend (same body).
STATUS_HEADER: Final = "X-DP2-Status"
_XML_TYPES = frozenset({"application/xml", "text/xml", "application/memo+xml"})

Handler = Callable[[web.Request], Awaitable[web.Response]]


class Authorise(Protocol):
    """The connector's token check (EsdhConnector._authorised)."""

    def __call__(
        self,
        handler: Handler,
        refuse: Callable[[web.Request, Answer], web.Response] | None = None,
        /,
    ) -> Handler: ...


class Sf1601Api:
    """The SF1601 routes of one ESDH connector."""

    def __init__(
        self,
        connector: EsdhConnector,
        settings: Settings,
        client: Dp2Client,
        pseudonyms: Pseudonymizer,
        spool_dir: Path,
    ) -> None:
        """``spool_dir``: the connector's own (private) data folder, for request bodies."""
        self._connector = connector
        self._spool_dir = spool_dir
        self._client = client
        self._pseudonyms = pseudonyms
        self._trust = TrustStore(settings.pki_dir)
        self._blobs = FileBlobStore(settings.home / "blobs")

    def routes(self, authorised: Authorise) -> list[web.RouteDef]:
        kombi = authorised(self._kombi, self._refused)
        return [
            web.post(f"{KOMBI}/kombi", kombi),
            web.post(f"{KOMBI}/memos", kombi),
            web.get(f"{FORESPOERG}/digitalpost", authorised(self._digitalpost)),
            web.get(f"{FORESPOERG}/nemsms", authorised(self._nemsms)),
        ]

    # --- KombiPostAfsend --------------------------------------------------------
    async def _kombi(self, request: web.Request) -> web.Response:
        try:
            sf1601.transaction_id(request.headers)
            if request.content_type not in _XML_TYPES:
                raise Sf1601Error(
                    f"Content-Type {request.content_type!r} is not XML",
                    reason_code="UNSUPPORTED_MEDIA_TYPE",
                    hint="POST the kombi_request with Content-Type: application/xml.",
                    status=415,
                )
            # streamed to a private temporary file, refused once over the limit
            with await spool(request, MEMO_BODY_LIMIT, self._spool_dir) as body:
                # in a thread, as POST /memo: a 99.5 MB message takes a second to read
                kombi, message = await asyncio.to_thread(self._read, body)
        except (Sf1601Error, BodyTooLargeError) as exc:
            return self._answer(request, exc.status, error_body(exc))
        except memo.MemoError as exc:
            invalid = self._connector.invalid(exc)
            return self._answer(request, invalid.status, invalid.body)
        answer = await self._connector.submit(
            message,
            variant=kombi.digest_variant,
            refuse=functools.partial(self._refusal, kombi.choice),
            send=self._send_on_paper if kombi.route.paper else None,
        )
        return self._answer(request, answer.status, answer.body)

    def _read(self, xml: IO[bytes]) -> tuple[sf1601.KombiRequest, Envelope]:
        """The kombi_request and its MeMo message, checked (Sf1601Error, memo.MemoError)."""
        kombi = sf1601.parse_kombi(xml)
        message = self._connector.read_memo(kombi.memo)
        sf1601.check_message_type(kombi.choice, message)
        return kombi, message

    def _refusal(self, choice: KombiValgKode, message: Envelope) -> Sf1601Error | None:
        recipient = message.header.recipient
        ref = self._pseudonyms.ref(recipient.idType.value, recipient.recipientID)
        return sf1601.refusal(choice, recipient.idType, self._connector.contacts.get(ref))

    async def _send_on_paper(self, message: Envelope) -> Receipt:
        """Seal for the print provider, whatever the register says (Fysisk Post): the
        SDK's seal_and_sign with the provider chosen. The router prints an envelope
        sealed for print (brokers.router.rules): the key id is under the signature."""
        check_plain(message)
        recipient = message.header.recipient
        ref = self._pseudonyms.ref(recipient.idType.value, recipient.recipientID)
        key_id, key = self._trust.provider_key(PRINT_PROVIDER)
        sealed = sealing.seal_envelope(message, key, key_id, self._pseudonyms, self._blobs)
        identity = self._client.identity
        signed = signing.sign_envelope(sealed, identity.private_key, identity.fingerprint)
        return await self._client.submit(codec.encode(signed), signed.header.messageUUID, ref)

    def _refused(self, request: web.Request, answer: Answer) -> web.Response:
        """A refused token, answered in the kombi_response shape."""
        return self._answer(request, answer.status, answer.body)

    def _answer(self, request: web.Request, status: int, body: Mapping[str, Any]) -> web.Response:
        """The connector's answer as SF1601's kombi_response: 200 for a message taken
        (first send or resend alike), else the refusal's status with its reason code."""
        transaction = _echoed(request)
        now = datetime.now(UTC)
        headers = {TRANSACTION_ID_HEADER: transaction} if transaction else {}
        if status < 400:
            reply = sf1601.success_body(str(body["messageUUID"]), transaction, now)
            headers[STATUS_HEADER] = str(body["status"])
            status = 200
        else:
            reply = sf1601.error_answer_body(body, transaction, now)
        if sf1601.wants_json(request.headers.get("Accept", "")):
            return web.json_response(reply, status=status, headers=headers)
        return web.Response(
            body=sf1601.to_xml(reply),
            status=status,
            content_type="application/xml",
            charset="utf-8",
            headers=headers,
        )

    # --- PostForespoerg ---------------------------------------------------------
    async def _digitalpost(self, request: web.Request) -> web.Response:
        return self._lookup(request, nemsms=False)

    async def _nemsms(self, request: web.Request) -> web.Response:
        return self._lookup(request, nemsms=True)

    def _lookup(self, request: web.Request, *, nemsms: bool) -> web.Response:
        try:
            transaction = sf1601.transaction_id(request.headers)
            id_type, identifier = sf1601.lookup_identifier(request.query)
        except Sf1601Error as exc:
            echoed = _echoed(request)
            headers = {TRANSACTION_ID_HEADER: echoed} if echoed else {}
            return web.json_response(error_body(exc), status=exc.status, headers=headers)
        record = self._connector.contacts.get(self._pseudonyms.ref(id_type.value, identifier))
        result = (
            sf1601.nemsms_available(id_type, record)
            if nemsms
            else sf1601.digital_post_available(record)
        )
        return web.json_response({"result": result}, headers={TRANSACTION_ID_HEADER: transaction})


def _echoed(request: web.Request) -> str | None:
    """The request's transaction id if it may be echoed (a well-formed one), else None."""
    try:
        return sf1601.transaction_id(request.headers)
    except Sf1601Error:
        return None
