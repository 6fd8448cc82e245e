"""The DeadLetters contract, the same for SQLite and PostgreSQL: a dead letter is kept once
by where it came from, listed by every instance, and re-driven as it was parked.

Each test runs once per backend; the PostgreSQL one is a fresh database on the
session's real server (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord

from tracing.deadletters import DeadLetters, DeadLetterStore, PgDeadLetterStore

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
UUID = "6f1c3a52-9b7e-4d0a-8c2f-1e5d7b9a0c34"
Opener = Callable[[], DeadLetters]


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the backend's store; each call: the same storage again."""
    opened: list[DeadLetters] = []

    def open_() -> DeadLetters:
        store: DeadLetters
        if request.param == "sqlite":
            store = DeadLetterStore(tmp_path / "deadletters.sqlite")
        else:
            store = PgDeadLetterStore(request.getfixturevalue("database_url"))
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def parked(offset: int, value: bytes | None, source: str) -> ConsumerRecord[bytes, bytes]:
    """A record as it sits on dp2.deadletter: the original, with the parking headers."""
    headers = [
        ("dp2-source", source.encode()),
        ("dp2-service", b"validator"),
        ("dp2-reason-code", b"MALFORMED_RECORD"),
        ("dp2-reason", b"not Avro"),
        ("dp2-message-uuid", UUID.upper().encode()),
        ("traceparent", b"00-abc-def-01"),
    ]
    return ConsumerRecord(  # type: ignore[arg-type]
        "dp2.deadletter", 0, offset, 0, 0, b"key", value, None, 0, 0, headers
    )


class RecordingProducer:
    """Records what a re-drive produces (the dead letters, not Kafka, are under test)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self, topic: str, value: bytes | None, key: bytes | None = None, headers: Any = None
    ) -> None:
        self.sent.append((topic, value, key, list(headers or [])))


def test_a_dead_letter_is_kept_once_and_listed(open_store: Opener) -> None:
    """park() keeps a letter once by its source; list and get show it, without its body."""
    store = open_store()
    assert store.park(parked(1, b"\x00body", "dp2.submitted/1/40"))
    assert not store.park(parked(1, b"\x00body", "dp2.submitted/1/40"))
    letter = store.get("dp2.submitted/1/40")
    assert letter is not None
    assert (letter.topic, letter.service, letter.reason_code) == (
        "dp2.submitted",
        "validator",
        "MALFORMED_RECORD",
    )
    assert letter.message_uuid == UUID and letter.size == 5 and not letter.tombstone
    assert "dp2-reason" in letter.header_names
    assert store.list() == [letter]
    assert store.get("dp2.submitted/9/9") is None


async def test_a_second_instance_lists_and_redrives_what_the_first_parked(
    open_store: Opener,
) -> None:
    """One instance parks a letter and a tombstone; another re-drives both as they were,
    without the parking headers, and both instances see who re-drove them."""
    one, two = open_store(), open_store()
    assert one.park(parked(1, b"\x00body", "dp2.submitted/1/40"))
    assert one.park(parked(2, None, "dp2.accepted/0/3"))
    producer = RecordingProducer()
    await two.redrive("dp2.submitted/1/40", cast(Any, producer), "ops")
    await two.redrive("dp2.accepted/0/3", cast(Any, producer), "ops")
    assert [(t, v, k) for t, v, k, _ in producer.sent] == [
        ("dp2.submitted", b"\x00body", b"key"),
        ("dp2.accepted", None, b"key"),
    ]
    assert [h for h, _ in producer.sent[0][3]] == ["dp2-message-uuid", "traceparent"]
    letter = one.get("dp2.accepted/0/3")
    assert letter is not None and letter.tombstone and letter.redriven_by == "ops"
    assert one.list(include_redriven=False) == []
    assert len(two.list()) == 2
