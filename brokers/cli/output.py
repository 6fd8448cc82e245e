"""What every ``dp2`` command shares for talking to its user: progress on stderr."""

from __future__ import annotations

import sys


def say(text: str) -> None:
    """A progress or diagnostic line on stderr, so stdout stays the command's answer."""
    print(text, file=sys.stderr, flush=True)
