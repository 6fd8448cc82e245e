"""Issue 15: each bad input is refused with its own reason code, by pure rules and stores.

The Kafka paths of the same inputs are in tests/integration/test_bad_inputs.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import ConsumerRecord
from prometheus_client import CollectorRegistry

from brokers.contacts.records import ContactFileError, _check_id
from brokers.router.schedule import ScheduleStore
from brokers.runtime.metrics import ServiceMetrics
from brokers.runtime.settings import Settings
from brokers.runtime.worker import KafkaWorker
from brokers.security import signing
from brokers.security.pki import Pki
from brokers.security.trust import TrustStore
from brokers.validator.rules import (
    Rejection,
    check_filenames,
    check_limits,
    check_message_uuid,
)
from brokers.validator.service import Validator
from brokers.validator.submissions import SqliteSubmissionLog
from connectors.apps import AccessError
from connectors.apps import _int as apps_int
from connectors.esdh.connector import _drop as esdh_drop
from connectors.esdh.store import EsdhStore
from connectors.folders import UnsafePathError, folder_name, inside, uuid_file_name
from connectors.forms import SubmissionError, _check_case_id, _inline_attachments
from connectors.mailbox import MailboxStore
from connectors.print.handover import drop as print_drop
from connectors.print.store import Job, PrintStore
from connectors.sdk import MessageError, build_message, check_plain
from schemas import codec
from schemas.errors import ConfigError, Dp2Error, MalformedRecordError
from schemas.models import (
    Encryption,
    Envelope,
    File,
    IdType,
    InlineContent,
    LifecycleEvent,
    LifecycleState,
    MainDocument,
    MessageBody,
    MessageHeader,
    MessageType,
    Recipient,
    Sender,
    TechnicalDocument,
)
from schemas.values import (
    canonical_uuid,
    decode_base64_strict,
    filename_problem,
    is_ascii_digits,
    is_message_uuid,
    parse_ascii_int,
)
from schemas.vocabulary import provider_topic
from tracing.access import Users
from tracing.api import TraceService, make_app
from tracing.deadletters import DeadLetterStore
from tracing.store import SqliteTraceStore

NOW = datetime(2026, 3, 12, 10, 0, tzinfo=UTC)
UUID = "7d9d68d3-e0ff-4cab-90f8-ef47c0ec162b"
NON_ASCII_NUMBERS = ["²", "٣", "\uff11\uff10", "1_0", "+5", " 5", "5 ", "-1", "", "٨٤٧٠"]


# --- values: one spelling each ----------------------------------------------------------
@pytest.mark.parametrize("text", NON_ASCII_NUMBERS)
def test_only_ascii_digits_are_a_number(text: str) -> None:
    """Superscripts, Arabic-Indic and full-width digits, signs, spaces and underscores are
    no number, though str.isdigit or int() accept some of them."""
    assert parse_ascii_int(text) is None and not is_ascii_digits(text)


def test_ascii_digits_are_read_with_their_length() -> None:
    """Plain ASCII digits are read, and a length, when asked, must match exactly."""
    assert parse_ascii_int("0042") == 42
    assert is_ascii_digits("29189846", 8) and not is_ascii_digits("2918984", 8)


def test_message_uuids_have_one_canonical_form() -> None:
    """Upper case folds to lower case (ASCII only); only the canonical v4 form is a UUID."""
    assert canonical_uuid(UUID.upper()) == UUID
    assert canonical_uuid("İ-X") == "İ-x"  # non-ASCII is left alone, length kept
    assert is_message_uuid(UUID)
    for bad in (UUID.upper(), "{" + UUID + "}", UUID.replace("-", ""), "/../../x", ".."):
        assert not is_message_uuid(bad), bad
    assert not is_message_uuid("7d9d68d3-e0ff-1cab-90f8-ef47c0ec162b")  # version 1


@pytest.mark.parametrize("text", ["SGVq=", "SGVq==", "SGV=", "SGVr\n", "SG Vq", "SGVq===", "S"])
def test_base64_is_strict_about_padding_and_alphabet(text: str) -> None:
    """Excess or missing padding, stray bits, whitespace and junk are not base64."""
    with pytest.raises(ValueError):
        decode_base64_strict(text)


def test_base64_in_its_canonical_form_decodes() -> None:
    """The one spelling of each byte string decodes to it."""
    assert decode_base64_strict("SGVq") == b"Hej"
    assert decode_base64_strict("SGU=") == b"He"
    assert decode_base64_strict("") == b""


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("..", "UNSAFE_FILENAME"),
        (".", "UNSAFE_FILENAME"),
        ("", "UNSAFE_FILENAME"),
        ("   ", "UNSAFE_FILENAME"),
        ("a/b.pdf", "INVALID_FILENAME"),
        ("..\\x.pdf", "INVALID_FILENAME"),
        ("brev\0.pdf", "INVALID_FILENAME"),
        ("brev\u2028.pdf", "INVALID_FILENAME"),
        ("brev\u00a0.pdf", "INVALID_FILENAME"),
        ("brev\x1b.pdf", "INVALID_FILENAME"),
    ],
)
def test_unsafe_file_names_have_their_code(name: str, code: str) -> None:
    """Dot-only and empty names are UNSAFE_FILENAME; separators and control characters
    INVALID_FILENAME; and the message never repeats the name."""
    problem = filename_problem(name)
    assert problem is not None and problem.code == code
    assert name.strip() == "" or name not in problem.message


def test_ordinary_file_names_pass() -> None:
    """Spaces, dots inside and Danish letters are fine."""
    for name in ("afgørelse 2026.pdf", "..brev.txt", "a.b.c", "Æblegrød.html"):
        assert filename_problem(name) is None


# --- the models hold UUIDs in lower case ---------------------------------------------------
def _plain(message_uuid: str = UUID) -> Envelope:
    return build_message(
        sender_cvr="29189846",
        sender_label="Aarhus Kommune",
        recipient_id="0101901234",
        label="Afgørelse",
        message_uuid=message_uuid,
    )


def test_a_model_folds_its_message_uuid() -> None:
    """An envelope, a reply and a lifecycle event built with an upper-case UUID hold it in
    lower case."""
    assert _plain(UUID.upper()).header.messageUUID == UUID
    event = LifecycleEvent(
        eventId="e",
        messageUUID=UUID.upper(),
        relatedMessageUUID=UUID.upper(),
        state=LifecycleState.SUBMITTED,
        actor="a",
        occurredAt=NOW,
        sequence=1,
    )
    assert event.messageUUID == UUID and event.relatedMessageUUID == UUID


def test_upper_case_on_the_wire_decodes_to_the_same_envelope() -> None:
    """Bytes whose UUID was written in upper case decode to the envelope with it in lower
    case, so the same letter is one message (and its lower-case signature still holds)."""
    raw = codec.encode(_plain())
    upper = raw.replace(UUID.encode(), UUID.upper().encode())
    assert upper != raw
    assert codec.decode(upper, Envelope) == codec.decode(raw, Envelope)


# --- the validator's rules -----------------------------------------------------------------
def _file(name: str = "brev.txt") -> File:
    return File(
        encodingFormat="text/plain",
        filename=name,
        content=InlineContent(data=b"x"),
        nonce=b"n" * 12,
    )


def sealed(
    *,
    message_type: MessageType = MessageType.DIGITALPOST,
    created: datetime = NOW,
    reply_by: datetime | None = None,
    due: date | None = None,
    files: list[File] | None = None,
    technical: int = 0,
    with_body: bool = True,
) -> Envelope:
    """A sealed-looking envelope that passes every rule unless told otherwise."""
    body = MessageBody(
        createdDateTime=created,
        mainDocument=MainDocument(file=files if files is not None else [_file()]),
        technicalDocument=[TechnicalDocument(file=[_file("data.xml")]) for _ in range(technical)],
    )
    return Envelope(
        memoVersion="1.2",
        header=MessageHeader(
            messageType=message_type,
            messageUUID=UUID,
            label="Afgørelse",
            notification="Du har post",
            replyByDateTime=reply_by,
            doNotDeliverUntilDate=due,
            sender=Sender(senderID="29189846", idType=IdType.CVR, label="Aarhus"),
            recipient=Recipient(recipientID="psn-abc", idType=IdType.CPR),
        ),
        body=body if with_body else None,
        encryption=Encryption(
            contentAlgorithm="AES-256-GCM",
            keyWrapAlgorithm="X25519-HKDF-SHA256-AESKW",
            wrappedKey=b"k",
            recipientKeyId="kid",
        ),
    )


def code_of(envelope: Envelope, now: datetime = NOW) -> str | None:
    try:
        check_limits(envelope, now)
    except Rejection as exc:
        assert len(exc.hint) > 20, "every rejection says how to fix it"
        return exc.reason_code
    return None


def test_a_good_sealed_envelope_passes() -> None:
    """The baseline of the cases below passes every rule."""
    assert code_of(sealed()) is None
    assert code_of(sealed(message_type=MessageType.NEMSMS, with_body=False)) is None


def test_a_nemsms_scheduled_a_century_ahead_is_too_far() -> None:
    """NemSMS is held to the same one-year schedule limit as a letter (it returned early)."""
    far = (NOW + timedelta(days=36500)).date()
    nemsms = sealed(message_type=MessageType.NEMSMS, with_body=False, due=far)
    assert code_of(nemsms) == "SCHEDULE_TOO_FAR"
    assert code_of(sealed(due=far)) == "SCHEDULE_TOO_FAR"
    assert code_of(sealed(due=(NOW + timedelta(days=30)).date())) is None


@pytest.mark.parametrize(
    ("created", "code"),
    [
        (datetime(2999, 1, 1, tzinfo=UTC), "CREATED_IN_FUTURE"),
        (NOW + timedelta(minutes=16), "CREATED_IN_FUTURE"),
        (NOW + timedelta(minutes=14), None),  # clock skew allowed
        (datetime(1900, 1, 1, tzinfo=UTC), "CREATED_TOO_OLD"),
        (NOW - timedelta(days=367), "CREATED_TOO_OLD"),
        (NOW - timedelta(days=365), None),
    ],
)
def test_created_date_time_is_within_its_bounds(created: datetime, code: str | None) -> None:
    """createdDateTime may be 15 minutes ahead (clock skew) and 366 days old, no more."""
    assert code_of(sealed(created=created)) == code


def test_reply_by_before_created_is_refused() -> None:
    """A reply deadline before the letter was made is REPLY_BY_BEFORE_CREATED."""
    assert code_of(sealed(reply_by=NOW - timedelta(seconds=1))) == "REPLY_BY_BEFORE_CREATED"
    assert code_of(sealed(reply_by=NOW + timedelta(days=14))) is None


def test_document_counts_are_limited() -> None:
    """Eleven technical documents, or eleven files in one document, are refused."""
    assert code_of(sealed(technical=10)) is None
    assert code_of(sealed(technical=11)) == "TOO_MANY_TECHNICAL_DOCUMENTS"
    assert code_of(sealed(files=[_file(f"f{i}.txt") for i in range(10)])) is None
    assert code_of(sealed(files=[_file(f"f{i}.txt") for i in range(50)])) == "TOO_MANY_FILES"


@pytest.mark.parametrize(
    ("name", "code"),
    [("..", "UNSAFE_FILENAME"), ("a\0b", "INVALID_FILENAME"), ("x" * 257, "TEXT_TOO_LONG")],
)
def test_the_validator_refuses_unsafe_file_names(name: str, code: str) -> None:
    """A letter with a file named ``..``, with NUL, or over 256 characters is refused."""
    assert code_of(sealed(files=[_file(name)])) == code


def test_cvr_must_be_ascii_digits() -> None:
    """A sender CVR written in Arabic-Indic digits is INVALID_CVR."""
    envelope = sealed()
    arabic = dataclasses.replace(
        envelope,
        header=dataclasses.replace(
            envelope.header,
            sender=Sender(senderID="٢٩١٨٩٨٤٦", idType=IdType.CVR, label="Aarhus"),
        ),
    )
    assert code_of(arabic) == "INVALID_CVR"


def test_check_message_uuid_refuses_paths() -> None:
    """A UUID that would be a path is INVALID_MESSAGE_UUID; the canonical v4 passes."""
    check_message_uuid(UUID)
    with pytest.raises(Rejection) as caught:
        check_message_uuid("/../../x")
    assert caught.value.reason_code == "INVALID_MESSAGE_UUID"
    with pytest.raises(Rejection):
        check_filenames([_file("..")])


# --- the validator service -------------------------------------------------------------------
def record(value: bytes | None, offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("dp2.submitted", 0, offset, 0, 0, b"psn-abc", value, None, 0, 0, [])  # type: ignore[arg-type]


async def test_an_upper_case_resubmission_is_a_duplicate(tmp_path: Path) -> None:
    """The same letter again with its UUID in upper case is DUPLICATE on the lower-case
    timeline, keyed by the lower-case UUID, and is not forwarded."""
    log = SqliteSubmissionLog(tmp_path / "validator.sqlite")
    log.record(UUID, "dp2.submitted/0/1", "ACCEPTED", None)
    pki = Pki(tmp_path / "pki")
    pki.init()
    aarhus = pki.issue_sender("29189846", "aarhus")
    validator = Validator(TrustStore(tmp_path / "pki"), log, directory={})
    # Signed as usual: the signature covers the canonical (lower-case) UUID, so the
    # upper-case spelling of the same bytes still verifies, and is the same letter.
    signed = signing.sign_envelope(sealed(), aarhus.private_key, aarhus.fingerprint)
    raw = codec.encode(signed).replace(UUID.encode(), UUID.upper().encode())
    outputs = await validator.handle(record(raw, 2))
    assert len(outputs) == 1 and outputs[0].key == UUID.encode()
    event = codec.decode(outputs[0].value, LifecycleEvent)
    assert event.state is LifecycleState.DUPLICATE and event.messageUUID == UUID
    assert log.first(UUID.upper()) == log.first(UUID)
    log.close()


async def test_a_tombstone_is_malformed_for_the_validator(tmp_path: Path) -> None:
    """A record without a value is MALFORMED_RECORD, raised for the worker to dead-letter."""
    log = SqliteSubmissionLog(tmp_path / "validator.sqlite")
    validator = Validator(TrustStore(tmp_path / "pki"), log, directory={})
    with pytest.raises(MalformedRecordError) as caught:
        await validator.handle(record(None, 1))
    assert "tombstone" in caught.value.message
    log.close()


async def test_a_path_as_uuid_is_rejected_under_its_own_id(tmp_path: Path) -> None:
    """A messageUUID like /../../x is REJECTED INVALID_MESSAGE_UUID and not recorded."""
    log = SqliteSubmissionLog(tmp_path / "validator.sqlite")
    validator = Validator(TrustStore(tmp_path / "pki"), log, directory={})
    envelope = sealed()
    bad = dataclasses.replace(
        envelope, header=dataclasses.replace(envelope.header, messageUUID="/../../x")
    )
    outputs = await validator.handle(record(codec.encode(bad), 1))
    event = codec.decode(outputs[0].value, LifecycleEvent)
    assert event.state is LifecycleState.REJECTED and event.reasonCode == "INVALID_MESSAGE_UUID"
    assert log.first("/../../x") is None
    log.close()


# --- the worker keeps a tombstone a tombstone ----------------------------------------------
class FakeProducer:
    """Records what would be produced; every send is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None]] = []

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value, key))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send_and_wait(
        self, topic: str, value: bytes | None, key: bytes | None = None, headers: Any = None
    ) -> None:
        self.sent.append((topic, value, key))


