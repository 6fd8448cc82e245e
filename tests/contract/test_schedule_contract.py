"""The Schedule contract, the same for SQLite and PostgreSQL: a letter is held once, due on
its date, and released or recalled by exactly one caller, however many routers share it.

Each test runs once per backend; the PostgreSQL one is a fresh database on the
session's real server (tests/conftest.py). "Two routers" are two store objects on
one store: for SQLite, one file, as two processes would share it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pytest

from brokers.router.schedule import PgScheduleStore, Schedule, ScheduleStore

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DAY = date(2026, 6, 1)
Opener = Callable[[], Schedule]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """A new schedule of the backend per call, on the same storage; the caller closes it."""
    if request.param == "sqlite":
        yield lambda: ScheduleStore(tmp_path / "router.sqlite")
    else:
        url = request.getfixturevalue("database_url")
        yield lambda: PgScheduleStore(url)


def test_a_letter_is_held_once_and_due_on_its_date(backend: Opener) -> None:
    """hold() is True once per UUID (any spelling); due() lists it from its date on."""
    store = backend()
    message = str(uuid.uuid4())
    assert store.hold(message, DAY, "29189846", "psn-a", b"envelope")
    assert not store.hold(message.upper(), DAY, "29189846", "psn-a", b"envelope")
    assert store.due(date(2026, 5, 31)) == []
    assert store.due(DAY) == [(message, b"envelope")]
    assert store.sender_of(message.upper()) == ("29189846", "waiting")
    store.close()


def test_a_released_letter_is_neither_due_nor_recallable(backend: Opener) -> None:
    """mark() changes a waiting letter once; after release it is not due, and a recall
    (to recalled, if waiting) changes nothing."""
    store = backend()
    message = str(uuid.uuid4())
    store.hold(message, DAY, "29189846", "psn-a", b"envelope")
    assert store.mark(message, "released")
    assert not store.mark(message, "released")
    assert not store.mark(message, "recalled")
    assert store.due(DAY) == []
    assert store.sender_of(message) == ("29189846", "released")
    store.close()


def test_two_routers_releasing_at_once_release_each_letter_once(backend: Opener) -> None:
    """Two routers that both find 40 letters due and release them at the same moment
    release each letter exactly once between them."""
    setup = backend()
    for n in range(40):
        setup.hold(str(uuid.uuid4()), DAY, "29189846", f"psn-{n}", b"envelope")
    setup.close()
    released: dict[int, list[str]] = {}
    start = threading.Barrier(2, timeout=60)

    def router(n: int) -> None:
        store = backend()  # in its thread: a SQLite connection stays in its thread
        due = store.due(DAY)
        start.wait()
        released[n] = [uuid_ for uuid_, _ in due if store.mark(uuid_, "released")]
        store.close()

    threads = [threading.Thread(target=router, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = released[0] + released[1]
    assert len(every) == 40 and len(set(every)) == 40


def test_a_recall_and_a_release_at_once_have_one_winner(backend: Opener) -> None:
    """Of one router releasing a letter and another recalling it at the same moment,
    exactly one changes it, and its state is the winner's."""
    message = str(uuid.uuid4())
    setup = backend()
    setup.hold(message, DAY, "29189846", "psn-a", b"envelope")
    setup.close()
    won: dict[str, bool] = {}
    start = threading.Barrier(2, timeout=60)

    def change(state: str) -> None:
        store = backend()
        start.wait()
        won[state] = store.mark(message, state)
        store.close()

    threads = [threading.Thread(target=change, args=(s,)) for s in ("released", "recalled")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won.values()) == [False, True]
    reader = backend()
    held = reader.sender_of(message)
    reader.close()
    assert held is not None and won[held[1]]
