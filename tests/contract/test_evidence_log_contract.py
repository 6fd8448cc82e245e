"""The VerifiableLog contract, the same for SQLite and PostgreSQL: gap-free indices assigned
by the store, each event logged once, heads and receipts that verify offline, and two
log instances on one store that append at once and still give one log that verifies.

Each test runs once per backend; the PostgreSQL one is a fresh database on the
session's real server (tests/conftest.py).
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from cryptography import x509

from brokers.security import signing
from brokers.security.pki import Identity, Pki
from schemas import codec
from schemas.models import LifecycleEvent, LifecycleState
from tracing.evidence import LogInvalid, verify_log, verify_receipt
from tracing.evidence_log import EvidenceLog, PgEvidenceLog, VerifiableLog

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@dataclass(frozen=True)
class Parties:
    ca: x509.Certificate
    log: Identity  # service:dp2-tracing, signs the heads
    validator: Identity  # signs the events


@pytest.fixture(scope="module")
def parties(tmp_path_factory: pytest.TempPathFactory) -> Parties:
    """A PKI of the module: the log's identity and the validator's."""
    pki = Pki(tmp_path_factory.mktemp("pki"))
    ca = pki.init()
    return Parties(ca, pki.issue_service("dp2-tracing"), pki.issue_service("dp2-validator"))


@dataclass
class Backend:
    """How a test opens the backend's log (each call: the same storage) and names it."""

    new: Callable[[], VerifiableLog]  # a log the caller closes
    open: Callable[[], VerifiableLog]  # a log closed after the test
    source: Path | str  # what verify_log reads
    tamper: Callable[[int, bytes], None]  # rewrite entry idx's event, leaf kept consistent


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    opened: list[VerifiableLog] = []

    def tracked(new: Callable[[], VerifiableLog]) -> Callable[[], VerifiableLog]:
        def open_() -> VerifiableLog:
            opened.append(new())
            return opened[-1]

        return open_

    if request.param == "sqlite":
        path = tmp_path / "evidence.sqlite"

        def new() -> VerifiableLog:
            return EvidenceLog(path)

        def tamper(idx: int, raw: bytes) -> None:
            with sqlite3.connect(path) as db:
                db.execute("UPDATE entries SET event = ? WHERE idx = ?", (raw, idx))

        yield Backend(new, tracked(new), path, tamper)
    else:
        url = request.getfixturevalue("database_url")

        def new_pg() -> VerifiableLog:
            return PgEvidenceLog(url)

        def tamper_pg(idx: int, raw: bytes) -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("UPDATE evidence.entries SET event = %s WHERE idx = %s", (raw, idx))

        yield Backend(new_pg, tracked(new_pg), url, tamper_pg)
    for log in opened:
        log.close()


def signed_event(parties: Parties, message: str, n: int = 0) -> tuple[LifecycleEvent, bytes]:
    """An ACCEPTED of ``message`` signed by the validator, and its bytes as read."""
    event = LifecycleEvent(
        eventId=str(uuid.uuid4()),
        messageUUID=message,
        state=LifecycleState.ACCEPTED,
        actor="validator",
        occurredAt=datetime.now(UTC),
        sequence=n,
        senderID="29189846",
    )
    who = parties.validator
    signed = signing.sign_event(event, who.private_key, who.fingerprint)
    return signed, codec.encode(signed)


def append(log: VerifiableLog, parties: Parties, message: str, n: int = 0) -> int:
    event, raw = signed_event(parties, message, n)
    return log.append(event, raw, parties.validator.certificate)


def new_message() -> str:
    return str(uuid.uuid4())


def test_indices_run_from_zero_and_an_event_is_logged_once(
    backend: Backend, parties: Parties
) -> None:
    """Appends get 0, 1, 2...; the same event appended again keeps its first index."""
    log = backend.open()
    assert log.size == 0
    event, raw = signed_event(parties, new_message())
    assert [append(log, parties, new_message(), i) for i in range(3)] == [0, 1, 2]
    assert log.append(event, raw, parties.validator.certificate) == 3
    assert log.append(event, raw, parties.validator.certificate) == 3
    assert log.size == 4


def test_heads_cover_everything_logged_and_the_log_verifies(
    backend: Backend, parties: Parties
) -> None:
    """No head before the first entry; a head covers all entries, is signed once per size,
    and dp2 log verify's check passes over the stored log."""
    log = backend.open()
    log.keep_certificate(parties.log.certificate)
    assert log.sign_head(parties.log) is None
    for i in range(5):
        append(log, parties, new_message(), i)
    head = log.sign_head(parties.log)
    assert head is not None and head.size == 5
    assert log.sign_head(parties.log) == head == log.latest_head()
    append(log, parties, new_message())
    later = log.sign_head(parties.log)
    assert later is not None and later.size == 6
    report = verify_log(backend.source, parties.ca)
    assert (report.entries, report.heads) == (6, 2)


def test_a_receipt_holds_every_event_of_its_message_and_verifies(
    backend: Backend, parties: Parties
) -> None:
    """A receipt names each event of the message, with proofs that verify offline."""
    log = backend.open()
    message = new_message()
    append(log, parties, message, 1)
    append(log, parties, new_message())
    append(log, parties, message, 2)
    assert log.receipt(new_message(), parties.log) is None
    doc = log.receipt(message.upper(), parties.log)
    assert doc is not None
    assert [e["index"] for e in doc["events"]] == [0, 2]
    assert len(verify_receipt(doc, parties.ca)) == 2


