"""The Routes contract, the same for SQLite and PostgreSQL: where each message was routed,
kept across instances, so that an instance that gets a message's DELIVERED after its
partition moved believes the routed provider and no other.

Each test runs once per backend; the PostgreSQL one is a fresh database on the
session's real server (tests/conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from brokers.security import signing
from brokers.security.authority import EventJudge, PgRouteBook, RouteBook, Routes
from brokers.security.pki import Identity, Pki
from brokers.security.trust import TrustStore
from schemas.models import LifecycleEvent, LifecycleState

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
Opener = Callable[[], Routes]


@pytest.fixture(params=BACKENDS)
def open_book(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the backend's book of one service; each call: the same storage again."""
    opened: list[Routes] = []

    def open_() -> Routes:
        book: Routes
        if request.param == "sqlite":
            book = RouteBook(tmp_path / "routes.sqlite")
        else:
            book = PgRouteBook(request.getfixturevalue("database_url"), "tracing")
        opened.append(book)
        return book

    yield open_
    for book in opened:
        book.close()


def test_a_route_is_remembered_whatever_the_spelling(open_book: Opener) -> None:
    """provider_of answers the provider remembered, for either spelling of the UUID; the
    latest ROUTED stands; an unknown message has none."""
    book = open_book()
    message = str(uuid.uuid4())
    assert book.provider_of(message) is None
    book.remember(message.upper(), "mitpost")
    assert book.provider_of(message) == "mitpost"
    book.remember(message, "print")
    assert book.provider_of(message.upper()) == "print"


def test_a_second_instance_knows_the_route_the_first_learnt(open_book: Opener) -> None:
    """A book opened beside the first (another instance) answers what the first remembered."""
    one, two = open_book(), open_book()
    message = str(uuid.uuid4())
    one.remember(message, "mitpost")
    assert two.provider_of(message) == "mitpost"


@pytest.mark.postgres
def test_books_of_two_services_stay_apart(database_url: str) -> None:
    """The notifier's book does not answer with a route only tracing learnt."""
    tracing, notifier = PgRouteBook(database_url, "tracing"), PgRouteBook(database_url, "notifier")
    message = str(uuid.uuid4())
    tracing.remember(message, "mitpost")
    assert notifier.provider_of(message) is None
    tracing.close()
    notifier.close()


def _event(state: LifecycleState, message: str, who: Identity, **attributes: str) -> LifecycleEvent:
    event = LifecycleEvent(
        eventId=str(uuid.uuid4()),
        messageUUID=message,
        state=state,
        actor=who.name,
        occurredAt=datetime.now(UTC),
        sequence=1,
        senderID="29189846",
        attributes=attributes,
    )
    return signing.sign_event(event, who.private_key, who.fingerprint)


def test_an_instance_believes_a_delivered_routed_by_another(
    open_book: Opener, tmp_path: Path
) -> None:
    """Judge one sees the router's ROUTED; judge two, on the same store, believes the routed
    provider's DELIVERED and refuses another provider's as EVENT_NOT_ROUTED_HERE."""
    pki = Pki(tmp_path / "pki")
    pki.init()
    router = pki.issue_service("dp2-router")
    routed, other = pki.issue_provider("mitpost"), pki.issue_provider("andenpost")
    one = EventJudge(TrustStore(pki.root), open_book())
    two = EventJudge(TrustStore(pki.root), open_book())
    message = str(uuid.uuid4())
    assert one.judge(_event(LifecycleState.ROUTED, message, router, provider="mitpost")).ok
    assert two.judge(_event(LifecycleState.DELIVERED, message, routed)).ok
    refused = two.judge(_event(LifecycleState.DELIVERED, message, other))
    assert not refused.ok and refused.reason_code == "EVENT_NOT_ROUTED_HERE"
