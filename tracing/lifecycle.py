"""The lifecycle state machine shared by every DP2 service and the dashboard (pure).

Events reach dp2.lifecycle late, twice and out of order, from actors whose clocks
differ. So the current state is never "the last event that arrived": it is derived
from the *set* of states a message has reported, by the rules below. The result is
the same for any arrival order and any number of redeliveries, which is what makes
every trace store a projection that a replay of dp2.lifecycle rebuilds exactly.

| rank | state               | may be followed by (ALLOWED_TRANSITIONS)              | final |
|------|---------------------|-------------------------------------------------------|-------|
| 0    | SUBMITTED           | ACCEPTED, REJECTED                                    |       |
| 10   | ACCEPTED            | SCHEDULED, ROUTED, FAILED                             |       |
| 11   | REJECTED            | -                                                     | yes   |
| 20   | SCHEDULED           | ROUTED (released), RECALLED, FAILED                   |       |
| 21   | RECALLED            | -                                                     | yes   |
| 30   | ROUTED              | DELIVERED, PRINTED, FAILED                            |       |
| 40   | FAILED              | ROUTED, DELIVERED, PRINTED (a retry or print fallback)|       |
| 41   | PRINTED             | JOURNALED                                             |       |
| 42   | DELIVERED           | NOTIFIED, NOTIFICATION_FAILED, READ, REPLIED, JOURNALED |     |
| 50   | NOTIFICATION_FAILED | NOTIFIED, NOTIFICATION_FAILED, READ, REPLIED, JOURNALED |     |
| 51   | NOTIFIED            | NOTIFIED, READ, REPLIED, JOURNALED                    |       |
| 60   | READ                | READ, REPLIED, JOURNALED                              |       |
| 70   | REPLIED             | REPLIED, JOURNALED                                    |       |
| 80   | JOURNALED           | REPLIED, JOURNALED                                    |       |
| 90   | EXPIRED             | -                                                     | yes   |
| 100  | DUPLICATE           | (recorded on the timeline; changes nothing)           |       |
| 101  | UNKNOWN             | (a state this reader is too old to know; ignored)     |       |

EXPIRED (the message's retention or delivery window ended) may follow any state
that is not final. DUPLICATE may follow any state.

Rules of `current_state`:

1. DUPLICATE and UNKNOWN events never change the state.
2. Final states absorb: once REJECTED, RECALLED or EXPIRED is on the timeline, the
   state is that final state whatever else is reported. When more than one final state
   is present (an anomaly), the lowest rank wins, because it ended the message's life first.
3. Otherwise the state is the reported state with the highest rank. Ranks follow
   the lifecycle and put success above failure at the same step: DELIVERED (42) and
   PRINTED (41) outrank FAILED (40), so a FAILED reported after DELIVERED leaves
   DELIVERED; NOTIFIED (51) outranks NOTIFICATION_FAILED (50), so one successful
   channel is enough; ROUTED (30) after SCHEDULED (20) means the message was released.
4. A message with no state-bearing events (nothing yet, or only DUPLICATE/UNKNOWN)
   is UNKNOWN.

READ is only reported with the recipient's consent, so REPLIED may follow
DELIVERED or NOTIFIED directly. `is_expected_transition` does not affect the
derived state: the dashboard uses it to flag steps worth a look.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from types import MappingProxyType

from schemas.models import LifecycleEvent, LifecycleState

S = LifecycleState

RANK: Mapping[LifecycleState, int] = MappingProxyType(
    {
        S.SUBMITTED: 0,
        S.ACCEPTED: 10,
        S.REJECTED: 11,
        S.SCHEDULED: 20,
        S.RECALLED: 21,
        S.ROUTED: 30,
        S.FAILED: 40,
        S.PRINTED: 41,
        S.DELIVERED: 42,
        S.NOTIFICATION_FAILED: 50,
        S.NOTIFIED: 51,
        S.READ: 60,
        S.REPLIED: 70,
        S.JOURNALED: 80,
        S.EXPIRED: 90,
        S.DUPLICATE: 100,
        S.UNKNOWN: 101,
    }
)
"""Position of each state in the lifecycle; orders the timeline and decides the state."""

FINAL_STATES: frozenset[LifecycleState] = frozenset({S.REJECTED, S.RECALLED, S.EXPIRED})
"""States after which nothing changes the message's state."""

_NO_STATE: frozenset[LifecycleState] = frozenset({S.DUPLICATE, S.UNKNOWN})

