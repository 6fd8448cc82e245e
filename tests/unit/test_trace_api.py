"""The trace HTTP API and the `dp2 trace` client, over a real socket on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from brokers.cli import build_parser
from brokers.runtime.settings import Settings
from schemas.models import LifecycleEvent, LifecycleState
from tracing.access import Users
from tracing.api import TraceService, make_app
from tracing.client import (
    TraceUnreachableError,
    UnknownMessageError,
    fetch_timeline,
    follow,
    render_timeline,
)
from tracing.store import SqliteTraceStore

S = LifecycleState
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
MESSAGE = "6f1c1a52-3c1e-4d8e-9a57-0d5b8f3c2a11"

Client = TestClient[web.Request, web.Application]


def ev(
    state: LifecycleState,
    minutes: int,
    *,
    message: str = MESSAGE,
    sender: str = "29189846",
    reason: str | None = None,
) -> LifecycleEvent:
    return LifecycleEvent(
        eventId=f"{message}/{state.value}/{minutes}",
        messageUUID=message,
        state=state,
        actor=f"dp2-{state.value.lower()}",
        occurredAt=T0 + timedelta(minutes=minutes),
        sequence=minutes,
        senderID=sender,
        recipientRef="pseudo-7Hq2",
        reasonCode=reason,
        reasonText="see the provider's log" if reason else None,
        attributes={"provider": "demo"},
    )


@pytest.fixture
def service() -> Iterator[TraceService]:
    """A trace service over an in-memory store and its own metrics registry."""
    with SqliteTraceStore(":memory:") as store:
        yield TraceService(store, CollectorRegistry())


@pytest.fixture
def users(tmp_path: Path) -> Users:
    """The deployment's dashboard users and key, in a folder of this test's own."""
    return Users(tmp_path)


@pytest.fixture
def token(users: Users) -> str:
    """An operator's bearer token for the trace API."""
    return users.local_token()


@pytest.fixture
async def client(service: TraceService, users: Users, token: str) -> AsyncIterator[Client]:
    """An operator's HTTP client for the service's app, on a free port of 127.0.0.1."""
    server = TestServer(make_app(service, users), host="127.0.0.1")
    async with TestClient(server, headers={"Authorization": f"Bearer {token}"}) as opened:
        yield opened


def base_url(client: Client) -> str:
    return f"http://127.0.0.1:{client.server.port}"


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def ingest_delivery(service: TraceService, message: str = MESSAGE, start: int = 0) -> None:
    """A delivered message whose events arrive out of order, with a late FAILED and a duplicate."""
    for state, minute in [
        (S.DELIVERED, 3),
        (S.SUBMITTED, 0),
        (S.ROUTED, 2),
        (S.ACCEPTED, 1),
        (S.DUPLICATE, 5),
    ]:
        service.ingest(ev(state, start + minute, message=message))
    service.ingest(ev(S.FAILED, start + 4, message=message, reason="MAILBOX_TIMEOUT"))


async def test_get_message_serves_summary_and_ordered_timeline(
    client: Client, service: TraceService
) -> None:
    """GET /messages/{uuid} has the derived state, the summary and the timeline in order."""
    ingest_delivery(service)
    response = await client.get(f"/messages/{MESSAGE}")
    assert response.status == 200
    body = await response.json()
    assert body["messageUUID"] == MESSAGE
    assert body["state"] == "DELIVERED"
    assert body["summary"] == {
        "messageUUID": MESSAGE,
        "state": "DELIVERED",
        "senderID": "29189846",
        "recipientRef": "pseudo-7Hq2",
        "firstSeen": "2025-03-01T09:00:00.000000Z",
        "lastUpdate": "2025-03-01T09:05:00.000000Z",
        "eventCount": 6,
        "lastReasonCode": "MAILBOX_TIMEOUT",
    }
    timeline = body["timeline"]
    assert [e["state"] for e in timeline] == [
        "SUBMITTED", "ACCEPTED", "ROUTED", "DELIVERED", "FAILED", "DUPLICATE",
    ]  # fmt: skip
    assert timeline[4] == {
        "eventId": f"{MESSAGE}/FAILED/4",
        "state": "FAILED",
        "occurredAt": "2025-03-01T09:04:00.000000Z",
        "actor": "dp2-failed",
        "reasonCode": "MAILBOX_TIMEOUT",
        "reasonText": "see the provider's log",
        "sequence": 4,
        "relatedMessageUUID": None,
        "channel": None,
    }


