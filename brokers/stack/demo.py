"""The embedded default's development identities, sample register and sample post.

Why: ``make run`` should show a working backbone within a minute on a fresh
machine — a development CA, a sending municipality, a mailbox provider and a print
provider, a sample contact register, and (with ``--demo``) a few letters that go
digital, to print and to the schedule — without the user reading the PKI guide.
Nothing here is used in production: real deployments issue certificates with
``dp2 pki`` from their own CA and load their own register.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.x509.oid import NameOID

from brokers.contacts.records import read_contact_file
from brokers.contacts.register import publish_contacts
from brokers.runtime.private import touch_private
from brokers.runtime.settings import PROJECT_ROOT, Settings
from brokers.security.pki import Identity, Pki, provider_identity_name
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.stack.access import REGISTER_IDENTITY
from connectors.base import configured
from connectors.sdk import Document, Dp2Client, Receipt, build_message
from schemas import memo
from schemas.errors import Dp2Error
from schemas.models import CaseID, ContentData, Envelope, IdType, MessageType
from schemas.vocabulary import PRINT_PROVIDER
from tracing.access import Users

DEMO_SENDER = "demo-kommune"
DEMO_SENDER_CVR = "29189846"
DEMO_PROVIDER = "mitpost"
#: Where the demo municipality receives post (replies): its ESDH connector, which also
#: serves SF1601 (KombiPostAfsend, PostForespoerg) for it.
DEMO_ESDH_PROVIDER = "demo-esdh"
DEMO_CONTACTS = PROJECT_ROOT / "deploy" / "demo" / "contacts.json"
#: The citizen gateways of the demo: self-service forms and mail from a mail client.
DEMO_FORMS, DEMO_MAIL = "forms", "mailgw"
DEMO_CITIZEN = "0101901234"  # Karen Jensen in deploy/demo/contacts.json: SMS and e-mail
DEMO_OPERATOR = "operator"
DEMO_OPERATOR_FILE = "demo-operator.txt"

Say = Callable[[str], None]


def ensure_development_pki(settings: Settings, say: Say) -> None:
    """Create the development CA and demo identities once (idempotent)."""
    pki = Pki(settings.pki_dir)
    if not (pki.root / "ca" / "cert.pem").exists():
        say(f"creating a development PKI in {pki.root} (not for production)")
        pki.init()
    existing = set(pki.names())
    if DEMO_SENDER not in existing:
        pki.issue_sender(DEMO_SENDER_CVR, DEMO_SENDER)
    for provider in (DEMO_PROVIDER, PRINT_PROVIDER, DEMO_ESDH_PROVIDER):
        if provider_identity_name(provider) not in existing:
            pki.issue_provider(provider)
    # Self-service forms and the mail connector log each citizen in themselves.
    for gateway in (DEMO_FORMS, DEMO_MAIL):
        if provider_identity_name(gateway) not in existing:
            pki.issue_provider(gateway, citizen_gateway=True)


DEFAULT_CONNECTORS = f"""# Connectors that `dp2 up` runs (see docs/connectors.md, section 5).
# Remote print: letters for recipients without digital post become PDFs in
# $DP2_HOME/data/connectors/print/outbox (set drop_dir or upload_url to change).
[connectors.print]

# The demo municipality's case system: MeMo at POST /memo and SF1601 at /sf1601/
# (docs/migrating-from-sf1601.md); token: dp2 tokens authority --cvr {DEMO_SENDER_CVR}.
# Replies are journaled in $DP2_HOME/data/connectors/esdh/journal; add receipts_url
# (and journal_url) to push receipts and replies to a real case system.
[connectors.esdh]
cvr = "{DEMO_SENDER_CVR}"
identity = "{DEMO_SENDER}"
provider = "{DEMO_ESDH_PROVIDER}"

# Self-service forms: POST /forms/<cvr>/submissions with a citizen token
# (dp2 tokens issue --cpr ...); the submission becomes signed post to the authority.
[connectors.forms]
identity = "{provider_identity_name(DEMO_FORMS)}"

# The mailbox-app API over the reference mailbox of {DEMO_PROVIDER}: list, read, reply.
[connectors.apps]
mailbox = "{DEMO_PROVIDER}"

# Mail from an ordinary mail client: SMTP submission to <cvr>@post.dp2.local (the
# port is in its /healthz), logged in with a citizen token.
[connectors.mail]
domain = "post.dp2.local"
identity = "{provider_identity_name(DEMO_MAIL)}"
"""


def ensure_default_connectors(settings: Settings, say: Say) -> None:
    """A first connectors.toml for the embedded default: remote print on (once)."""
    path = settings.home / "connectors.toml"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_CONNECTORS, encoding="utf-8")
        say(
            f"wrote {path} (remote print, the demo municipality's ESDH and SF1601 API, "
            "forms, the mailbox-app API and mail); add your connectors there"
        )


def sender_cvr(identity: Identity) -> str | None:
    """The CVR in an organisation certificate's subject (``serialNumber=CVR:…``)."""
    for attribute in identity.certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER):
        value = str(attribute.value)
        if value.startswith("CVR:"):
            return value[4:]
    return None


