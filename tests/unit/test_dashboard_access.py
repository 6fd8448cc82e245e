"""tracing.access: sessions that logout ends, CSRF tokens bound to a session, throttled logins."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracing.access import CsrfRejected, LoginThrottle, Users

PASSWORD = "long enough password"  # noqa: S105 - a test user


@pytest.fixture
def users(tmp_path: Path) -> Users:
    made = Users(tmp_path)
    made.add("ops", PASSWORD, "operator")
    return made


def test_an_ended_session_is_refused_and_others_are_not(users: Users, tmp_path: Path) -> None:
    """end_session kills exactly that cookie; a second session of the same user lives on."""
    user = users.authenticate("ops", PASSWORD)
    first, second = users.session(user), users.session(user)
    users.end_session(first)
    assert users.from_session(first) is None
    assert users.from_session(second) == user
    assert Users(tmp_path).from_session(first) is None, "ended for every reader"


def test_a_csrf_token_belongs_to_one_session(users: Users) -> None:
    """The token of one session does not pass for another; a missing token never passes."""
    user = users.authenticate("ops", PASSWORD)
    mine, theirs = users.session(user), users.session(user)
    users.check_csrf(mine, users.csrf_token(mine))
    with pytest.raises(CsrfRejected):
        users.check_csrf(mine, users.csrf_token(theirs))
    with pytest.raises(CsrfRejected):
        users.check_csrf(mine, None)
    with pytest.raises(CsrfRejected):
        users.check_csrf(None, users.csrf_token(None))


def test_logins_are_throttled_per_user_and_per_address() -> None:
    """Five failures lock a user out for the window; twenty lock an address across users."""
    throttle = LoginThrottle(failures=5, address_failures=20, window_s=900)
    for i in range(5):
        assert throttle.wait_s("ops", "10.0.0.1", now=i) == 0
        throttle.failed("ops", "10.0.0.1", now=i)
    assert throttle.wait_s("ops", "10.0.0.2", now=10) == pytest.approx(890)
    assert throttle.wait_s("other", "10.0.0.1", now=10) == 0
    assert throttle.wait_s("ops", "10.0.0.2", now=901) == 0  # the window passed

    spray = LoginThrottle(failures=5, address_failures=20, window_s=900)
    for i in range(20):
        spray.failed(f"user{i}", "10.0.0.9", now=i)
    assert spray.wait_s("someone-else", "10.0.0.9", now=30) > 0
    assert spray.wait_s("someone-else", "10.0.0.8", now=30) == 0


def test_a_success_clears_the_users_failures_not_the_addresss() -> None:
    """The right password resets that user's count; an address that sprayed stays counted."""
    throttle = LoginThrottle(failures=2, address_failures=3, window_s=900)
    throttle.failed("ops", "a", now=0)
    throttle.succeeded("ops")
    throttle.failed("ops", "a", now=1)
    assert throttle.wait_s("ops", "b", now=2) == 0
    throttle.failed("x", "a", now=2)
    assert throttle.wait_s("y", "a", now=3) > 0