async def test_the_dead_letter_of_a_tombstone_is_a_tombstone() -> None:
    """The worker parks a tombstone on dp2.deadletter with no value, not an empty one."""
    producer = FakeProducer()
    worker = KafkaWorker(
        "validator",
        cast(Any, None),
        ["dp2.submitted"],
        group_id="g",
        handler=cast(Any, None),
        metrics=ServiceMetrics(CollectorRegistry()),
        producer=cast(Any, producer),
    )
    outputs = worker._dead_letter(record(None, 7), MalformedRecordError("a tombstone"))
    assert outputs[0].tombstone
    await worker._produce(outputs)
    sent = {topic: value for topic, value, *_ in producer.sent}
    assert set(sent) == {"dp2.deadletter", "dp2.lifecycle"}
    assert sent["dp2.deadletter"] is None and sent["dp2.lifecycle"] is not None


async def test_dead_letters_keep_and_redrive_tombstones(tmp_path: Path) -> None:
    """An old store (value NOT NULL, an upper-case UUID) is migrated; a parked tombstone is
    listed as one and re-driven as one, an empty value as an empty value."""
    path = tmp_path / "deadletters.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE deadletters (source TEXT PRIMARY KEY, topic TEXT NOT NULL, service TEXT,"
        " reason_code TEXT, reason TEXT, message_uuid TEXT, key BLOB, value BLOB NOT NULL,"
        " headers TEXT NOT NULL, parked_at TEXT NOT NULL, redriven_at TEXT, redriven_by TEXT)"
    )
    old.execute(
        "INSERT INTO deadletters VALUES ('dp2.submitted/0/1', 'dp2.submitted', 'validator',"
        " 'MALFORMED_RECORD', 'r', ?, NULL, x'', '[]', '2025-01-01', NULL, NULL)",
        (UUID.upper(),),
    )
    old.commit()
    old.close()
    store = DeadLetterStore(path)
    migrated = store.get("dp2.submitted/0/1")
    assert migrated is not None and migrated.message_uuid == UUID and not migrated.tombstone
    headers = [("dp2-source", b"dp2.submitted/0/2"), ("dp2-message-uuid", UUID.upper().encode())]
    tombstone = ConsumerRecord("dp2.deadletter", 0, 5, 0, 0, b"k", None, None, 0, 0, headers)  # type: ignore[arg-type]
    assert store.park(tombstone)
    parked = store.get("dp2.submitted/0/2")
    assert parked is not None and parked.tombstone and parked.size == 0
    assert parked.message_uuid == UUID and parked.as_json()["tombstone"] is True
    producer = FakeProducer()
    await store.redrive("dp2.submitted/0/2", cast(Any, producer), "ops")
    await store.redrive("dp2.submitted/0/1", cast(Any, producer), "ops")
    assert producer.sent == [("dp2.submitted", None, b"k"), ("dp2.submitted", b"", None)]
    store.close()