async def test_unknown_message_is_a_404_with_reason_and_hint(client: Client) -> None:
    """An unknown UUID answers 404 with reason code UNKNOWN_MESSAGE and a hint."""
    response = await client.get("/messages/no-such-message")
    assert response.status == 404
    error = (await response.json())["error"]
    assert error["reasonCode"] == "UNKNOWN_MESSAGE"
    assert "no-such-message" in error["message"]
    assert error["hint"]


async def test_search_filters_and_pages(client: Client, service: TraceService) -> None:
    """GET /messages filters on sender, derived state and time, and pages with `next`."""
    for i in range(5):
        ingest_delivery(service, message=f"m-{i}", start=10 * i)
    service.ingest(ev(S.SUBMITTED, 60, message="other", sender="12345678"))

    ids: list[str] = []
    url = "/messages?limit=2"
    while url:
        body = await (await client.get(url)).json()
        ids += [item["messageUUID"] for item in body["items"]]
        url = f"/messages?limit=2&cursor={body['next']}" if body["next"] else ""
    assert ids == ["other", "m-4", "m-3", "m-2", "m-1", "m-0"]

    delivered = await (await client.get("/messages?state=delivered&sender=29189846")).json()
    assert [i["messageUUID"] for i in delivered["items"]] == ["m-4", "m-3", "m-2", "m-1", "m-0"]
    assert delivered["next"] is None
    window = await (
        await client.get(
            "/messages", params={"since": "2025-03-01T09:10:00Z", "until": "2025-03-01T09:30:00Z"}
        )
    ).json()
    assert [i["messageUUID"] for i in window["items"]] == ["m-2", "m-1"]
    assert window["items"][0]["firstSeen"] == "2025-03-01T09:20:00.000000Z"


@pytest.mark.parametrize(
    "query",
    [
        "state=LOST",
        "since=yesterday",
        "until=2025-03-01T09:00:00",  # no time zone
        "limit=abc",
        "limit=0",
        "limit=501",
        "cursor=not-a-cursor",
        "sate=READ",  # a typo is not silently ignored
    ],
)
async def test_bad_queries_are_400_bad_query(client: Client, query: str) -> None:
    """A bad state, timestamp, limit, cursor or parameter name answers 400 BAD_QUERY."""
    response = await client.get(f"/messages?{query}")
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["reasonCode"] == "BAD_QUERY"
    assert error["message"]
    assert error["hint"]


async def test_healthz_and_metrics_count_stored_events(
    client: Client, service: TraceService
) -> None:
    """/healthz is ok; /metrics counts stored events by state and redeliveries apart."""
    assert await (await client.get("/healthz")).json() == {"status": "ok"}
    event = ev(S.SUBMITTED, 0)
    assert service.ingest(event) is True
    assert service.ingest(event) is False
    service.ingest(ev(S.ACCEPTED, 1))
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    assert 'dp2_trace_events_total{state="SUBMITTED"} 1.0' in text
    assert 'dp2_trace_events_total{state="ACCEPTED"} 1.0' in text
    assert 'dp2_trace_events_total{state="DELIVERED"} 0.0' in text
    assert "dp2_trace_redelivered_events_total 1.0" in text


async def test_a_host_can_put_its_own_health_and_metrics_routes_first(
    service: TraceService, tmp_path: Path
) -> None:
    """Routes a host adds after make_app (like ServiceHost's /healthz) are served, not ours."""

    async def host_health(_: web.Request) -> web.Response:
        return web.json_response({"service": "tracing", "status": "ok", "workers": []})

    app = make_app(service, Users(tmp_path))
    app.router.add_get("/healthz", host_health)
    async with TestClient(TestServer(app, host="127.0.0.1")) as host_client:
        assert (await (await host_client.get("/healthz")).json())["service"] == "tracing"
        assert (await host_client.get("/metrics")).status == 200  # ours fills the gap


def test_ingest_logs_one_line_per_event_with_message_id(service: TraceService) -> None:
    """Each ingested event logs one line naming its message, and whether it was new."""
    event = ev(S.SUBMITTED, 0)
    with capture_logs() as logs:
        service.ingest(event)
        service.ingest(event)
    assert [(e["event"], e["message_id"], e["stored"]) for e in logs] == [
        ("lifecycle_event", MESSAGE, True),
        ("lifecycle_event", MESSAGE, False),
    ]


