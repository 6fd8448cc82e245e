"""Quiet hours hold SMS until they end, across midnight too."""

from datetime import UTC, datetime

from connectors.notify.notifier import quiet_hours_end


def at(hour: int, minute: int = 0, day: int = 10) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def test_outside_quiet_hours_nothing_waits() -> None:
    """At noon with quiet hours 22-7 an SMS goes now."""
    assert quiet_hours_end(at(12), (22, 7)) is None
    assert quiet_hours_end(at(7), (22, 7)) is None


def test_late_evening_waits_until_next_morning() -> None:
    """At 23:30 with quiet hours 22-7 the SMS waits until 07:00 the next day."""
    assert quiet_hours_end(at(23, 30), (22, 7)) == at(7, day=11)


def test_early_morning_waits_until_the_same_morning() -> None:
    """At 03:15 with quiet hours 22-7 the SMS waits until 07:00 that day."""
    assert quiet_hours_end(at(3, 15), (22, 7)) == at(7)


def test_quiet_hours_within_one_day() -> None:
    """Quiet hours 1-5 hold a 02:00 SMS until 05:00 and leave 06:00 alone."""
    assert quiet_hours_end(at(2), (1, 5)) == at(5)
    assert quiet_hours_end(at(6), (1, 5)) is None