async def send_one(
    settings: Settings, args: argparse.Namespace, documents: Sequence[Document]
) -> Receipt:
    """``dp2 send``: build from flags, then seal, sign and submit."""
    client = Dp2Client.from_settings(settings, args.identity)
    cvr = args.sender_cvr or sender_cvr(client.identity)
    if cvr is None:
        raise Dp2Error(
            f"identity {args.identity!r} names no CVR of its own",
            reason_code="SENDER_CVR_MISSING",
            hint="Pass --sender-cvr with the CVR this vendor identity sends for.",
        )
    message = build_message(
        sender_cvr=cvr,
        sender_label=args.identity,
        recipient_id=args.to,
        recipient_id_type=IdType(args.to_type),
        label=args.label,
        documents=documents,
        notification=args.notification,
        message_type=MessageType.NEMSMS if args.nemsms else MessageType.DIGITALPOST,
        do_not_deliver_until=args.not_before,
    )
    async with client:
        return await client.send(message)


async def run_demo(settings: Settings, say: Say) -> list[str]:
    """Load the sample register and send three letters: digital, print, scheduled."""
    pseudonyms = Pseudonymizer(pseudonym_key(settings.home))
    records = read_contact_file(DEMO_CONTACTS, pseudonyms)
    await publish_contacts(settings.kafka_as(REGISTER_IDENTITY), records)
    await asyncio.sleep(0.5)  # let the router's register see the records
    letter = Document("brev.txt", "text/plain", "Kære borger, her er dit brev.".encode())
    today = datetime.now(UTC).date()
    printed = "PRINTED" if "print" in configured(settings) else "ROUTED"
    samples = [  # recipient, label, doNotDeliverUntilDate, the state the demo waits for
        ("0101901234", "Afgørelse om boligstøtte", None, "DELIVERED"),  # registered: digital
        ("2002303456", "Indkaldelse til samtale", None, printed),  # exempt: to print
        ("1512452345", "Påmindelse om tandpleje", today + timedelta(days=30), "SCHEDULED"),
    ]
    uuids = []
    async with Dp2Client.from_settings(settings, DEMO_SENDER) as client:
        for cpr, label, not_before, _ in samples:
            message = build_message(
                sender_cvr=DEMO_SENDER_CVR,
                sender_label="Demo Kommune",
                recipient_id=cpr,
                label=label,
                documents=[letter],
                notification="Du har fået post fra Demo Kommune",
                do_not_deliver_until=not_before,
            )
            receipt = await client.send(message)
            uuids.append(receipt.message_uuid)
            say(f"demo: sent {label!r} as {receipt.message_uuid}")
        for message_uuid, (*_, expected) in zip(uuids, samples, strict=True):
            event = await client.wait_for(
                message_uuid, {expected, "REJECTED", "FAILED"}, timeout=60
            )
            say(f"demo: {message_uuid} is {event.state.value}; see: dp2 trace {message_uuid}")
    return uuids


# --- the "try it" list of make run ---------------------------------------------------------
def demo_letter(*, sms: bool = False) -> Envelope:
    """A MeMo letter from the demo municipality to the demo citizen, reply allowed,
    on a case of its case system — what ``dp2 demo letter`` writes for curl to send."""
    message = build_message(
        sender_cvr=DEMO_SENDER_CVR,
        sender_label="Demo Kommune",
        recipient_id=DEMO_CITIZEN,
        label="Afgørelse om boligstøtte",
        documents=[Document("afgoerelse.txt", "text/plain", "Du får boligstøtte.".encode())],
        notification="Du har fået post fra Demo Kommune",
        case_id="SAG-2026-0042",
    )
    header = message.header
    content = dataclasses.replace(
        header.contentData or ContentData(),
        caseID=CaseID(caseID="SAG-2026-0042", caseSystem="DEMO-ESDH"),
    )
    return dataclasses.replace(
        message, header=dataclasses.replace(header, contentData=content, reply=True)
    )


def kombi_request(envelope: Envelope, choice: str = "Automatisk Valg") -> bytes:
    """SF1601's KombiPostAfsend request around one MeMo message (docs/migrating-from-sf1601.md)."""
    body = memo.to_xml(envelope)
    if body.startswith(b"<?xml"):
        body = body.split(b"?>", 1)[1]
    return b"<kombi_request><KombiValgKode>%s</KombiValgKode>%s</kombi_request>" % (
        choice.encode(),
        body,
    )


def ensure_demo_operator(settings: Settings) -> tuple[str, str]:
    """The demo's first dashboard login (made once, its password kept 0600 in DP2_HOME)."""
    path = settings.home / DEMO_OPERATOR_FILE
    users = Users.of(settings)
    if path.exists():
        password = path.read_text(encoding="utf-8").strip()
        try:
            users.authenticate(DEMO_OPERATOR, password)
        except Dp2Error:
            pass  # changed or removed since: make it again
        else:
            return DEMO_OPERATOR, password
    password = secrets.token_urlsafe(12)
    users.add(DEMO_OPERATOR, password, "operator")
    touch_private(path)
    path.write_text(password + "\n", encoding="utf-8")
    return DEMO_OPERATOR, password


