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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from cryptography.x509.oid import NameOID

from brokers.contacts.records import read_contact_file
from brokers.contacts.register import publish_contacts
from brokers.runtime.settings import PROJECT_ROOT, Settings
from brokers.security.pki import Identity, Pki, provider_identity_name
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.stack.access import REGISTER_IDENTITY
from connectors.base import configured
from connectors.sdk import Document, Dp2Client, Receipt, build_message
from schemas.errors import Dp2Error
from schemas.models import IdType, MessageType
from schemas.vocabulary import PRINT_PROVIDER

DEMO_SENDER = "demo-kommune"
DEMO_SENDER_CVR = "29189846"
DEMO_PROVIDER = "mitpost"
#: Where the demo municipality receives post (replies): its ESDH connector, which also
#: serves SF1601 (KombiPostAfsend, PostForespoerg) for it.
DEMO_ESDH_PROVIDER = "demo-esdh"
DEMO_CONTACTS = PROJECT_ROOT / "deploy" / "demo" / "contacts.json"

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
"""


def ensure_default_connectors(settings: Settings, say: Say) -> None:
    """A first connectors.toml for the embedded default: remote print on (once)."""
    path = settings.home / "connectors.toml"
    if not path.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        path.write_text(DEFAULT_CONNECTORS, encoding="utf-8")
        say(
            f"wrote {path} (remote print to a folder, the demo municipality's ESDH "
            "and SF1601 API); add your connectors there"
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
