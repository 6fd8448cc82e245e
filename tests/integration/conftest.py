"""A whole DP2 stack on the session's real Kafka: PKI, register, every service.

The services run in this test process (same code as ``dp2 run``, one event loop)
so a test can reach into a store or move the router's clock; tests that need a
service to die run it as a real ``dp2`` subprocess instead.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from brokers.contacts.records import read_contact_file
from brokers.contacts.register import ContactRegister, publish_contacts
from brokers.runtime.blobstore import FileBlobStore
from brokers.runtime.host import ServiceHost
from brokers.runtime.settings import KafkaAccess, Settings
from brokers.security.pki import Pki
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.security.trust import TrustStore
from brokers.stack.access import REGISTER_IDENTITY
from brokers.stack.kafka import LOCAL_KAFKA_PORTS, ephemeral_ports_start, port_is_free
from brokers.stack.registry import build_service
from brokers.stack.supervisor import prepare_kafka
from connectors.authorities import AuthorityTokens
from connectors.mailbox import MailboxStore
from connectors.sdk import Dp2Client
from tracing.access import Users

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
    admin: KafkaAccess
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

    def kafka(self, identity: str) -> KafkaAccess:
        """Kafka access as one of the deployment's identities."""
        return self.settings.kafka_as(identity)

    async def apply_acls(self) -> None:
        """Re-derive and apply the ACLs after a test added identities or connectors."""
        await prepare_kafka(self.settings, [PROVIDER])

    def client(self, identity: str = SENDER, **kwargs: Any) -> Dp2Client:
        return Dp2Client(
            kafka=self.kafka(identity),
            identity=self.pki.identity(identity),
            trust=TrustStore(self.pki.root),
            pseudonyms=self.pseudonyms,
            blob_store=FileBlobStore(self.settings.home / "blobs"),
            contacts=self.contacts,
            **kwargs,
        )

    def operator_token(self) -> str:
        """A trace API token as this deployment's operator (what dp2 trace uses)."""
        return Users(self.settings.home).local_token()

    def trace(self, message_uuid: str) -> dict[str, Any] | None:
        request = urllib.request.Request(  # noqa: S310 - our own service on 127.0.0.1
            f"{self.tracing_url}/messages/{message_uuid}",
            headers={"Authorization": f"Bearer {self.operator_token()}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
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
    kafka_bootstrap: str,
    kafka_pki: Path,
    kafka_admin: KafkaAccess,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    """PKI, register and tracing, validator, router and one mailbox, running, each as
    its own Kafka principal with the ACLs dp2 up would apply."""
    home = tmp_path_factory.mktemp("dp2home")
    settings = Settings.from_env(
        {
            "DP2_HOME": str(home),
            "DP2_KAFKA_BOOTSTRAP": kafka_bootstrap,
            "DP2_PKI": str(kafka_pki),
            "DP2_KAFKA_TLS": "1" if kafka_admin.tls else "0",
        }
    )
    pki = Pki(settings.pki_dir)
    pki.init()
    pki.issue_sender(SENDER_CVR, SENDER)
    pki.issue_provider(PROVIDER)
    pki.issue_provider("print")
    pseudonyms = Pseudonymizer(pseudonym_key(home))
    await prepare_kafka(settings, [PROVIDER])
    contacts_file = Path(home / "contacts.json")
    contacts_file.write_text(json.dumps(CONTACTS))
    register = settings.kafka_as(REGISTER_IDENTITY)
    await publish_contacts(register, read_contact_file(contacts_file, pseudonyms))
    contacts = ContactRegister(settings.kafka_as(SENDER))
    await contacts.start()
    clock = Clock()
    suffix = f".{uuid.uuid4().hex[:8]}"
    stack = Stack(settings, kafka_admin, pki, pseudonyms, contacts, clock)
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


# --- the ESDH connector with a local case system (issues 4 and 5) ------------------
AUTHORITY_CVR = "29189846"
AUTHORITY = "aarhus-esdh"
ESDH_PROVIDER = "esdh-aarhus"


class EsdhPeer:
    """A case system on 127.0.0.1 that records receipts and journal entries."""

    def __init__(self) -> None:
        self.receipts: list[dict[str, Any]] = []
        self.journal: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/receipts", self._take(self.receipts))
        app.router.add_post("/journal", self._take(self.journal))
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _take(into: list[dict[str, Any]]) -> Any:
        async def handler(request: web.Request) -> web.Response:
            into.append(await request.json())
            return web.json_response({"ok": True})

        return handler

    def states_of(self, message_uuid: str) -> list[str]:
        return [r["state"] for r in self.receipts if r["messageUUID"] == message_uuid]


@dataclass
class Esdh:
    host: ServiceHost
    peer: EsdhPeer
    inbox: Path
    stack: Stack
    session: aiohttp.ClientSession
    sent: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        assert self.host.url is not None
        return self.host.url

    def token(self, cvr: str = AUTHORITY_CVR) -> str:
        """An access token of the authority (``dp2 tokens authority --cvr``)."""
        return AuthorityTokens.from_home(self.stack.settings.home).issue(cvr)

    async def post(
        self, xml: bytes, content_type: str = "application/xml", *, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        headers["Authorization"] = f"Bearer {token if token is not None else self.token()}"
        body = io.BytesIO(xml)  # a big MeMo is streamed, as a case system would
        async with self.session.post(f"{self.url}/memo", data=body, headers=headers) as response:
            return response.status, await response.json()

    async def get(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token if token is not None else self.token()}"}
        async with self.session.get(f"{self.url}{path}", headers=headers) as response:
            return response.status, await response.json()


async def until(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="session")
async def esdh(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Esdh]:
    """The ESDH connector for CVR 29189846, receiving as provider esdh-aarhus."""
    home = stack.settings.home
    stack.pki.issue_sender(AUTHORITY_CVR, AUTHORITY)
    stack.pki.issue_provider(ESDH_PROVIDER)
    register = tmp_path_factory.mktemp("esdh") / "contacts.json"
    register.write_text(
        json.dumps(
            [
                {
                    "id": AUTHORITY_CVR,
                    "idType": "CVR",
                    "status": "REGISTERED",
                    "provider": ESDH_PROVIDER,
                    "name": "Aarhus Kommune",
                }
            ]
        )
    )
    await publish_contacts(
        stack.kafka(REGISTER_IDENTITY), read_contact_file(register, stack.pseudonyms)
    )
    peer = EsdhPeer()
    await peer.start()
    inbox = tmp_path_factory.mktemp("memo-inbox")
    (home / "connectors.toml").write_text(
        "[connectors.esdh]\n"
        f'cvr = "{AUTHORITY_CVR}"\nidentity = "{AUTHORITY}"\nprovider = "{ESDH_PROVIDER}"\n'
        f'receipts_url = "{peer.url}/receipts"\njournal_url = "{peer.url}/journal"\n'
        f'inbox_dir = "{inbox}"\npoll_s = 0.2\nretry_max_s = 1.0\n'
    )
    await stack.apply_acls()  # the new identities and connector get their rights
    host = await build_service(
        "connector", stack.settings, connector="esdh", group_suffix=f".{uuid.uuid4().hex[:8]}"
    )
    await host.start()
    await asyncio.sleep(1)  # the connector's register sees the authority's record
    async with aiohttp.ClientSession() as session:
        try:
            yield Esdh(host, peer, inbox, stack, session)
        finally:
            await host.stop()
            await peer.stop()


def free_http_base(first: int) -> int:
    """A free range of 30 HTTP ports from ``first`` on for a ``dp2 up`` stack: the
    services' ports and the local capture's SMTP port (DP2_PORT_BASE + 25). Each test
    file starts at its own ``first``, so stacks of different tests never overlap; all
    lie below the kernel's ephemeral range, where an outgoing connection could take a
    port between the check and the bind. They lie above the ports local brokers take
    (LOCAL_KAFKA_PORTS), since a test checks its HTTP ports before its broker binds."""
    assert first >= LOCAL_KAFKA_PORTS.stop, "below it, a test's broker could take the ports"
    for base in range(first, ephemeral_ports_start() - 30, 59):
        if all(port_is_free(base + i) for i in range(30)):
            return base
    raise AssertionError("no free port range")


def run_dp2(
    env: dict[str, str], *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``dp2 ARGS`` as a user runs it (``python -m brokers.cli``), in ``env``; output
    captured as text, the exit code left to the test."""
    return subprocess.run(
        [sys.executable, "-m", "brokers.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