async def test_fetch_and_render_timeline(client: Client, service: TraceService, token: str) -> None:
    """fetch_timeline returns the API document; render_timeline shows time, state, actor, reason."""
    ingest_delivery(service)
    doc = await fetch_timeline(base_url(client), MESSAGE, token)
    assert doc == await (await client.get(f"/messages/{MESSAGE}")).json()
    lines = render_timeline(doc).splitlines()
    assert MESSAGE in lines[0]
    assert "DELIVERED" in lines[0]
    assert "pseudo-7Hq2" in lines[0]
    assert lines[2].split() == ["TIME", "STATE", "ACTOR", "REASON"]
    rows = lines[3:]
    assert [row.split()[1] for row in rows] == [e["state"] for e in doc["timeline"]]
    assert rows[4].split(maxsplit=3) == [
        "2025-03-01T09:04:00.000000Z",
        "FAILED",
        "dp2-failed",
        "MAILBOX_TIMEOUT see the provider's log",
    ]


async def test_fetch_timeline_translates_unknown_and_unreachable(
    client: Client, token: str
) -> None:
    """An unknown message and a dead service become typed Dp2Errors; only the latter retriable."""
    with pytest.raises(UnknownMessageError) as unknown:
        await fetch_timeline(base_url(client), "no-such-message", token)
    assert unknown.value.reason_code == "UNKNOWN_MESSAGE"
    assert not unknown.value.retriable
    with pytest.raises(TraceUnreachableError) as unreachable:
        await fetch_timeline(closed_port_url(), MESSAGE)
    assert unreachable.value.retriable


async def test_follow_yields_each_new_event_and_stops_at_a_final_state(
    client: Client, service: TraceService, token: str
) -> None:
    """follow waits for the message, yields every event once (late ones too), ends when final."""
    seen: list[str] = []

    async def consume() -> None:
        async for event in follow(base_url(client), MESSAGE, interval=0.02, token=token):
            seen.append(event["state"])
            if event["state"] == "SUBMITTED":
                service.ingest(ev(S.ACCEPTED, 1))
            elif event["state"] == "ACCEPTED":
                service.ingest(ev(S.DUPLICATE, 0))  # late: lands before ACCEPTED
                service.ingest(ev(S.REJECTED, 2))

    following = asyncio.create_task(consume())
    await asyncio.sleep(0.1)  # the message is not known yet: follow keeps polling
    service.ingest(ev(S.SUBMITTED, 0))
    await asyncio.wait_for(following, timeout=5)
    assert seen == ["SUBMITTED", "ACCEPTED", "DUPLICATE", "REJECTED"]


async def test_follow_gives_up_on_a_message_that_never_appears(client: Client, token: str) -> None:
    """An unknown message ends follow with UnknownMessageError after appear_within."""
    with pytest.raises(UnknownMessageError):
        async for _ in follow(
            base_url(client), "never", interval=0.01, appear_within=0.05, token=token
        ):
            pass


def _trace_args(*argv: str) -> argparse.Namespace:
    return build_parser(["trace", *argv]).parse_args(["trace", *argv])


async def _run(args: argparse.Namespace) -> int:
    """Run the command in a thread (it calls asyncio.run) while this loop serves the API."""
    code: int = await asyncio.to_thread(args.func, None, args)
    return code


async def test_trace_command_prints_table_json_and_follows(
    client: Client,
    service: TraceService,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    token: str,
) -> None:
    """`dp2 trace UUID` prints the table, --json the document, --follow the events until final."""
    ingest_delivery(service)
    service.ingest(ev(S.EXPIRED, 9))
    url = base_url(client)

    # Without --url the command asks the settings where dp2 up runs tracing.
    settings = Settings.from_env(
        {"DP2_PORT_BASE": url.rsplit(":", 1)[1], "DP2_HOME": str(tmp_path)}
    )
    without_url = _trace_args(MESSAGE)
    assert without_url.url is None
    assert await asyncio.to_thread(without_url.func, settings, without_url) == 0
    assert "EXPIRED" in capsys.readouterr().out
    auth = ("--token", token)
    assert await _run(_trace_args(MESSAGE, "--url", url, *auth)) == 0
    out = capsys.readouterr().out
    assert "EXPIRED" in out
    assert "MAILBOX_TIMEOUT" in out

    assert await _run(_trace_args(MESSAGE, "--json", "--url", url, *auth)) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert doc["state"] == "EXPIRED"

    assert await _run(_trace_args(MESSAGE, "--follow", "--json", "--url", url, *auth)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["state"] for line in lines] == [e["state"] for e in doc["timeline"]]

    assert await _run(_trace_args(MESSAGE, "--follow", "--url", url, *auth)) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[1] == "EXPIRED"


