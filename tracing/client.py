"""``dp2 trace UUID [--json] [--follow] [--url URL]``: a message's timeline from the trace API.

The functions are usable on their own (tests and scripts call them): `fetch_timeline`
reads ``GET /messages/{uuid}``, `render_timeline` turns that document into a table,
and `follow` polls it and yields each event the first time it appears, wherever it
lands on the timeline (late events can land before ones already shown).

Errors are translated at the boundary: an unknown message raises `UnknownMessageError`,
an unreachable service `TraceUnreachableError` (retriable). The command reports either
one in two lines and exits 1.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from schemas.errors import Dp2Error
from schemas.models import LifecycleState
from tracing.lifecycle import is_final

if TYPE_CHECKING:
    pass

DEFAULT_URL = "http://127.0.0.1:8470"  # the tracing service's port in brokers.stack
_TIMEOUT = aiohttp.ClientTimeout(total=10)
_COLUMNS = (("TIME", 27), ("STATE", 19), ("ACTOR", 20))  # widest ISO time, widest state


class UnknownMessageError(Dp2Error):
    """The trace has no event of this message (yet)."""

    reason_code = "UNKNOWN_MESSAGE"
    hint = "Check the UUID; a message just sent appears within seconds."


class TraceUnreachableError(Dp2Error):
    """The trace service did not answer, or answered something that is not its API."""

    retriable = True
    reason_code = "TRACE_UNREACHABLE"
    hint = "Start the stack with `dp2 up`, or point --url at the tracing service."


class TraceLoginRequired(Dp2Error):
    reason_code = "LOGIN_REQUIRED"
    hint = (
        "Run dp2 trace on the deployment's machine (it signs in as the operator), or "
        "pass --token (dp2 dashboard token NAME makes one)."
    )


async def _get(
    session: aiohttp.ClientSession, base_url: str, uuid: str, token: str | None = None
) -> dict[str, Any]:
    url = f"{base_url.rstrip('/')}/messages/{quote(uuid, safe='')}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with session.get(url, headers=headers) as response:
            if response.status == 401:
                raise TraceLoginRequired(f"the trace service at {base_url} wants a login")
            if response.status == 404:
                body = await response.json()
                error = body.get("error", {}) if isinstance(body, dict) else {}
                raise UnknownMessageError(
                    error.get("message") or f"message {uuid} is not known to the trace",
                    hint=error.get("hint"),
                )
            response.raise_for_status()
            doc = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValueError: not JSON
        raise TraceUnreachableError(f"the trace service at {base_url} failed: {exc}") from exc
    if not isinstance(doc, dict):
        raise TraceUnreachableError(f"{url} did not answer with a trace document")
    return doc


async def fetch_timeline(base_url: str, uuid: str, token: str | None = None) -> dict[str, Any]:
    """The document of ``GET /messages/{uuid}``: messageUUID, state, summary, timeline."""
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
        return await _get(session, base_url, uuid, token)


def render_event(event: dict[str, Any]) -> str:
    """One timeline entry as a table row: time, state, actor, reason."""
    reason = " ".join(str(x) for x in (event.get("reasonCode"), event.get("reasonText")) if x)
    cells = [str(event.get(key) or "") for key in ("occurredAt", "state", "actor")]
    row = "  ".join(cell.ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    return f"{row}  {reason}".rstrip()


def render_header(doc: dict[str, Any]) -> str:
    """The lines above the table: the message, its state, sender and recipient pseudonym."""
    summary = doc.get("summary") or {}
    facts = [
        f"message {doc.get('messageUUID')}",
        f"state {doc.get('state')}",
        f"sender {summary.get('senderID') or '-'}",
        f"recipient {summary.get('recipientRef') or '-'}",
    ]
    titles = "  ".join(title.ljust(width) for title, width in _COLUMNS) + "  REASON"
    return "\n".join(("   ".join(facts), "", titles))


def render_timeline(doc: dict[str, Any]) -> str:
    """The whole trace document as a readable table."""
    return "\n".join([render_header(doc), *(render_event(e) for e in doc.get("timeline", []))])


async def follow(
    base_url: str,
    uuid: str,
    interval: float = 0.5,
    until_final: bool = True,
    *,
    appear_within: float = 10.0,
    token: str | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Each timeline entry once, as it appears; ends after the state turns final.

    A message just sent may not have reached the trace yet, so an unknown message is
    polled for up to `appear_within` seconds before UnknownMessageError. Cancel the
    iteration (Ctrl-C) to stop early; the HTTP session is closed either way.
    """
    seen: set[str] = set()
    deadline = time.monotonic() + appear_within
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
        while True:
            try:
                doc = await _get(session, base_url, uuid, token)
            except UnknownMessageError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(interval)
                continue
            for event in doc.get("timeline", []):
                key = event.get("eventId") or json.dumps(event, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    yield event
            if until_final and is_final(_state(doc.get("state"))):
                return
            await asyncio.sleep(interval)


def _state(value: Any) -> LifecycleState:
    """The state named `value`; UNKNOWN for one this client is too old to know."""
    try:
        return LifecycleState(value)
    except ValueError:
        return LifecycleState.UNKNOWN
