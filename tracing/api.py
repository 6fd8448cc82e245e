"""The trace service: ingest lifecycle events into a `TraceStore`, answer HTTP queries.

The Kafka consumer of dp2.lifecycle (not here) calls `TraceService.ingest` for every
event it reads; `make_app` serves what the store knows:

| route | answer |
|---|---|
| GET /messages/{uuid} | ``{messageUUID, state, summary, timeline}``; 404 ``UNKNOWN_MESSAGE`` |
| GET /messages/{uuid}/receipt | the offline-verifiable receipt (tracing.evidence); 404 as above |
| GET /messages?sender=&state=&since=&until=&limit=&cursor= | ``{items, next}``; 400 ``BAD_QUERY`` |
| GET /healthz | ``{"status": "ok"}`` |
| GET /metrics | Prometheus text from the service's registry |

Every ``/messages`` route needs a caller: a dashboard session or ``Authorization:
Bearer <token>`` (tracing.access); without one it is 401 ``LOGIN_REQUIRED``. An
authority sees only its own CVR's messages: another sender's message is 404
``UNKNOWN_MESSAGE`` like a missing one, a search for another sender 404
``UNKNOWN_SENDER``.

Errors are JSON: ``{"error": {"reasonCode", "message", "hint"}}``. Times are ISO 8601
in UTC with a ``Z``. A recipient only ever appears as its pseudonym ``recipientRef``;
event ``attributes`` are not served, because connectors fill them freely.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from brokers.runtime.records import iso_z
from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent, LifecycleState
from schemas.values import parse_ascii_int
from tracing.access import LoginRequired, NotVisible, Users
from tracing.store import BadQueryError, MessageSummary, TraceStore

_QUERY_PARAMS = frozenset({"sender", "state", "since", "until", "limit", "cursor"})


class TraceService:
    """Stores lifecycle events, counts them, and logs one line per event."""

    def __init__(
        self,
        store: TraceStore,
        registry: CollectorRegistry,
        *,
        log: Any = None,  # a structlog logger; Any because structlog's loggers are untyped
    ) -> None:
        self.store = store
        self.registry = registry
        self._log = log if log is not None else structlog.get_logger("dp2.tracing")
        self._events = Counter(
            "dp2_trace_events",
            "Lifecycle events stored in the trace, by state.",
            ["state"],
            registry=registry,
        )
        self._redelivered = Counter(
            "dp2_trace_redelivered_events",
            "Lifecycle events ignored because their eventId was already stored.",
            registry=registry,
        )
        for state in LifecycleState:  # every series exists from the start, at 0
            self._events.labels(state=state.value)

    def ingest(self, event: LifecycleEvent, raw: bytes | None = None) -> bool:
        """Store `event` (read from ``raw``, if given); False when it was already stored
        (a redelivery)."""
        stored = self.store.add(event, raw)
        if stored:
            self._events.labels(state=event.state.value).inc()
        else:
            self._redelivered.inc()
        self._log.info(
            "lifecycle_event",
            message_id=event.messageUUID,
            state=event.state.value,
            actor=event.actor,
            event_id=event.eventId,
            stored=stored,
        )
        return stored


def summary_json(summary: MessageSummary) -> dict[str, Any]:
    """A summary as the API serves it."""
    return {
        "messageUUID": summary.messageUUID,
        "state": summary.state.value,
        "senderID": summary.senderID,
        "recipientRef": summary.recipientRef,
        "firstSeen": iso_z(summary.firstSeen),
        "lastUpdate": iso_z(summary.lastUpdate),
        "eventCount": summary.eventCount,
        "lastReasonCode": summary.lastReasonCode,
    }


def event_json(event: LifecycleEvent) -> dict[str, Any]:
    """A timeline entry as the API serves it."""
    return {
        "eventId": event.eventId,
        "state": event.state.value,
        "occurredAt": iso_z(event.occurredAt),
        "actor": event.actor,
        "reasonCode": event.reasonCode,
        "reasonText": event.reasonText,
        "sequence": event.sequence,
        "relatedMessageUUID": event.relatedMessageUUID,
        "channel": event.channel,
    }


def _error(status: int, error: Dp2Error) -> web.Response:
    body = {
        "error": {"reasonCode": error.reason_code, "message": error.message, "hint": error.hint}
    }
    return web.json_response(body, status=status)


def _unknown(uuid: str) -> web.Response:
    """404 for a message that is not in the trace, or not the caller's to see (the same)."""
    return _error(
        404,
        Dp2Error(
            f"no lifecycle event of message {uuid} has reached the trace",
            reason_code="UNKNOWN_MESSAGE",
            hint="Check the UUID; a message just sent appears within seconds.",
        ),
    )