_AFTER_DELIVERY = frozenset({S.NOTIFIED, S.NOTIFICATION_FAILED, S.READ, S.REPLIED, S.JOURNALED})

_NEXT: dict[LifecycleState, frozenset[LifecycleState]] = {
    S.SUBMITTED: frozenset({S.ACCEPTED, S.REJECTED}),
    S.ACCEPTED: frozenset({S.SCHEDULED, S.ROUTED, S.FAILED}),
    S.REJECTED: frozenset(),
    S.SCHEDULED: frozenset({S.ROUTED, S.RECALLED, S.FAILED}),
    S.RECALLED: frozenset(),
    S.ROUTED: frozenset({S.DELIVERED, S.PRINTED, S.FAILED}),
    S.FAILED: frozenset({S.ROUTED, S.DELIVERED, S.PRINTED}),
    S.PRINTED: frozenset({S.JOURNALED}),
    S.DELIVERED: _AFTER_DELIVERY,
    S.NOTIFICATION_FAILED: _AFTER_DELIVERY,
    S.NOTIFIED: _AFTER_DELIVERY - {S.NOTIFICATION_FAILED},
    S.READ: frozenset({S.READ, S.REPLIED, S.JOURNALED}),
    S.REPLIED: frozenset({S.REPLIED, S.JOURNALED}),
    S.JOURNALED: frozenset({S.REPLIED, S.JOURNALED}),
    S.EXPIRED: frozenset(),
}

ALLOWED_TRANSITIONS: Mapping[LifecycleState, frozenset[LifecycleState]] = MappingProxyType(
    {
        state: (
            nxt
            if state in FINAL_STATES
            else nxt | {S.EXPIRED}  # retention ends for every message that is not final
        )
        for state, nxt in _NEXT.items()
    }
)
"""For each state, the states expected to follow it (DUPLICATE may follow any state)."""


def is_final(state: LifecycleState) -> bool:
    """True when no later event can change a message in `state`."""
    return state in FINAL_STATES


def is_expected_transition(current: LifecycleState, following: LifecycleState) -> bool:
    """True when `following` is a normal next step after `current`.

    DUPLICATE is expected anywhere. A step from or to UNKNOWN, or from DUPLICATE (pass
    the state before the duplicate instead), is unexpected: there is nothing to judge by.
    """
    if following is S.DUPLICATE:
        return True
    return following in ALLOWED_TRANSITIONS.get(current, frozenset())


def timeline_key(event: LifecycleEvent) -> tuple[datetime, int, int, str]:
    """Sort key of the timeline: when it happened, then lifecycle rank, then sequence, then id."""
    return (event.occurredAt, RANK[event.state], event.sequence, event.eventId)


def order_timeline(events: Iterable[LifecycleEvent]) -> list[LifecycleEvent]:
    """The message's events in timeline order, each eventId once.

    Of events sharing an eventId (a redelivery), the first in timeline order is kept.
    """
    seen: set[str] = set()
    ordered: list[LifecycleEvent] = []
    for event in sorted(events, key=timeline_key):
        if event.eventId not in seen:
            seen.add(event.eventId)
            ordered.append(event)
    return ordered


def current_state(events: Iterable[LifecycleEvent]) -> LifecycleState:
    """The message's state by the module's rules, whatever the events' arrival order."""
    return current_state_of({event.state for event in events})


def current_state_of(reported: set[LifecycleState]) -> LifecycleState:
    """The state by the module's rules from the set of states a message reported."""
    states = reported - _NO_STATE
    if not states:
        return S.UNKNOWN
    finals = states & FINAL_STATES
    return min(finals, key=RANK.__getitem__) if finals else max(states, key=RANK.__getitem__)


def unexpected_steps(
    events: Iterable[LifecycleEvent],
) -> list[tuple[LifecycleState, LifecycleEvent]]:
    """Steps of the timeline that `is_expected_transition` flags, with the state before each.

    DUPLICATE events are skipped, so the step after one is judged against the state
    before it; the first state-bearing event has nothing to be judged against.
    """
    flagged: list[tuple[LifecycleState, LifecycleEvent]] = []
    previous: LifecycleState | None = None
    for event in order_timeline(events):
        if event.state is S.DUPLICATE:
            continue
        if previous is not None and not is_expected_transition(previous, event.state):
            flagged.append((previous, event))
        previous = event.state
    return flagged