def try_it(settings: Settings, urls: Mapping[str, str], letter_uuid: str | None) -> str:
    """The list ``make run`` prints: every line after ``$`` is a command that works as
    printed (tests/integration/test_first_hour.py runs them in order). ``urls`` are
    the running services' by name (``connector-esdh``...)."""
    operator, password = ensure_demo_operator(settings)
    esdh, apps = urls["connector-esdh"], urls["connector-apps"]
    forms = urls["connector-forms"]
    bin_dir = Path(sys.executable).parent
    exports = f'export PATH="{bin_dir}:$PATH"'
    if "DP2_HOME" in os.environ:
        exports += f' DP2_HOME="{settings.home}"'
    if "DP2_PORT_BASE" in os.environ:
        exports += f" DP2_PORT_BASE={settings.port_base}"
    json_field = "python3 -c 'import json,sys; print(json.load(sys.stdin)[\"messageUUID\"])'"
    steps = [
        ("Use this deployment's dp2 in your shell", [exports]),
        (
            "Send a MeMo letter as the demo municipality's case system (HTTP, MeMo 1.2)",
            [
                f"AUTH=$(dp2 tokens authority --cvr {DEMO_SENDER_CVR})",
                "LETTER=$(dp2 demo letter --out /tmp/dp2-brev.xml)",
                f'curl -s -H "Authorization: Bearer $AUTH" -H "Content-Type: application/xml"'
                f" --data-binary @/tmp/dp2-brev.xml {esdh}/memo",
            ],
        ),
        ("Follow it until it is delivered", ["dp2 trace $LETTER --wait DELIVERED"]),
        (
            "Send one the SF1601 way (KombiPostAfsend, unchanged for an NgDP integration)",
            [
                "KOMBI=$(dp2 demo letter --kombi --out /tmp/dp2-kombi.xml)",
                f'curl -s -H "authorization: Holder-of-key $AUTH" -H "X-TransaktionsId: $KOMBI"'
                f' -H "Content-Type: application/xml" --data-binary @/tmp/dp2-kombi.xml'
                f" {esdh}/sf1601/service/KombiPostAfsend_1/kombi",
                "dp2 trace $KOMBI --wait DELIVERED",
            ],
        ),
        (
            "Read the letter as the citizen, through the mailbox-app API",
            [
                f"CITIZEN=$(dp2 tokens issue --cpr {DEMO_CITIZEN})",
                f'curl -s -H "Authorization: Bearer $CITIZEN" {apps}/mailboxes/me/messages/$LETTER',
            ],
        ),
        (
            "Reply; the demo case system journals it on the letter's case",
            [
                f'REPLY=$(curl -s -X POST -H "Authorization: Bearer $CITIZEN"'
                f" -H 'Content-Type: application/json' -d '{{\"text\": \"Tak for brevet.\"}}'"
                f" {apps}/mailboxes/me/messages/$LETTER/replies | {json_field})",
                "dp2 trace $REPLY --wait JOURNALED",
                f"ls {settings.home / 'data' / 'connectors' / 'esdh' / 'journal'}",
            ],
        ),
        (
            "Send a self-service form as the citizen",
            [
                f'FORM=$(curl -s -X POST -H "Authorization: Bearer $CITIZEN"'
                " -H 'Content-Type: application/json'"
                ' -d \'{"label": "Ansøgning om parkering", "text": "Jeg søger om en'
                ' beboerlicens.", "formData": {"taskKey": "DEMO-PARK-01", "version": "1",'
                ' "label": "Parkering"}}\''
                f" {forms}/forms/{DEMO_SENDER_CVR}/submissions | {json_field})",
                "dp2 trace $FORM --wait JOURNALED",
            ],
        ),
        (
            "See the SMS and e-mail the citizen got (captured locally, nothing leaves)",
            ["dp2 capture --wait 30"],
        ),
        (
            "Get the letter's receipt and check it offline with only the CA certificate",
            [
                "dp2 receipt $LETTER -o /tmp/dp2-receipt.json",
                "dp2 receipt verify /tmp/dp2-receipt.json",
            ],
        ),
        (
            f"Open the dashboard: log in as {operator} / {password}",
            [f"echo {settings.tracing_url}/dashboard/notifications"],
        ),
    ]
    lines = ["", "Try it (copy the lines after $ into a shell, in order):"]
    for number, (title, commands) in enumerate(steps, start=1):
        lines.append(f"{number:>2}. {title}")
        lines += [f"    $ {command}" for command in commands]
    if letter_uuid:
        lines.append(f"The demo's own letter to the citizen: dp2 trace {letter_uuid}")
    return "\n".join(lines)