async def test_trace_command_exits_1_when_unknown_or_unreachable(
    client: Client, capsys: pytest.CaptureFixture[str], token: str
) -> None:
    """An unknown message or an unreachable service is exit code 1 with a two-line reason."""
    url = base_url(client)
    assert await _run(_trace_args("no-such-message", "--url", url, "--token", token)) == 1
    err = capsys.readouterr().err
    assert "UNKNOWN_MESSAGE" in err
    assert "how to fix" in err
    assert await _run(_trace_args(MESSAGE, "--url", closed_port_url())) == 1
    assert "TRACE_UNREACHABLE" in capsys.readouterr().err


# --- who may ask (issue 13) -------------------------------------------------------------
async def _status(
    service: TraceService, users: Users, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with TestClient(TestServer(make_app(service, users), host="127.0.0.1")) as anonymous:
        response = await anonymous.get(path, headers=headers or {})
        return response.status, await response.json()


@pytest.mark.parametrize("path", [f"/messages/{MESSAGE}", "/messages", "/messages?sender=1"])
async def test_every_api_route_answers_401_without_credentials(
    service: TraceService, users: Users, path: str
) -> None:
    """No session and no token: 401 LOGIN_REQUIRED, with how to get a token."""
    ingest_delivery(service)
    status, body = await _status(service, users, path)
    assert status == 401
    assert body["error"]["reasonCode"] == "LOGIN_REQUIRED"
    assert "dp2 dashboard token" in body["error"]["hint"]


async def test_a_forged_expired_or_foreign_token_is_401(
    service: TraceService, users: Users, tmp_path: Path
) -> None:
    """A token with a wrong MAC, past its expiry, or from another deployment's key is refused."""
    ingest_delivery(service)
    users.add("ops", "long enough password", "operator")
    good = users.token("ops")
    kind, payload, mac = good.split(".")
    forged = f"{kind}.{payload}.{mac[:-2]}AA"
    expired = users.token("ops", days=-1)
    foreign = Users(tmp_path / "elsewhere")
    foreign.add("ops", "long enough password", "operator")
    for token in (forged, expired, foreign.token("ops")):
        status, _ = await _status(
            service, users, f"/messages/{MESSAGE}", {"Authorization": f"Bearer {token}"}
        )
        assert status == 401
    status, _ = await _status(
        service, users, f"/messages/{MESSAGE}", {"Authorization": f"Bearer {good}"}
    )
    assert status == 200


async def test_an_authority_sees_only_its_own_cvr_on_every_route(
    service: TraceService, users: Users
) -> None:
    """Another authority's message is 404 like a missing one; searching its CVR is 404."""
    ingest_delivery(service)  # sent by 29189846
    other = "7c2f0d7e-0000-4000-8000-000000000001"
    service.ingest(ev(S.SUBMITTED, 0, message=other, sender="55133018"))
    users.add("aarhus", "long enough password", "authority", cvr="55133018")
    auth = {"Authorization": f"Bearer {users.token('aarhus')}"}
    status, body = await _status(service, users, f"/messages/{MESSAGE}", auth)
    assert (status, body["error"]["reasonCode"]) == (404, "UNKNOWN_MESSAGE")
    status, _ = await _status(service, users, f"/messages/{other}", auth)
    assert status == 200
    status, body = await _status(service, users, "/messages?sender=29189846", auth)
    assert (status, body["error"]["reasonCode"]) == (404, "UNKNOWN_SENDER")
    status, body = await _status(service, users, "/messages", auth)
    assert status == 200
    assert [m["messageUUID"] for m in body["items"]] == [other]


async def test_a_deleted_users_token_ends_with_it(service: TraceService, users: Users) -> None:
    """Tokens name a user; once the user is removed, its tokens are refused."""
    ingest_delivery(service)
    users.add("temp", "long enough password", "operator")
    token = users.token("temp")
    assert users.remove("temp")
    status, _ = await _status(
        service, users, f"/messages/{MESSAGE}", {"Authorization": f"Bearer {token}"}
    )
    assert status == 401


async def test_dp2_trace_without_any_credential_says_how_to_get_one(
    client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pointed at a trace service it has no key for, dp2 trace exits 1 with LOGIN_REQUIRED."""
    assert await _run(_trace_args(MESSAGE, "--url", base_url(client))) == 1
    assert "LOGIN_REQUIRED" in capsys.readouterr().err
