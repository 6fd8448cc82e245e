"""The NotificationOutbox contract, the same for SQLite and PostgreSQL: each notification is
recorded once, claimed by one notifier at a time, taken over only when its claim has run
out, and changed afterwards only by the notifier that claimed it.

Each test runs once per backend; the PostgreSQL one is a fresh database on the
session's real server (tests/conftest.py). "Two notifiers" are two outbox objects
on one store: for SQLite, one file, as two processes would share it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connectors.notify.outbox import NotificationOutbox, Outbox, PgOutbox, Row

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
Opener = Callable[[str], NotificationOutbox]
T = 1_000_000.0  # the clock of the tests, seconds
LEASE = 30.0


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """A new outbox of the backend with the given owner, on the same storage; the caller
    closes it."""
    if request.param == "sqlite":
        yield lambda owner: Outbox(tmp_path / "notifier.sqlite", owner=owner)
    else:
        url = request.getfixturevalue("database_url")
        yield lambda owner: PgOutbox(url, owner=owner)


@pytest.fixture
def pair(backend: Opener) -> Iterator[tuple[NotificationOutbox, NotificationOutbox]]:
    """Two notifiers' outboxes on one store."""
    one, two = backend("one"), backend("two")
    yield one, two
    one.close()
    two.close()


def row(n: int, *, recipient: str = "ref-a", channel: str = "EMAIL", due: float = T) -> Row:
    return Row(
        key=f"m-{n:03}|{channel}",
        message_uuid=f"m-{n:03}",
        recipient_ref=recipient,
        channel=channel,
        address="a@example.dk",
        language="da",
        sender_label="Aarhus Kommune",
        label=None,
        nemsms_text=None,
        state="pending",
        attempts=0,
        next_at=due,
        first_failure_at=None,
    )


def keys(groups: list[list[Row]]) -> list[list[str]]:
    return [[r.key for r in group] for group in groups]


def test_a_notification_is_recorded_once(pair: tuple[NotificationOutbox, ...]) -> None:
    """add() is True once per key, whichever notifier adds it."""
    one, two = pair
    assert one.add(row(1))
    assert not one.add(row(1)) and not two.add(row(1))
    assert keys(two.due_groups(T)) == [["m-001|EMAIL"]]


def test_due_rows_are_grouped_per_recipient_and_channel(
    pair: tuple[NotificationOutbox, ...],
) -> None:
    """Once a pair's first row is due, all its pending rows are one digest; not before;
    without the digest each due row goes alone."""
    one, _ = pair
    one.add(row(1, due=T))
    one.add(row(2, due=T + 60))
    one.add(row(3, recipient="ref-b", due=T + 60))
    assert keys(one.due_groups(T - 1)) == []
    assert keys(one.due_groups(T)) == [["m-001|EMAIL", "m-002|EMAIL"]]
    assert keys(one.due_groups(T, digest=False)) == [["m-001|EMAIL"]]


def test_a_claimed_row_is_sent_by_its_claimant_only(pair: tuple[NotificationOutbox, ...]) -> None:
    """Of two notifiers claiming the same due rows, the first takes them and the second
    gets nothing, sees nothing due, and cannot settle them."""
    one, two = pair
    for n in (1, 2):
        one.add(row(n))
    both = ["m-001|EMAIL", "m-002|EMAIL"]
    assert one.claim(both, T, T + LEASE) == both
    assert two.claim(both, T + 1, T + 1 + LEASE) == []
    assert two.due_groups(T + 1) == []
    assert two.settle(both, "sent") == 0
    assert one.settle(both, "sent") == 2
    assert one.claim(both, T + 2, T + 2 + LEASE) == [], "a sent row is never claimed again"
    assert one.due_groups(T + 10_000) == []


def test_a_dead_notifiers_claim_is_taken_over_when_its_lease_runs_out(
    pair: tuple[NotificationOutbox, ...],
) -> None:
    """Rows left 'sending' by a notifier that stopped renewing are due again, for another,
    only after the lease; a renewed lease holds; the first owner cannot settle them then."""
    one, two = pair
    one.add(row(1))
    assert one.claim(["m-001|EMAIL"], T, T + LEASE) == ["m-001|EMAIL"]
    assert one.renew(T + 20 + LEASE) == 1  # still sending at T + 20
    assert two.claim(["m-001|EMAIL"], T + LEASE + 1, T + 2 * LEASE) == []
    later = T + 20 + LEASE + 1
    (group,) = two.due_groups(later)
    assert group[0].state == "sending" and group[0].attempts == 1
    assert two.claim(["m-001|EMAIL"], later, later + LEASE) == ["m-001|EMAIL"]
    assert one.settle(["m-001|EMAIL"], "sent") == 0, "the lapsed owner changes nothing"
    assert two.settle(["m-001|EMAIL"], "sent") == 1


