"""The Quarantine contract, the same for SQLite and PostgreSQL: a refused event is kept once
per position read, whichever tracing instance reads it, and listed by every instance.

Each test runs once per backend; the PostgreSQL one is a fresh database on the
session's real server (tests/conftest.py).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from brokers.security.authority import Verdict
from schemas.models import LifecycleEvent, LifecycleState
from tracing.quarantine import PgQuarantineStore, Quarantine, QuarantineStore

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
REFUSED = Verdict(ok=False, signer="provider:x", reason_code="EVENT_WRONG_ACTOR", reason="no")
Opener = Callable[[], Quarantine]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """A new store of the backend per call, on the same storage; the caller closes it."""
    if request.param == "sqlite":
        yield lambda: QuarantineStore(tmp_path / "quarantine.sqlite")
    else:
        url = request.getfixturevalue("database_url")
        yield lambda: PgQuarantineStore(url)


def _event(message: str) -> LifecycleEvent:
    return LifecycleEvent(
        eventId=str(uuid.uuid4()),
        messageUUID=message,
        state=LifecycleState.DELIVERED,
        actor="mailbox:x",
        occurredAt=datetime.now(UTC),
        sequence=1,
    )


def test_a_refused_event_is_kept_once_per_position(backend: Opener) -> None:
    """add() keeps the event with its verdict; the same position again adds nothing."""
    store = backend()
    message = str(uuid.uuid4())
    event = _event(message)
    assert store.add(event, REFUSED, "dp2.lifecycle/0/7")
    assert not store.add(event, REFUSED, "dp2.lifecycle/0/7")
    assert store.add(_event(message), REFUSED, "dp2.lifecycle/0/8")
    (newest, _) = store.recent()
    assert newest.reason_code == "EVENT_WRONG_ACTOR" and newest.signer == "provider:x"
    kept = store.of_message(message.upper())
    assert [q.source for q in kept] == ["dp2.lifecycle/0/7", "dp2.lifecycle/0/8"]
    assert store.recent(limit=1) == [newest]
    store.close()


def test_two_instances_reading_one_record_keep_it_once(backend: Opener) -> None:
    """Two stores on one storage adding the same position at once: one of them adds it,
    and both list it."""
    event, wins = _event(str(uuid.uuid4())), []
    start = threading.Barrier(2, timeout=60)

    def add() -> None:
        store = backend()  # in its thread: a SQLite connection stays in its thread
        start.wait()
        wins.append(store.add(event, REFUSED, "dp2.lifecycle/2/9"))
        store.close()

    threads = [threading.Thread(target=add) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False, True]
    reader = backend()
    assert [q.event_id for q in reader.recent()] == [event.eventId]
    reader.close()
