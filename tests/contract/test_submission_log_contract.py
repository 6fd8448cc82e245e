"""The SubmissionLog contract, the same for SQLite and PostgreSQL: the first submission of a
UUID stands, whichever spelling, store instance or validator instance sees it later.

Each test runs once per backend; the PostgreSQL one is a fresh database on the
session's real server (tests/conftest.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from brokers.security import signing
from brokers.security.pki import Pki
from brokers.security.trust import TrustStore
from brokers.validator.service import Validator
from brokers.validator.submissions import PgSubmissionLog, SqliteSubmissionLog, SubmissionLog
from schemas import codec
from schemas.models import LifecycleEvent, LifecycleState
from schemas.vocabulary import ACCEPTED_TOPIC
from tests.unit import test_bad_inputs_rules as rules_cases

UUID = rules_cases.UUID
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

Opener = Callable[[], SubmissionLog]


@pytest.fixture(params=BACKENDS)
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the backend's log; each call opens the same (at first empty) storage again."""
    opened: list[SubmissionLog] = []

    def open_() -> SubmissionLog:
        log: SubmissionLog
        if request.param == "sqlite":
            log = SqliteSubmissionLog(tmp_path / "validator.sqlite")
        else:
            log = PgSubmissionLog(request.getfixturevalue("database_url"))
        opened.append(log)
        return log

    yield open_
    for log in opened:
        log.close()


@pytest.fixture
def log(open_log: Opener) -> SubmissionLog:
    """A fresh, empty log of the backend."""
    return open_log()


def test_an_unknown_uuid_has_no_first_submission(log: SubmissionLog) -> None:
    """first() of a UUID never recorded is None."""
    assert log.first(UUID) is None


def test_the_first_submission_stands(log: SubmissionLog) -> None:
    """record() keeps the first submission of a UUID and answers with it ever after."""
    first = log.record(UUID, "dp2.submitted/0/1", "REJECTED", "TEXT_TOO_LONG")
    assert first[:3] == ("dp2.submitted/0/1", "REJECTED", "TEXT_TOO_LONG")
    assert log.record(UUID, "dp2.submitted/1/7", "ACCEPTED", None) == first
    assert log.record(UUID, "dp2.submitted/0/1", "REJECTED", "TEXT_TOO_LONG") == first
    assert log.first(UUID) == first


def test_uuids_are_one_whatever_their_spelling(log: SubmissionLog) -> None:
    """An upper-case UUID is the same message as its lower-case spelling."""
    first = log.record(UUID.upper(), "dp2.submitted/0/1", "ACCEPTED", None)
    assert log.first(UUID) == first == log.first(UUID.upper())
    assert log.record(UUID, "dp2.submitted/0/2", "ACCEPTED", None) == first


def test_another_instance_on_the_same_storage_sees_the_first(open_log: Opener) -> None:
    """A log opened again, or a second instance beside the first, answers the same first."""
    one = open_log()
    first = one.record(UUID, "dp2.submitted/0/1", "ACCEPTED", None)
    two = open_log()
    assert two.first(UUID) == first
    assert two.record(UUID, "dp2.submitted/2/3", "ACCEPTED", None) == first


@pytest.mark.postgres
def test_racing_instances_agree_on_one_first(database_url: str) -> None:
    """Eight instances recording one UUID at once from eight positions all get the same first."""
    logs = [PgSubmissionLog(database_url) for _ in range(8)]
    start = threading.Barrier(len(logs), timeout=60)
    answers: dict[int, tuple[str, str, str | None, str]] = {}

    def submit(i: int) -> None:
        start.wait()
        answers[i] = logs[i].record(UUID, f"dp2.submitted/{i}/1", "ACCEPTED", None)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(logs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for log in logs:
        log.close()
    assert len(answers) == len(logs) and len(set(answers.values())) == 1


def _signed_letter(tmp_path: Path) -> bytes:
    """A letter that passes every check, signed by a sender of a fresh PKI in tmp_path."""
    pki = Pki(tmp_path / "pki")
    pki.init()
    aarhus = pki.issue_sender("29189846", "aarhus")
    letter = rules_cases.sealed(created=datetime.now(UTC))
    return codec.encode(signing.sign_envelope(letter, aarhus.private_key, aarhus.fingerprint))


async def test_two_validators_sharing_a_log_accept_a_letter_once(
    open_log: Opener, tmp_path: Path
) -> None:
    """The same letter submitted twice, to two validator instances, is ACCEPTED and forwarded
    once and DUPLICATE once, whichever instance judges which submission."""
    raw = _signed_letter(tmp_path)
    validators = [
        Validator(TrustStore(tmp_path / "pki"), open_log(), directory={}) for _ in range(2)
    ]
    outputs = [
        *await validators[0].handle(rules_cases.record(raw, 1)),
        *await validators[1].handle(rules_cases.record(raw, 2)),
    ]
    forwarded = [o for o in outputs if o.topic == ACCEPTED_TOPIC]
    states = [codec.decode(o.value, LifecycleEvent).state for o in outputs if o not in forwarded]
    assert len(forwarded) == 1
    assert sorted(states) == sorted([LifecycleState.ACCEPTED, LifecycleState.DUPLICATE])


class _NotYetCommitted:
    """A log whose first() has not yet seen the other instance's submission (a race)."""

    def __init__(self, log: SubmissionLog) -> None:
        self._log = log

    def first(self, message_uuid: str) -> None:
        return None

    def record(
        self, message_uuid: str, source: str, outcome: str, reason: str | None
    ) -> tuple[str, str, str | None, str]:
        return self._log.record(message_uuid, source, outcome, reason)

    def close(self) -> None:
        self._log.close()


async def test_a_validator_that_loses_the_race_says_duplicate(
    open_log: Opener, tmp_path: Path
) -> None:
    """A validator that judged a letter while another instance recorded it first emits
    DUPLICATE, not a second ACCEPTED, and forwards nothing."""
    raw = _signed_letter(tmp_path)
    winner = Validator(TrustStore(tmp_path / "pki"), open_log(), directory={})
    loser = Validator(
        TrustStore(tmp_path / "pki"),
        _NotYetCommitted(open_log()),
        directory={},
    )
    assert len(await winner.handle(rules_cases.record(raw, 1))) == 2  # forwarded + ACCEPTED
    (only,) = await loser.handle(rules_cases.record(raw, 2))
    event = codec.decode(only.value, LifecycleEvent)
    assert event.state is LifecycleState.DUPLICATE
    assert event.attributes["firstSource"] == "dp2.submitted/0/1"