# --- stores: one row per message, also after an upgrade --------------------------------------
def _forget_migrations(path: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Make a store look as if written before UUIDs were folded."""
    db = sqlite3.connect(path)
    for sql, params in statements:
        db.execute(sql, params)
    db.execute("DELETE FROM dp2_migrations")
    db.commit()
    db.close()


def test_the_submission_log_merges_spellings_keeping_the_first(tmp_path: Path) -> None:
    """Two spellings of one UUID become one row: the first submission's outcome stands."""
    path = tmp_path / "validator.sqlite"
    SqliteSubmissionLog(path).close()
    _forget_migrations(
        path,
        (
            "INSERT INTO submissions VALUES (?, 'a/0/1', 'ACCEPTED', NULL, '2026-01-01')",
            (UUID.upper(),),
        ),
        ("INSERT INTO submissions VALUES (?, 'a/0/2', 'REJECTED', 'X', '2026-01-02')", (UUID,)),
    )
    log = SqliteSubmissionLog(path)
    assert log.first(UUID) == ("a/0/1", "ACCEPTED", None, "2026-01-01")
    count = log._db.execute("SELECT COUNT(*) FROM submissions").fetchone()[0]
    assert count == 1
    log.close()


def test_the_mailbox_keeps_one_letter_per_uuid(tmp_path: Path) -> None:
    """A letter stored under two spellings is one letter after the upgrade, and a new
    upper-case put is a repeat."""
    path = tmp_path / "mailbox.sqlite"
    store = MailboxStore(path)
    assert store.put(_plain())
    store.close()
    _forget_migrations(
        path,
        (
            "INSERT INTO messages SELECT upper(message_uuid), recipient_id, sender_id, label,"
            " '2099-01-01', envelope FROM messages",
            (),
        ),
    )
    store = MailboxStore(path)
    assert store.count() == 1 and store.count(UUID.upper()) == 1
    assert not store.put(_plain(UUID.upper()))
    assert store.get(UUID.upper()) is not None
    store.close()


def test_the_schedule_keeps_a_released_letter_released(tmp_path: Path) -> None:
    """Of two spellings of a held letter, the released one stays: it is never due again."""
    path = tmp_path / "router.sqlite"
    store = ScheduleStore(path)
    store.hold(UUID, date(2026, 1, 1), "29189846", "psn-a", b"raw")
    store.mark(UUID, "released")
    store.close()
    _forget_migrations(
        path,
        (
            "INSERT INTO scheduled (message_uuid, due, sender_id, recipient_ref, envelope)"
            " VALUES (?, '2026-01-01', '29189846', 'psn-a', x'00')",
            (UUID.upper(),),
        ),
    )
    store = ScheduleStore(path)
    assert store.due(date(2027, 1, 1)) == []
    assert store.sender_of(UUID.upper()) == ("29189846", "released")
    store.close()


def test_the_trace_merges_the_timelines_of_two_spellings(tmp_path: Path) -> None:
    """Events stored under an upper-case UUID join the lower-case timeline on upgrade."""
    path = tmp_path / "trace.sqlite"
    store = SqliteTraceStore(path)
    for n, state in enumerate((LifecycleState.SUBMITTED, LifecycleState.ACCEPTED)):
        store.add(
            LifecycleEvent(
                eventId=f"e{n}",
                messageUUID=UUID,
                state=state,
                actor="a",
                occurredAt=NOW + timedelta(seconds=n),
                sequence=n,
            )
        )
    store.close()
    _forget_migrations(
        path,
        ("UPDATE events SET message_uuid = upper(message_uuid) WHERE event_id = 'e1'", ()),
        ("INSERT INTO summaries SELECT upper(message_uuid), 'ACCEPTED', NULL, NULL, 0, 0, 1,"
         " NULL FROM summaries", ()),
    )  # fmt: skip
    store = SqliteTraceStore(path)
    summary = store.summary(UUID.upper())
    assert summary is not None and summary.eventCount == 2
    assert summary.state is LifecycleState.ACCEPTED
    assert [e.eventId for e in store.timeline(UUID.upper())] == ["e0", "e1"]
    assert len(store.search().items) == 1
    store.close()


def test_the_print_queue_keeps_the_printed_job(tmp_path: Path) -> None:
    """Of two spellings of a print job, the printed one stays: it is never printed twice."""
    path = tmp_path / "print.sqlite"
    store = PrintStore(path)
    store.queue(
        UUID,
        sender_id="s",
        recipient_ref="r",
        pages=1,
        pdf_file=f"{UUID}.pdf",
        pdf_sha256="0" * 64,
        meta={},
    )
    store.printed(UUID)
    store.close()
    _forget_migrations(
        path,
        (
            "INSERT INTO jobs (message_uuid, state, pages, created_at)"
            " VALUES (?, 'queued', 1, 'x')",
            (UUID.upper(),),
        ),
    )
    store = PrintStore(path)
    known = store.known(UUID.upper())
    assert known is not None and known.state == "printed"
    assert store.due(1e12) == []
    store.close()


def test_the_esdh_store_merges_sent_and_journal_rows(tmp_path: Path) -> None:
    """A message sent and journaled under two spellings is one of each after the upgrade."""
    path = tmp_path / "esdh.sqlite"
    store = EsdhStore(path)
    assert store.claim(UUID, "d", "SAG-1", None) == ("new", None)
    store.close()
    _forget_migrations(
        path,
        (
            "INSERT INTO sent VALUES (?, 'other', NULL, NULL, 'sent', NULL, '2099-01-01')",
            (UUID.upper(),),
        ),
        (
            "INSERT INTO journal (message_uuid, sender_ref, memo, received_at)"
            " VALUES (?, 's', x'00', 'x')",
            (UUID.upper(),),
        ),
    )
    store = EsdhStore(path)
    assert store.claim(UUID.upper(), "d", "SAG-1", None)[0] == "duplicate"
    assert store.case_of(UUID.upper()) == ("SAG-1", None)
    assert [e["messageUUID"] for e in store.journal_list("all")] == [UUID]
    assert not store.queue_journal(
        UUID, case_id=None, case_system=None, reply_to=None, sender_ref="s", memo=b"x"
    )
    store.close()


# --- folder drops -------------------------------------------------------------------------
def test_inside_refuses_names_that_leave_the_folder(tmp_path: Path) -> None:
    """``..``, separators, absolute names and symbolic links out of the folder are refused."""
    folder = tmp_path / "outbox"
    folder.mkdir()
    (folder / "out").symlink_to(tmp_path)
    assert inside(folder, "brev.pdf") == folder / "brev.pdf"
    for name in ("..", ".", "", "../x.pdf", "/etc/passwd", "a\\b", "out"):
        with pytest.raises(UnsafePathError) as caught:
            inside(folder, name) if name != "out" else inside(folder, name, "x.pdf")
        assert caught.value.reason_code == "UNSAFE_PATH"


def test_file_names_come_from_version_4_uuids_only() -> None:
    """A UUID like /../../x names no file; a canonical one names <uuid>.pdf."""
    assert uuid_file_name(UUID, ".pdf") == f"{UUID}.pdf"
    for bad in ("/../../x", "..", UUID.upper()):
        with pytest.raises(UnsafePathError):
            uuid_file_name(bad, ".pdf")


def test_case_ids_become_safe_folder_names() -> None:
    """``..`` is ``__``, separators are ``_`` as before, and a long id stays one folder."""
    assert folder_name("..") == "__"
    assert folder_name(".hidden") == "_hidden"
    assert folder_name("24/1234") == "24_1234"
    assert folder_name("SAG-2026-0042") == "SAG-2026-0042"
    long_a, long_b = folder_name("x" * 300 + "a"), folder_name("x" * 300 + "b")
    assert len(long_a) <= 120 and long_a != long_b


def test_the_print_drop_writes_nothing_outside_its_outbox(tmp_path: Path) -> None:
    """A job whose UUID is a path is refused before any file is written."""
    outbox = tmp_path / "outbox"
    spooled = tmp_path / "spooled.pdf"  # the rendered letter in the connector's spool
    spooled.write_bytes(b"%PDF")
    job = Job("../../escaped", "queued", "s", "r", 1, {}, 0)
    with pytest.raises(UnsafePathError):
        print_drop(outbox, job, spooled)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["outbox", "spooled.pdf"]
    print_drop(outbox, dataclasses.replace(job, message_uuid=UUID), spooled)
    assert sorted(p.name for p in outbox.iterdir()) == [f"{UUID}.json", f"{UUID}.pdf"]
    assert (outbox / f"{UUID}.pdf").read_bytes() == b"%PDF"


def test_the_journal_drop_keeps_a_dot_dot_case_inside(tmp_path: Path) -> None:
    """A case id ``..`` journals into ``journal/__``, and a bad UUID writes nothing."""
    journal = tmp_path / "journal"
    journal.mkdir()
    case_dir = inside(journal, folder_name(".."))
    esdh_drop(case_dir, UUID, b"<x/>", {})
    assert (journal / "__" / f"{UUID}.xml").read_bytes() == b"<x/>"
    with pytest.raises(UnsafePathError):
        esdh_drop(journal / "__", "../../escaped", b"<x/>", {})
    assert not list(tmp_path.glob("escaped*")) and sorted(p.name for p in tmp_path.iterdir()) == [
        "journal"
    ]


# --- edges: forms, SDK, contacts, apps, settings, vocabulary, trace API --------------------
def test_forms_refuse_loose_base64() -> None:
    """An attachment whose content is ``SGVq=`` is INVALID_BASE64; ``SGVq`` is Hej."""
    with pytest.raises(SubmissionError) as caught:
        _inline_attachments({"attachments": [{"filename": "a.txt", "content": "SGVq="}]})
    assert caught.value.reason_code == "INVALID_BASE64"
    [document] = _inline_attachments({"attachments": [{"filename": "a.txt", "content": "SGVq"}]})
    assert document.data == b"Hej"


@pytest.mark.parametrize("case_id", ["..", ".", " .. ", "a\nb", "a\0b", "x" * 257])
def test_forms_refuse_case_ids_that_cannot_name_a_case(case_id: str) -> None:
    """Dot-only, control characters and over-long case ids are INVALID_CASE_ID."""
    with pytest.raises(SubmissionError) as caught:
        _check_case_id(case_id)
    assert caught.value.reason_code == "INVALID_CASE_ID"


def test_forms_take_ordinary_case_ids() -> None:
    """Case numbers with slashes, dots and spaces are case ids."""
    for case_id in ("24/1234", "SAG-2026-0042", "27.12.00-G01-1-24", "Sag 12"):
        _check_case_id(case_id)


def test_identifiers_in_other_digits_are_refused_at_every_edge() -> None:
    """Arabic-Indic digits are no CPR/CVR for the SDK, the contact file or the apps API."""
    arabic_cvr = "٢٩١٨٩٨٤٦"
    message = dataclasses.replace(
        _plain(),
        header=dataclasses.replace(
            _plain().header, sender=Sender(senderID=arabic_cvr, idType=IdType.CVR, label="x")
        ),
    )
    with pytest.raises(MessageError) as caught:
        check_plain(message)
    assert caught.value.reason_code == "INVALID_CVR"
    with pytest.raises(ContactFileError):
        _check_id(arabic_cvr, IdType.CVR, 1)
    with pytest.raises(AccessError):
        apps_int("٣", "limit", 1, 100)
    assert apps_int("3", "limit", 1, 100) == 3


@pytest.mark.parametrize("value", ["٨٤٧٠", "8_470", "+8470"])
def test_settings_read_ascii_digits_only(value: str, tmp_path: Path) -> None:
    """DP2_PORT_BASE in other digits, with an underscore or a sign is BAD_CONFIG."""
    with pytest.raises(ConfigError):
        Settings.from_env({"DP2_HOME": str(tmp_path), "DP2_PORT_BASE": value})


def test_provider_ids_are_ascii() -> None:
    """A provider id with a non-ASCII letter cannot name a Kafka topic."""
    with pytest.raises(Dp2Error) as caught:
        provider_topic("mitpøst")
    assert caught.value.reason_code == "BAD_PROVIDER_ID"


@dataclasses.dataclass
class TraceApi:
    """An HTTP client of the trace API and the operator's bearer header it sends."""

    client: Any
    auth: dict[str, str]


@pytest.fixture
async def trace_api(tmp_path: Path) -> Any:
    """The trace API over an in-memory store holding one message, with an operator token."""
    with SqliteTraceStore(":memory:") as store:
        service = TraceService(store, CollectorRegistry())
        service.ingest(
            LifecycleEvent(
                eventId="e",
                messageUUID=UUID,
                state=LifecycleState.SUBMITTED,
                actor="a",
                occurredAt=NOW,
                sequence=1,
            )
        )
        users = Users(tmp_path)
        app: web.Application = make_app(service, users)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield TraceApi(client, {"Authorization": f"Bearer {users.local_token()}"})


@pytest.mark.parametrize("limit", ["²", "٣", "\uff11\uff10", "1_0", "+5", " 5"])
async def test_the_trace_api_answers_400_for_a_limit_in_other_digits(
    trace_api: TraceApi, limit: str
) -> None:
    """GET /messages?limit=² is 400 BAD_QUERY with a hint, never a 500."""
    response = await trace_api.client.get(
        "/messages", params={"limit": limit}, headers=trace_api.auth
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["reasonCode"] == "BAD_QUERY" and error["hint"]


async def test_the_trace_api_finds_a_message_by_its_upper_case_uuid(trace_api: TraceApi) -> None:
    """GET /messages/{UUID in upper case} is the same message."""
    response = await trace_api.client.get(f"/messages/{UUID.upper()}", headers=trace_api.auth)
    assert response.status == 200
    assert (await response.json())["messageUUID"] == UUID