def test_a_notifiers_own_claim_is_not_due_to_it_until_it_gives_it_back(
    pair: tuple[NotificationOutbox, ...],
) -> None:
    """Rows a notifier is sending are due to nobody, itself included (its send in
    flight holds them, however often it asks what is due); a send that failed gives
    them back with defer(), and they are due again at once, for any notifier."""
    one, two = pair
    one.add(row(1))
    one.claim(["m-001|EMAIL"], T, T + LEASE)
    assert one.due_groups(T + 1) == [] and two.due_groups(T + 1) == []
    assert one.defer(["m-001|EMAIL"], T + 1, T + 1) == ["m-001|EMAIL"]
    assert keys(two.due_groups(T + 1)) == [["m-001|EMAIL"]]
    assert one.claim(["m-001|EMAIL"], T + 1, T + 1 + LEASE) == ["m-001|EMAIL"]


def test_the_longest_due_come_first_and_a_limit_bounds_the_fetch(
    pair: tuple[NotificationOutbox, ...],
) -> None:
    """due_groups(limit=N) answers the N pairs whose first row has waited longest."""
    one, _ = pair
    for n, due in ((1, T - 5), (2, T - 50), (3, T - 20), (4, T + 100)):
        one.add(row(n, recipient=f"ref-{n}", due=due))
    assert keys(one.due_groups(T, limit=2)) == [["m-002|EMAIL"], ["m-003|EMAIL"]]
    assert [g[0].key for g in one.due_groups(T)] == ["m-002|EMAIL", "m-003|EMAIL", "m-001|EMAIL"]


def test_a_failure_puts_the_row_back_with_its_retry_time(
    pair: tuple[NotificationOutbox, ...],
) -> None:
    """settle() to pending sets the retry time and first failure; it counts in the backlog
    and is due again, for any notifier, at that time; defer() moves a due row later."""
    one, two = pair
    one.add(row(1))
    one.add(row(2))
    one.claim(["m-001|EMAIL"], T, T + LEASE)
    one.settle(["m-001|EMAIL"], "pending", next_at=T + 5, first_failure_at=T, reason_code="X")
    assert two.retry_backlog() == 1
    assert two.defer(["m-002|EMAIL"], T, T + 100) == ["m-002|EMAIL"]
    assert keys(two.due_groups(T + 5, digest=False)) == [["m-001|EMAIL"]]
    with pytest.raises(ValueError, match="column"):
        one.settle(["m-001|EMAIL"], "sent", attempts=0)


def test_two_notifiers_claiming_at_once_send_each_row_once(backend: Opener) -> None:
    """Two notifiers, each claiming every due row one by one at the same moment, together
    claim each of 60 rows exactly once."""
    setup = backend("setup")
    for n in range(60):
        setup.add(row(n, recipient=f"ref-{n}"))
    setup.close()
    claimed: dict[str, list[str]] = {}
    start = threading.Barrier(2, timeout=60)
    failures: list[BaseException] = []

    def notifier(owner: str) -> None:
        outbox = backend(owner)  # in its thread: a SQLite connection stays in its thread
        try:
            groups = outbox.due_groups(T)
            start.wait()
            claimed[owner] = [
                key for group in groups for key in outbox.claim(keys([group])[0], T, T + LEASE)
            ]
        except BaseException as exc:  # reported by the test, not lost in the thread
            failures.append(exc)
            start.abort()  # the other thread stops waiting for this one
        finally:
            outbox.close()

    threads = [threading.Thread(target=notifier, args=(o,)) for o in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    every = claimed["one"] + claimed["two"]
    assert len(every) == 60 and len(set(every)) == 60, "each row claimed once"


def test_a_handed_row_is_never_claimed_again_and_is_announced_by_any_notifier(
    pair: tuple[NotificationOutbox, NotificationOutbox],
) -> None:
    """Once the channel took it (``handed``), a row is out of every claim, even after its
    notifier died; its notifier announces it, or — once that one's claim ran out —
    any other, once."""
    one, two = pair
    one.add(row(1))
    assert one.claim(["m-001|EMAIL"], T, T + LEASE) == ["m-001|EMAIL"]
    assert (
        one.settle(["m-001|EMAIL"], "handed", provider="smtp", shown="Du har post", digest_size=1)
        == 1
    )
    assert [h.key for h in one.unannounced(T)] == ["m-001|EMAIL"] and two.unannounced(T) == []
    later = T + 10 * LEASE  # one's claim would have run out long ago
    assert two.due_groups(later) == [] and two.claim(["m-001|EMAIL"], later, later + LEASE) == []
    [handed] = two.unannounced(later)
    assert (handed.message_uuid, handed.provider, handed.shown, handed.digest_size) == (
        "m-001",
        "smtp",
        "Du har post",
        1,
    )
    assert two.announced(["m-001|EMAIL"]) == 1 and one.announced(["m-001|EMAIL"]) == 0
    assert one.unannounced(later) == [] and two.unannounced(later) == []
