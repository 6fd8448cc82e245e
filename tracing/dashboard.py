"""The operators' dashboard: post flowing live, any message's timeline, dead letters, figures.

Why it exists: operators must see the backbone working — and where it is not — without
reading logs, and an authority must see its own figures (how much went digital, what
that saved, how much is read and how fast) instead of counting by hand in "counting
weeks". Served by the tracing service under ``/dashboard/``: server-rendered HTML,
a little JavaScript for the live chart and the digital-share chart, no external
assets (the machine may have no internet).

Access (tracing.access): every page needs a login. Operators see everything (CPR
numbers never: recipients are pseudonyms in the trace), services and dead letters;
an authority's user sees only messages and figures of its own CVR — a message of
another sender is "not found", exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import AIOKafkaProducer

from schemas.errors import Dp2Error
from schemas.models import LifecycleState
from schemas.values import parse_ascii_int
from tracing import stats
from tracing.access import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    AccessDenied,
    CsrfRejected,
    LoginRequired,
    LoginThrottle,
    LoginThrottled,
    NotVisible,
    User,
    Users,
)
from tracing.deadletters import DeadLetters
from tracing.pages import (
    CHART_JS,
    frame,
    notifications_table,
    pct,
    quarantine_table,
    redrive_cell,
    refusal,
    search_form,
    secs,
)
from tracing.pages import escape as _e
from tracing.pages import query_string as _qs
from tracing.quarantine import Quarantine
from tracing.store import BadQueryError, TraceStore

Handler = Callable[[web.Request, User], Awaitable[web.StreamResponse]]


class Dashboard:
    """The dashboard's routes over the trace store, dead letters and the run directory."""

    def __init__(
        self,
        store: TraceStore,
        deadletters: DeadLetters,
        users: Users,
        *,
        run_dir: Path,
        producer: AIOKafkaProducer | None = None,
        prices: stats.Prices | None = None,
        quarantine: Quarantine | None = None,
        signer_of: Callable[[str], str] = lambda fingerprint: fingerprint[:16],
        receipt_of: Callable[[str], dict[str, Any] | None] = lambda uuid: None,
    ) -> None:
        self._store = store
        self._quarantine = quarantine
        self._signer_of = signer_of  # certificate fingerprint -> "kind:name"
        self._receipt_of = receipt_of
        self._deadletters = deadletters
        self._users = users
        self._throttle = LoginThrottle()
        self._run_dir = run_dir
        self.producer = producer
        self._prices = prices or stats.Prices()

    def routes(self) -> list[web.RouteDef]:
        page = self._page
        return [
            web.get("/dashboard", self._to_home),
            web.get("/dashboard/login", self._login_form),
            web.post("/dashboard/login", self._login),
            web.post("/dashboard/logout", self._logout),
            web.get("/dashboard/", page(self._home)),
            web.get("/dashboard/search", page(self._search)),
            web.get("/dashboard/messages/{uuid}", page(self._message)),
            web.get("/dashboard/messages/{uuid}/receipt", page(self._receipt)),
            web.get("/dashboard/api/throughput", page(self._throughput)),
            web.get("/dashboard/api/services", page(self._services, operator=True)),
            web.get("/dashboard/deadletters", page(self._deadletter_list, operator=True)),
            web.get("/dashboard/deadletters/inspect", page(self._deadletter, operator=True)),
            web.post("/dashboard/deadletters/redrive", page(self._redrive, operator=True)),
            web.get("/dashboard/quarantine", page(self._quarantine_list, operator=True)),
            web.get("/dashboard/notifications", page(self._notifications)),
            web.get("/dashboard/stats", page(self._stats)),
            web.get("/dashboard/stats.json", page(self._stats_json)),
            web.get("/dashboard/stats.csv", page(self._stats_csv)),
        ]

    # --- access -----------------------------------------------------------------
    def _page(self, handler: Handler, *, operator: bool = False) -> Callable[..., Any]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            admitted = await self._admit(request, operator=operator)
            if not isinstance(admitted, User):
                return admitted
            user = admitted
            try:
                return await handler(request, user)
            except NotVisible:
                return frame(user, "Not found", "<p>No such message.</p>", 404)
            except (BadQueryError, AccessDenied) as exc:
                return frame(user, "Cannot show that", f"<p class=bad>{_e(str(exc))}</p>", 400)

        return guarded

    async def _admit(self, request: web.Request, *, operator: bool) -> User | web.Response:
        """The caller if it may make this request; otherwise the refusal to answer."""
        user = self._users.from_request(request.headers, request.cookies)
        if user is None:
            if request.path.startswith("/dashboard/api/") or request.method != "GET":
                return refusal(401, LoginRequired("log in to the dashboard first"))
            raise web.HTTPFound("/dashboard/login")
        if operator and not user.is_operator:
            if request.method != "GET":
                return refusal(403, AccessDenied("only operators may do this"))
            return frame(user, "Not allowed", "<p>Only operators see this page.</p>", 403)
        if request.method != "GET" and "Authorization" not in request.headers:
            # A browser sends the session cookie by itself: the form must prove it came
            # from our own page. (A bearer token is never sent by itself.)
            form = await request.post()
            try:
                self._users.check_csrf(
                    request.cookies.get(SESSION_COOKIE), str(form.get("csrf", "")) or None
                )
            except CsrfRejected as exc:
                return refusal(403, exc)
        return user

    def _csrf(self, request: web.Request) -> str:
        return self._users.csrf_token(request.cookies.get(SESSION_COOKIE))

    async def _to_home(self, _: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/dashboard/")

    async def _login_form(self, request: web.Request, failed: bool = False) -> web.Response:
        note = "<p class=bad>Wrong user name or password.</p>" if failed else ""
        body = f"""{note}<form method=post action="/dashboard/login" class=card>
<p><label>User <input name=user autocomplete=username required></label></p>
<p><label>Password <input name=password type=password autocomplete=current-password
required></label></p><p><button type=submit>Log in</button></p></form>"""
        return frame(None, "Log in", body, 401 if failed else 200)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        name, password = str(form.get("user", "")), str(form.get("password", ""))
        address = request.remote or "?"
        wait_s = self._throttle.wait_s(name, address)
        if wait_s > 0:
            error = LoginThrottled(f"too many failed logins; try again in {wait_s:.0f} s")
            response = refusal(429, error)
            response.headers["Retry-After"] = str(int(wait_s) + 1)
            return response
        try:
            # scrypt takes tens of milliseconds: never on the event loop.
            user = await asyncio.to_thread(self._users.authenticate, name, password)
        except AccessDenied:
            self._throttle.failed(name, address)
            await asyncio.sleep(0.5)  # slows password guessing a little
            return await self._login_form(request, failed=True)
        self._throttle.succeeded(name)
        response = web.HTTPFound("/dashboard/")
        response.set_cookie(
            SESSION_COOKIE,
            self._users.session(user),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="Strict",
            path="/dashboard",
        )
        raise response

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        self._users.end_session(request.cookies.get(SESSION_COOKIE))  # the cookie is dead now
        response = web.HTTPFound("/dashboard/login")
        response.del_cookie(SESSION_COOKIE, path="/dashboard")
        raise response

    # --- pages ------------------------------------------------------------------
    async def _home(self, request: web.Request, user: User) -> web.StreamResponse:
        services = (
            """<h2>Services</h2><table id=services><tr><th>service</th><th>health</th>
<th>consumer lag</th><th>url</th></tr></table>"""
            if user.is_operator
            else ""
        )
        body = f"""{search_form(user)}
<h2>Post flowing, last 15 minutes (events per minute and state)</h2>
<canvas id=live width=1000 height=260></canvas>{services}
<script>{CHART_JS}
async function refresh() {{
  const t = await (await fetch('/dashboard/api/throughput?minutes=15')).json();
  drawLines(document.getElementById('live'), t.minutes, t.series);
  const table = document.getElementById('services');
  if (table) {{
    const s = await (await fetch('/dashboard/api/services')).json();
    table.querySelectorAll('tr.row').forEach(r => r.remove());
    s.services.forEach(x => {{ const r = table.insertRow(); r.className = 'row';
      [x.name, x.health, x.lag === null ? '-' : x.lag, x.url].forEach(v => {{
        const c = r.insertCell(); c.textContent = v; }});
      r.cells[1].className = x.health === 'up' ? 'ok' : 'bad'; }});
  }}
}}
refresh(); setInterval(refresh, 3000);
</script>"""
        return frame(user, "DP2 — post flowing", body)

    async def _search(self, request: web.Request, user: User) -> web.StreamResponse:
        query = request.query
        uuid = query.get("uuid", "").strip()
        if uuid:
            summary = self._store.summary(uuid)
            if summary is not None and user.may_see_sender(summary.senderID):
                raise web.HTTPFound(f"/dashboard/messages/{uuid}")
            return frame(user, "Search", search_form(user) + "<p>No such message.</p>", 404)
        sender = user.scope_sender(query.get("sender") or None)  # authority: its own CVR
        state_text = query.get("state") or None
        since, until = _day(query.get("since")), _day(query.get("until"), end=True)
        try:
            state = LifecycleState(state_text) if state_text else None
        except ValueError as exc:
            raise BadQueryError(f"state {state_text!r} is not a lifecycle state") from exc
        page = self._store.search(
            sender=sender,
            state=state,
            since=since,
            until=until,
            limit=100,
            cursor=query.get("cursor") or None,
        )
        rows = "".join(
            f"<tr><td><a href='/dashboard/messages/{_e(s.messageUUID)}'>{_e(s.messageUUID)}"
            f"</a></td><td>{_e(s.state.value)}</td><td>{_e(s.senderID or '')}</td>"
            f"<td>{_e(s.firstSeen.strftime('%Y-%m-%d %H:%M:%S'))}</td><td>{s.eventCount}</td>"
            f"<td>{_e(s.lastReasonCode or '')}</td></tr>"
            for s in page.items
        )
        more = ""
        if page.next:
            params = {**dict(query), "cursor": page.next}
            more = f"<p><a href='/dashboard/search?{_e(_qs(params))}'>more</a></p>"
        body = f"""{search_form(user, query)}<table id=results><tr><th>message</th>
<th>state</th><th>sender</th><th>first seen (UTC)</th><th>events</th><th>reason</th></tr>
{rows}</table>{more}"""
        return frame(user, f"Search — {len(page.items)} messages", body)

    async def _message(self, request: web.Request, user: User) -> web.StreamResponse:
        uuid = request.match_info["uuid"]
        summary = self._store.summary(uuid)
        if summary is None or not user.may_see_sender(summary.senderID):
            return frame(user, "Not found", "<p>No such message.</p>", 404)
        rows = "".join(
            f"<tr><td>{_e(e.occurredAt.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3])}</td>"
            f"<td class=state>{_e(e.state.value)}</td><td>{_e(e.actor)}</td>"
            f"<td class=signer>{_e(self._signer_of(e.attributes.get('signer', '')))}</td>"
            f"<td>{_e(e.channel or '')}</td><td>{_e(e.reasonCode or '')}</td>"
            f"<td>{_e(e.reasonText or '')}</td></tr>"
            for e in self._store.timeline(uuid)
        )
        body = f"""<p>State <b id=state>{_e(summary.state.value)}</b>, sender
{_e(summary.senderID or "-")}, recipient <code>{_e(summary.recipientRef or "-")}</code>
— <a id=receipt href='/dashboard/messages/{_e(uuid)}/receipt'>receipt</a> (verify it offline
with <code>dp2 receipt verify FILE</code>)</p>
<table id=timeline><tr><th>when (UTC)</th><th>state</th><th>by</th><th>verified signer</th>
<th>channel</th><th>reason</th><th>how to fix</th></tr>{rows}</table>"""
        return frame(user, f"Message {uuid}", body)

    async def _receipt(self, request: web.Request, user: User) -> web.StreamResponse:
        uuid = request.match_info["uuid"]
        summary = self._store.summary(uuid)
        receipt = (
            self._receipt_of(uuid)
            if summary is not None and user.may_see_sender(summary.senderID)
            else None
        )
        if receipt is None:
            return frame(user, "Not found", "<p>No receipt for that message.</p>", 404)
        return web.json_response(
            receipt, headers={"Content-Disposition": f'attachment; filename="{uuid}.json"'}
        )

    async def _throughput(self, request: web.Request, user: User) -> web.StreamResponse:
        asked = parse_ascii_int(request.query.get("minutes", "15") or "15")
        if asked is None:
            raise BadQueryError("minutes must be a whole number in ASCII digits, e.g. 15")
        minutes = min(max(asked, 1), 120)
        now = datetime.now(UTC)
        first = int(now.timestamp() // 60) - minutes + 1
        rows = self._store.throughput(
            datetime.fromtimestamp(first * 60, UTC), None if user.is_operator else user.cvr
        )
        series: dict[str, list[int]] = {}
        for minute, state, count in rows:
            series.setdefault(state, [0] * minutes)[minute - first] = count
        labels = [
            datetime.fromtimestamp((first + i) * 60, UTC).strftime("%H:%M") for i in range(minutes)
        ]
        return web.json_response({"minutes": labels, "series": series})

    async def _services(self, request: web.Request, user: User) -> web.StreamResponse:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            found = await asyncio.gather(
                *(_probe(session, info) for info in _run_files(self._run_dir))
            )
        return web.json_response({"services": sorted(found, key=lambda s: str(s["name"]))})

    async def _quarantine_list(self, request: web.Request, user: User) -> web.StreamResponse:
        events = self._quarantine.recent() if self._quarantine is not None else []
        return frame(user, f"Quarantined events — {len(events)}", quarantine_table(events))

    async def _notifications(self, request: web.Request, user: User) -> web.StreamResponse:
        events = self._store.notifications(sender=user.scope_sender(None))
        return frame(user, f"Notifications — {len(events)}", notifications_table(events))

    async def _deadletter_list(self, request: web.Request, user: User) -> web.StreamResponse:
        letters = self._deadletters.list()
        csrf = self._csrf(request)
        rows = "".join(
            f"<tr><td><a href='/dashboard/deadletters/inspect?source={_e(d.source)}'>"
            f"{_e(d.source)}</a></td><td>{_e(d.service or '')}</td>"
            f"<td>{_e(d.reason_code or '')}</td><td>{_e(d.message_uuid or '')}</td>"
            f"<td>{_e(d.parked_at[:19])}</td>"
            f"<td>{redrive_cell(d.source, d.redriven_at, csrf)}</td></tr>"
            for d in letters
        )
        body = f"""<table id=deadletters><tr><th>from</th><th>service</th><th>reason</th>
<th>message</th><th>parked (UTC)</th><th></th></tr>{rows}</table>"""
        return frame(user, f"Dead letters — {len(letters)}", body)

    async def _deadletter(self, request: web.Request, user: User) -> web.StreamResponse:
        letter = self._deadletters.get(request.query.get("source", ""))
        if letter is None:
            return frame(user, "Not found", "<p>No such dead letter.</p>", 404)
        items = "".join(
            f"<tr><th>{_e(k)}</th><td>{_e(str(v))}</td></tr>" for k, v in letter.as_json().items()
        )
        redrive = redrive_cell(letter.source, letter.redriven_at, self._csrf(request))
        body = f"""<table id=letter>{items}</table><p>The body ({letter.size} bytes) is not
shown: it may hold personal data.</p>{redrive}"""
        return frame(user, "Dead letter", body)

    async def _redrive(self, request: web.Request, user: User) -> web.StreamResponse:
        form = await request.post()
        if self.producer is None:
            raise AccessDenied("this dashboard cannot re-drive (no Kafka producer)")
        try:
            await self._deadletters.redrive(str(form.get("source", "")), self.producer, user.name)
        except Dp2Error as exc:
            return frame(user, "Cannot re-drive", f"<p class=bad>{_e(str(exc))}</p>", 404)
        raise web.HTTPFound("/dashboard/deadletters")

    def _compute(self, request: web.Request, user: User) -> list[stats.PeriodStats]:
        query = request.query
        kind = query.get("kind", "day")
        if kind not in {"day", "week", "month"}:
            raise BadQueryError(f"kind {kind!r} is not day, week or month")
        days = {"day": 14, "week": 84, "month": 365}[kind]
        sender = query.get("sender") or None
        if not user.is_operator:
            sender = user.cvr
        end = datetime.now(UTC) + timedelta(days=1)
        return stats.compute(
            self._store,
            kind=kind,
            start=end - timedelta(days=days),
            end=end,
            sender=sender,
            prices=self._prices,
        )

    async def _stats(self, request: web.Request, user: User) -> web.StreamResponse:
        figures = self._compute(request, user)
        kind = request.query.get("kind", "day")
        sender = request.query.get("sender", "") if user.is_operator else (user.cvr or "")
        rows = "".join(
            f"<tr><td>{_e(p.period)}</td><td>{p.messages}</td><td>{p.digital}</td>"
            f"<td>{p.print}</td><td>{p.nemsms}</td><td>{pct(p.digital_share)}</td>"
            f"<td>{p.cost:.2f}</td><td>{p.savings:.2f}</td><td>{pct(p.read_rate)}</td>"
            f"<td>{secs(p.median_time_to_read_s)}</td><td>{pct(p.notification_success)}</td>"
            f"<td>{_e(', '.join(f'{k} {v}' for k, v in sorted(p.rejections.items())))}</td></tr>"
            for p in figures
        )
        senders = "".join(
            f"<option{' selected' if s == sender else ''}>{_e(s)}</option>"
            for s in stats.senders(self._store)
        )
        pick = (
            f"<label>Authority <select name=sender><option value=''>all</option>{senders}"
            "</select></label>"
            if user.is_operator
            else f"<b>CVR {_e(user.cvr or '')}</b>"
        )
        export = _qs({"kind": kind, "sender": sender})
        share = json.dumps([p.digital_share for p in figures])
        labels = json.dumps([p.period for p in figures])
        kinds = "".join(
            f"<option{' selected' if k == kind else ''}>{k}</option>"
            for k in ("day", "week", "month")
        )
        body = f"""<form class=card>{pick} <label>per <select name=kind>{kinds}</select></label>
<button>Show</button> <a href="/dashboard/stats.csv?{export}">CSV</a>
<a href="/dashboard/stats.json?{export}">JSON</a></form>
<h2>Digital share (%)</h2><canvas id=share width=1000 height=240></canvas>
<table id=stats><tr><th>period</th><th>messages</th><th>digital</th><th>print</th>
<th>NemSMS</th><th>digital share</th><th>cost kr</th><th>saved kr</th><th>read</th>
<th>median time to read</th><th>notified</th><th>rejections</th></tr>{rows}</table>
<p>Prices: {self._prices.physical} kr per letter on paper, {self._prices.digital} kr per
digital letter.</p>
<script>{CHART_JS}
drawLines(document.getElementById('share'), {labels}, {{"digital share %": {share}}}, {{max: 100}});
</script>"""
        return frame(user, "Statistics", body)

    async def _stats_json(self, request: web.Request, user: User) -> web.StreamResponse:
        return web.json_response({"periods": stats.to_json(self._compute(request, user))})

    async def _stats_csv(self, request: web.Request, user: User) -> web.StreamResponse:
        return web.Response(
            text=stats.to_csv(self._compute(request, user)),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="dp2-statistics.csv"'},
        )


# --- helpers ------------------------------------------------------------------------


def _day(text: str | None, *, end: bool = False) -> datetime | None:
    if not text:
        return None
    try:
        day = datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError as exc:
        raise BadQueryError(f"{text!r} is not a date (YYYY-MM-DD)") from exc
    return day + timedelta(days=1) if end and len(text) == 10 else day


def _run_files(run_dir: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(run_dir.glob("*.json")):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and "url" in info:
            found.append(info)
    return found


async def _probe(session: aiohttp.ClientSession, info: dict[str, Any]) -> dict[str, Any]:
    """A service's health and its summed consumer lag, from its /healthz and /metrics."""
    url = str(info["url"])
    result: dict[str, Any] = {
        "name": info.get("name", url),
        "url": url,
        "health": "down",
        "lag": None,
    }
    started = time.monotonic()
    try:
        async with session.get(f"{url}/healthz") as response:
            result["health"] = "up" if response.status == 200 else "failing"
        async with session.get(f"{url}/metrics") as response:
            text = await response.text()
        lags = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("dp2_consumer_lag{")
        ]
        result["lag"] = int(sum(lags)) if lags else None
    except (aiohttp.ClientError, TimeoutError, ValueError, IndexError):
        pass
    result["probeMs"] = round((time.monotonic() - started) * 1000)
    return result
