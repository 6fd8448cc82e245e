"""A whole DP2 stack on the session's real Kafka: PKI, register, every service.

The services run in this test process (same code as ``dp2 run``, one event loop)
so a test can reach into a store or move the router's clock; tests that need a
service to die run it as a real ``dp2`` subprocess instead.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from brokers.blobstore import FileBlobStore
from brokers.contacts import ContactRegister, pseudonym_key, publish_contacts, read_contact_file
from brokers.crypto import Pseudonymizer
from brokers.pki import Pki, TrustStore
from brokers.service import ServiceHost
from brokers.settings import Settings
from brokers.stack import build_service, prepare_topics
from connectors.mailbox import MailboxStore
from connectors.sdk import Dp2Client

SENDER = "aarhus"
SENDER_CVR = "55133018"
PROVIDER = "mitpost"
REGISTERED_CPR = "0101901234"
EXEMPT_CPR = "2002303456"
UNKNOWN_CPR = "3112999999"


class Clock:
    """The router's clock, movable by tests (scheduled delivery)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Stack:
    settings: Settings
    pki: Pki
    pseudonyms: Pseudonymizer
    contacts: ContactRegister
    clock: Clock
    hosts: dict[str, ServiceHost] = field(default_factory=dict)

    @property
    def tracing_url(self) -> str:
        url = self.hosts["tracing"].url
        assert url is not None
        return url

    def mailbox_store(self) -> MailboxStore:
        """A reader of the mailbox's SQLite store (its own connection)."""
        return MailboxStore(self.settings.home / "data" / f"mailbox-{PROVIDER}.sqlite")

    def client(self, identity: str = SENDER, **kwargs: Any) -> Dp2Client:
        return Dp2Client(
            bootstrap=self.settings.kafka_bootstrap,
            identity=self.pki.identity(identity),
            trust=TrustStore(self.pki.root),
            pseudonyms=self.pseudonyms,
            blob_store=FileBlobStore(self.settings.home / "blobs"),
            contacts=self.contacts,
            **kwargs,
        )

    def trace(self, message_uuid: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own service on 127.0.0.1
                f"{self.tracing_url}/messages/{message_uuid}", timeout=5
            ) as response:
                doc: dict[str, Any] = json.loads(response.read())
                return doc
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    async def wait_trace(
        self, message_uuid: str, state: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        """The message's trace once its timeline holds ``state``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            doc = await asyncio.to_thread(self.trace, message_uuid)
            if doc and any(e["state"] == state for e in doc["timeline"]):
                return doc
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{message_uuid} never reached {state}: {doc}")
            await asyncio.sleep(0.2)


CONTACTS = [
    {
        "id": REGISTERED_CPR,
        "idType": "CPR",
        "status": "REGISTERED",
        "provider": PROVIDER,
        "name": "Karen Jensen",
        "channels": [{"channel": "EMAIL", "address": "k@example.dk"}],
    },
    {
        "id": EXEMPT_CPR,
        "idType": "CPR",
        "status": "EXEMPT",
        "statusReason": "fritaget",
        "name": "Inge Madsen",
        "address": {"street": "Algade 7", "postcode": "4000", "city": "Roskilde"},
    },
]


@pytest.fixture(scope="session")
async def stack(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """PKI, contact register and tracing, validator, router and one mailbox, running."""
    home = tmp_path_factory.mktemp("dp2home")
    settings = Settings.from_env({"DP2_HOME": str(home), "DP2_KAFKA_BOOTSTRAP": kafka_bootstrap})
    pki = Pki(home / "pki")
    pki.init()
    pki.issue_sender(SENDER_CVR, SENDER)
    pki.issue_provider(PROVIDER)
    pki.issue_provider("print")
    pseudonyms = Pseudonymizer(pseudonym_key(home))
    await prepare_topics(settings, [PROVIDER])
    contacts_file = Path(home / "contacts.json")
    contacts_file.write_text(json.dumps(CONTACTS))
    await publish_contacts(kafka_bootstrap, read_contact_file(contacts_file, pseudonyms))
    contacts = ContactRegister(kafka_bootstrap)
    await contacts.start()
    clock = Clock()
    suffix = f".{uuid.uuid4().hex[:8]}"
    stack = Stack(settings, pki, pseudonyms, contacts, clock)
    for kind, extra in (
        ("tracing", {}),
        ("validator", {}),
        ("router", {"clock": clock}),
        ("mailbox", {"provider": PROVIDER}),
    ):
        host = await build_service(kind, settings, group_suffix=suffix, **extra)
        await host.start()
        stack.hosts[kind] = host
    try:
        yield stack
    finally:
        for host in reversed(stack.hosts.values()):
            await host.stop()
        await contacts.stop()