def test_a_receipt_of_batch_signed_events_verifies_offline(
    backend: Backend, parties: Parties
) -> None:
    """A service signs a produce round's events under one signature (signing.sign_events):
    the receipt of one message carries its events with their audit paths only, never
    the rest of their batch, and verifies with the CA alone; a batch-signed event
    changed in the log is refused."""
    log = backend.open()
    messages = [new_message() for _ in range(5)]
    events = [signed_event(parties, m, i)[0] for i, m in enumerate(messages)]
    who = parties.validator
    unsigned = [
        replace(
            e,
            attributes={k: v for k, v in e.attributes.items() if k not in ("signer", "signature")},
        )
        for e in events
    ]
    batch = signing.sign_events(unsigned, who.private_key, who.fingerprint)
    assert len({e.attributes["signature"] for e in batch}) == 1
    for event in batch:
        log.append(event, codec.encode(event), who.certificate)
    doc = log.receipt(messages[3], parties.log)
    assert doc is not None and len(doc["events"]) == 1
    [believed] = verify_receipt(doc, parties.ca)
    assert believed.messageUUID == messages[3] and "batchProof" in believed.attributes

    changed = replace(batch[3], state=LifecycleState.REJECTED)
    backend.tamper(3, codec.encode(changed))
    with pytest.raises(LogInvalid, match="entry 3"):
        verify_log(backend.source, parties.ca)


def test_a_rewritten_entry_is_named(backend: Backend, parties: Parties) -> None:
    """An entry whose event was changed in the store fails the check, by its index."""
    log = backend.open()
    log.keep_certificate(parties.log.certificate)
    for i in range(3):
        append(log, parties, new_message(), i)
    assert log.sign_head(parties.log) is not None
    event, _ = signed_event(parties, new_message())
    backend.tamper(1, codec.encode(replace(event, reasonText="rewritten")))
    with pytest.raises(LogInvalid, match="entry 1"):
        verify_log(backend.source, parties.ca)


def test_another_instance_sees_what_one_appended(backend: Backend, parties: Parties) -> None:
    """A log opened before another instance appended signs heads and receipts over those
    entries too: its leaves are never stale."""
    one, two = backend.open(), backend.open()
    append(two, parties, new_message())  # two's cache is ahead of one's
    message = new_message()
    assert append(one, parties, message) == 1
    head = two.sign_head(parties.log)
    assert head is not None and head.size == 2
    doc = two.receipt(message, parties.log)
    assert doc is not None and doc["treeHead"]["size"] == 2
    assert len(verify_receipt(doc, parties.ca)) == 1


def test_two_instances_appending_at_once_give_one_gap_free_log(
    backend: Backend, parties: Parties
) -> None:
    """Two logs on one store, appending 40 events each at the same time (and one event
    that both append), give 81 entries with indices 0..80 that verify, and heads signed
    by either instance verify too."""
    count = 40
    shared = signed_event(parties, new_message())
    start = threading.Barrier(2, timeout=60)
    indices: dict[int, list[int]] = {}
    failures: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            log = backend.new()  # in its thread: a SQLite connection stays in its thread
            try:
                start.wait()
                mine = [append(log, parties, new_message(), i) for i in range(count)]
                mine.append(log.append(*shared, parties.validator.certificate))
                log.keep_certificate(parties.log.certificate)
                assert log.sign_head(parties.log) is not None
                indices[n] = mine
            finally:
                log.close()
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)
            start.abort()  # the other thread stops waiting for this one

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert indices[0][-1] == indices[1][-1], "the shared event has one index"
    every = set(indices[0]) | set(indices[1])
    assert every == set(range(2 * count + 1))
    reader = backend.open()
    assert reader.size == 2 * count + 1
    assert reader.sign_head(parties.log) is not None
    report = verify_log(backend.source, parties.ca)
    assert report.entries == 2 * count + 1 and report.heads >= 1


def test_appends_in_a_batch_get_consecutive_indices_and_are_kept(
    backend: Backend, parties: Parties
) -> None:
    """The tracing worker appends a fetched batch inside ``batch()``: indices run on, an
    event appended twice inside keeps its first, and another log instance has them."""
    log = backend.open()
    event, raw = signed_event(parties, new_message())
    with log.batch():
        assert [append(log, parties, new_message(), i) for i in range(3)] == [0, 1, 2]
        assert log.append(event, raw, parties.validator.certificate) == 3
        assert log.append(event, raw, parties.validator.certificate) == 3
    assert backend.open().size == 4


def test_a_failed_sqlite_batch_leaves_no_entry_and_its_signer_is_kept_later(
    tmp_path: Path, parties: Parties
) -> None:
    """On SQLite a batch is one transaction: when it raises, no entry stays (the retry
    appends them again, from index 0), and the signer's certificate, inserted in the
    rolled-back transaction, is stored again so that receipts can carry it."""
    log = EvidenceLog(tmp_path / "evidence.sqlite")
    try:
        message = new_message()
        with pytest.raises(RuntimeError), log.batch():
            append(log, parties, message)
            raise RuntimeError("the produce round failed")
        assert log.size == 0
        assert append(log, parties, message) == 0
        receipt = log.receipt(message, parties.log)
        assert receipt is not None
        verify_receipt(receipt, parties.ca)
    finally:
        log.close()
