"""The shared lifecycle state machine: derived by rules, never by arrival order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from schemas.models import LifecycleEvent, LifecycleState
from tracing.lifecycle import (
    ALLOWED_TRANSITIONS,
    FINAL_STATES,
    RANK,
    current_state,
    is_expected_transition,
    is_final,
    order_timeline,
    unexpected_steps,
)

S = LifecycleState
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def ev(
    state: LifecycleState, seconds: int = 0, *, seq: int = 0, event_id: str | None = None
) -> LifecycleEvent:
    return LifecycleEvent(
        eventId=event_id or f"{state.value}-{seconds}-{seq}",
        messageUUID="m-1",
        state=state,
        actor="test",
        occurredAt=T0 + timedelta(seconds=seconds),
        sequence=seq,
    )


def history(*states: LifecycleState) -> list[LifecycleEvent]:
    """One event per state, a second apart, in the order given."""
    return [ev(state, i) for i, state in enumerate(states)]


@st.composite
def histories(draw: st.DrawFn) -> list[LifecycleEvent]:
    """A message's distinct events: any states, few distinct times so that ties happen."""
    size = draw(st.integers(min_value=0, max_value=12))
    return [
        ev(
            draw(st.sampled_from(S)),
            draw(st.integers(min_value=0, max_value=3)),
            seq=draw(st.integers(min_value=0, max_value=2)),
            event_id=f"event-{i}",
        )
        for i in range(size)
    ]


@given(histories(), st.data())
def test_any_arrival_order_and_redelivery_gives_the_same_state_and_timeline(
    events: list[LifecycleEvent], data: st.DataObject
) -> None:
    """Permuting a message's events and redelivering some never changes state or timeline."""
    redelivered = data.draw(st.lists(st.sampled_from(events), max_size=6)) if events else []
    arrival = data.draw(st.permutations(events + redelivered))
    assert current_state(arrival) == current_state(events)
    assert order_timeline(arrival) == order_timeline(events)
    assert len(order_timeline(arrival)) == len(events)


@given(histories())
def test_derived_state_respects_finals_and_never_is_duplicate(events: list[LifecycleEvent]) -> None:
    """A final state on the timeline is the state; DUPLICATE is never the state."""
    state = current_state(events)
    assert state is not S.DUPLICATE
    if {e.state for e in events} & FINAL_STATES:
        assert is_final(state)


@given(histories(), st.lists(st.integers(min_value=0, max_value=3), max_size=4))
def test_duplicate_events_change_nothing(events: list[LifecycleEvent], offsets: list[int]) -> None:
    """Adding DUPLICATE events at any time leaves the derived state as it was."""
    duplicates = [ev(S.DUPLICATE, t, event_id=f"dup-{i}") for i, t in enumerate(offsets)]
    assert current_state(events + duplicates) == current_state(events)


def test_failed_after_delivered_stays_delivered() -> None:
    """A FAILED reported after DELIVERED, in either arrival order, leaves DELIVERED."""
    events = history(S.SUBMITTED, S.ACCEPTED, S.ROUTED, S.DELIVERED, S.FAILED)
    assert current_state(events) == S.DELIVERED
    assert current_state(reversed(events)) == S.DELIVERED


def test_rejected_is_final_whatever_follows() -> None:
    """REJECTED stays the state even when later steps are (wrongly) reported."""
    events = history(S.SUBMITTED, S.REJECTED, S.ACCEPTED, S.ROUTED, S.DELIVERED, S.READ)
    assert current_state(events) == S.REJECTED
    assert is_final(S.REJECTED)
    assert ALLOWED_TRANSITIONS[S.REJECTED] == frozenset()


def test_recalled_is_final_and_scheduled_then_routed_is_released() -> None:
    """SCHEDULED then ROUTED is a release; RECALLED ends the life even if ROUTED shows up."""
    assert current_state(history(S.ACCEPTED, S.SCHEDULED, S.ROUTED)) == S.ROUTED
    assert current_state(history(S.ACCEPTED, S.SCHEDULED, S.RECALLED, S.ROUTED)) == S.RECALLED