def _query_time(query: Mapping[str, str], name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise BadQueryError(
            f"{name}={raw!r} is not an ISO 8601 time with a time zone",
            hint=f"Write {name} like 2025-01-31T12:00:00Z.",
        )
    return moment


def _query_state(query: Mapping[str, str]) -> LifecycleState | None:
    raw = query.get("state")
    if raw is None:
        return None
    try:
        return LifecycleState(raw.upper())
    except ValueError:
        raise BadQueryError(
            f"state={raw!r} is not a lifecycle state",
            hint="Use one of: " + ", ".join(s.value for s in LifecycleState) + ".",
        ) from None


def _query_limit(query: Mapping[str, str]) -> int:
    raw = query.get("limit", "50")
    limit = parse_ascii_int(raw)  # ASCII digits only: "²" and "٣" are no limit
    if limit is None:  # the store checks the range
        raise BadQueryError(
            f"limit={raw[:20]!r} is not a whole number in ASCII digits",
            hint="Use e.g. limit=50.",
        )
    return limit


Receipts = Callable[[str], dict[str, Any] | None]


def make_app(
    service: TraceService, users: Users, receipt_of: Receipts | None = None
) -> web.Application:
    """The trace's HTTP API over `service`; the caller runs it (AppRunner, TestServer).

    Every route but /healthz and /metrics needs a caller (tracing.access): an
    operator sees every message, an authority only its own CVR's. With
    ``receipt_of`` (tracing.evidence) it also serves GET /messages/{uuid}/receipt.
    """

    def visible(request: web.Request) -> tuple[MessageSummary | None, web.Response | None]:
        """The message of the request if its caller may see it, else the refusal."""
        user = users.from_request(request.headers, request.cookies)
        if user is None:
            return None, _error(401, LoginRequired("the trace API needs a login or a bearer token"))
        uuid = request.match_info["uuid"]
        summary = service.store.summary(uuid)
        if summary is None or not user.may_see_sender(summary.senderID):
            return None, _unknown(uuid)
        return summary, None

    async def get_message(request: web.Request) -> web.Response:
        summary, refused = visible(request)
        if summary is None:
            assert refused is not None  # noqa: S101 - one of the two is set
            return refused
        uuid = summary.messageUUID
        body = {
            "messageUUID": summary.messageUUID,
            "state": summary.state.value,
            "summary": summary_json(summary),
            "timeline": [event_json(e) for e in service.store.timeline(uuid)],
        }
        return web.json_response(body)

    async def get_receipt(request: web.Request) -> web.Response:
        summary, refused = visible(request)
        if summary is None:
            assert refused is not None  # noqa: S101 - one of the two is set
            return refused
        receipt = receipt_of(summary.messageUUID) if receipt_of is not None else None
        if receipt is None:
            return _unknown(summary.messageUUID)
        return web.json_response(receipt)

    async def search(request: web.Request) -> web.Response:
        user = users.from_request(request.headers, request.cookies)
        if user is None:
            return _error(401, LoginRequired("the trace API needs a login or a bearer token"))
        query = request.query
        try:
            sender = user.scope_sender(query.get("sender"))
        except NotVisible as exc:
            return _error(404, exc)
        try:
            unknown = sorted(set(query) - _QUERY_PARAMS)
            if unknown:
                raise BadQueryError(
                    f"unknown query parameter {', '.join(unknown)}",
                    hint="Use " + ", ".join(sorted(_QUERY_PARAMS)) + ".",
                )
            page = service.store.search(
                sender=sender,
                state=_query_state(query),
                since=_query_time(query, "since"),
                until=_query_time(query, "until"),
                limit=_query_limit(query),
                cursor=query.get("cursor"),
            )
        except BadQueryError as exc:
            return _error(400, exc)
        return web.json_response(
            {"items": [summary_json(s) for s in page.items], "next": page.next}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(service.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def add_missing_ops_routes(app: web.Application) -> None:
        # A host such as brokers.runtime.host.ServiceHost adds its own /healthz (with worker
        # health) and /metrics after this function returns. aiohttp serves the first
        # route registered for a path, so ours are added at start-up, only where none is.
        taken = {resource.canonical for resource in app.router.resources()}
        for path, handler in (("/healthz", healthz), ("/metrics", metrics)):
            if path not in taken:
                app.router.add_get(path, handler)

    app = web.Application()
    app.router.add_get("/messages", search)
    app.router.add_get("/messages/{uuid}", get_message)
    if receipt_of is not None:
        app.router.add_get("/messages/{uuid}/receipt", get_receipt)
    app.on_startup.append(add_missing_ops_routes)
    return app