def test_the_earliest_final_state_wins_when_several_are_reported() -> None:
    """Of two final states the one earlier in the lifecycle wins: it ended the message first."""
    assert current_state(history(S.EXPIRED, S.REJECTED)) == S.REJECTED


def test_success_outranks_failure_at_the_same_step() -> None:
    """One notified channel beats a failed one; a print fallback beats the failed delivery."""
    assert current_state(history(S.DELIVERED, S.NOTIFIED, S.NOTIFICATION_FAILED)) == S.NOTIFIED
    assert current_state(history(S.ROUTED, S.FAILED, S.PRINTED)) == S.PRINTED


def test_unknown_is_ignored_and_nothing_known_is_unknown() -> None:
    """UNKNOWN events never set the state; without state-bearing events it is UNKNOWN."""
    assert current_state(history(S.SUBMITTED, S.ACCEPTED, S.UNKNOWN)) == S.ACCEPTED
    assert current_state([]) == S.UNKNOWN
    assert current_state(history(S.DUPLICATE)) == S.UNKNOWN


def test_timeline_orders_by_time_then_rank_then_sequence_then_event_id() -> None:
    """Ties in occurredAt are broken by lifecycle rank, then sequence, then eventId."""
    routed = ev(S.ROUTED, 5, seq=9)
    accepted_b = ev(S.ACCEPTED, 5, seq=1, event_id="b")
    accepted_a = ev(S.ACCEPTED, 5, seq=1, event_id="a")
    accepted_early_seq = ev(S.ACCEPTED, 5, seq=0, event_id="z")
    submitted_late = ev(S.SUBMITTED, 6)
    ordered = order_timeline([submitted_late, routed, accepted_b, accepted_a, accepted_early_seq])
    assert ordered == [accepted_early_seq, accepted_a, accepted_b, routed, submitted_late]


def test_order_timeline_keeps_each_event_id_once() -> None:
    """Exact duplicates (same eventId) appear once on the timeline."""
    first = ev(S.DELIVERED, 1, event_id="same")
    assert order_timeline([first, first, ev(S.DELIVERED, 1, event_id="same")]) == [first]


def test_transition_table_covers_every_state_and_agrees_with_finals() -> None:
    """Every real state has an entry; final states have no successors; none leads to UNKNOWN."""
    assert set(ALLOWED_TRANSITIONS) == set(S) - {S.DUPLICATE, S.UNKNOWN}
    assert set(RANK) == set(S)
    for state, following in ALLOWED_TRANSITIONS.items():
        assert S.UNKNOWN not in following
        assert (following == frozenset()) == is_final(state)


def test_expected_transitions() -> None:
    """The table accepts the normal path and DUPLICATE anywhere, and flags the odd step."""
    assert is_expected_transition(S.SUBMITTED, S.ACCEPTED)
    assert is_expected_transition(S.DELIVERED, S.REPLIED)  # READ needs consent to be reported
    assert is_expected_transition(S.REJECTED, S.DUPLICATE)
    assert is_expected_transition(S.READ, S.EXPIRED)
    assert not is_expected_transition(S.SUBMITTED, S.DELIVERED)
    assert not is_expected_transition(S.DELIVERED, S.FAILED)
    assert not is_expected_transition(S.UNKNOWN, S.ACCEPTED)


def test_unexpected_steps_skip_duplicates_and_flag_anomalies() -> None:
    """A normal life has no flagged steps; FAILED after DELIVERED is flagged, duplicates are not."""
    normal = history(S.SUBMITTED, S.ACCEPTED, S.DUPLICATE, S.ROUTED, S.DELIVERED, S.NOTIFIED)
    assert unexpected_steps(normal) == []
    odd = history(S.SUBMITTED, S.ACCEPTED, S.ROUTED, S.DELIVERED, S.FAILED)
    assert [(before, e.state) for before, e in unexpected_steps(odd)] == [(S.DELIVERED, S.FAILED)]
