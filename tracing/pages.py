"""The dashboard's HTML: one stylesheet, the chart script, the page frame and small widgets.

Why apart from tracing.dashboard: that module decides who may see what and reads the
stores; this one only turns values into escaped HTML (every value passes
:func:`escape`), so a reviewer checks output encoding in one place.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from schemas.errors import Dp2Error
from schemas.models import LifecycleEvent, LifecycleState
from tracing.access import User
from tracing.quarantine import Quarantined

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b;background:#f6f7f9}
header{background:#0b3d91;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
header a{color:#fff;text-decoration:none}header .who{margin-left:auto;font-size:.9em}
main{padding:1em 1.2em;max-width:1100px}table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;font-size:.92em}
th{background:#eef1f6}.bad{color:#a40000}.ok{color:#0a6b0a}.card{background:#fff;padding:1em;
margin:.8em 0;border:1px solid #dde}form.inline{display:inline}input,select,button{font:inherit}
code{font-size:.88em}canvas{background:#fff;border:1px solid #dde}
"""
CHART_JS = """
function drawLines(canvas, labels, series, opts) {
  const c = canvas.getContext('2d'), w = canvas.width, h = canvas.height, pad = 36;
  c.clearRect(0, 0, w, h);
  const all = Object.values(series).flat().filter(v => v !== null);
  const max = Math.max(opts && opts.max || 0, 1, ...all);
  c.strokeStyle = '#999'; c.beginPath(); c.moveTo(pad, 8); c.lineTo(pad, h - pad);
  c.lineTo(w - 8, h - pad); c.stroke(); c.fillStyle = '#333'; c.font = '11px sans-serif';
  c.fillText(String(Math.round(max)), 2, 14); c.fillText('0', 2, h - pad);
  const colors = ['#0b3d91','#d1495b','#edae49','#00798c','#30638e','#66a182','#8d96a3'];
  const n = Math.max(labels.length - 1, 1);
  Object.entries(series).forEach(([name, values], i) => {
    c.strokeStyle = colors[i % colors.length]; c.lineWidth = 2; c.beginPath();
    let pen = false;  // a null (nothing to measure in that period) leaves a gap
    values.forEach((v, j) => {
      if (v === null) { pen = false; return; }
      const x = pad + (w - pad - 8) * j / n, y = (h - pad) - (h - pad - 8) * v / max;
      pen ? c.lineTo(x, y) : c.moveTo(x, y); pen = true;
      c.fillRect(x - 2, y - 2, 4, 4);
    });
    c.stroke(); c.fillStyle = colors[i % colors.length];
    c.fillText(name, pad + 6 + 110 * i, h - 10);
  });
  if (labels.length) { c.fillStyle = '#333'; c.fillText(labels[0], pad, h - pad + 12);
    c.fillText(labels[labels.length - 1], w - 60, h - pad + 12); }
  canvas.dataset.drawn = String(all.length);
}
"""


def escape(text: str) -> str:
    return html.escape(text, quote=True)


def query_string(params: dict[str, str]) -> str:
    return urlencode({k: v for k, v in params.items() if v})


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 3600:.1f} h" if value >= 3600 else f"{value:.0f} s"


def refusal(status: int, error: Dp2Error) -> web.Response:
    """A refusal as JSON with its reason code (what scripts and the browser's fetch read)."""
    body = {"reasonCode": error.reason_code, "message": error.message, "hint": error.hint}
    return web.json_response(body, status=status)


def redrive_cell(source: str, redriven_at: str | None, csrf: str) -> str:
    if redriven_at:
        return f"re-driven {escape(redriven_at[:19])}"
    return (
        "<form method=post action='/dashboard/deadletters/redrive' class=inline>"
        f"<input type=hidden name=csrf value='{escape(csrf)}'>"
        f"<input type=hidden name=source value='{escape(source)}'>"
        "<button type=submit class=redrive>Re-drive</button></form>"
    )


def search_form(user: User, query: Any = None) -> str:
    q = query or {}
    states = "".join(
        f"<option{' selected' if q.get('state') == s.value else ''}>{s.value}</option>"
        for s in LifecycleState
        if s is not LifecycleState.UNKNOWN
    )
    sender = (
        "<label>Sender CVR <input name=sender size=9 "
        f"value='{escape(q.get('sender', ''))}'></label>"
        if user.is_operator
        else ""
    )
    return f"""<form action="/dashboard/search" class=card id=search>
<label>Message UUID <input name=uuid size=38 value='{escape(q.get("uuid", ""))}'></label>
{sender} <label>State <select name=state><option value=''>any</option>{states}</select></label>
<label>From <input name=since type=date value='{escape(q.get("since", ""))}'></label>
<label>To <input name=until type=date value='{escape(q.get("until", ""))}'></label>
<button type=submit>Search</button></form>"""


def quarantine_table(events: list[Quarantined]) -> str:
    """The dashboard's list of lifecycle events the authority table refused."""
    rows = "".join(
        f"<tr><td>{escape(q.quarantined_at[:19])}</td><td>{escape(q.message_uuid)}</td>"
        f"<td>{escape(q.state)}</td><td>{escape(q.signer or '(none)')}</td>"
        f"<td>{escape(q.actor)}</td><td>{escape(q.reason_code)}</td>"
        f"<td>{escape(q.reason)}</td><td>{escape(q.source)}</td></tr>"
        for q in events
    )
    return f"""<p>Lifecycle events the authority table refused: they changed no trace,
sent no notification and no receipt.</p><table id=quarantine><tr><th>when (UTC)</th>
<th>message</th><th>state</th><th>signed by</th><th>claimed actor</th><th>reason</th>
<th>why</th><th>read from</th></tr>{rows}</table>"""


def notifications_table(events: list[LifecycleEvent]) -> str:
    """The dashboard's list of notifications sent (or given up), newest first: what a
    citizen was told, by whom, on which channel — the recipient only as a pseudonym."""
    rows = "".join(
        f"<tr><td>{escape(e.occurredAt.isoformat()[:19])}</td>"
        f"<td><a href='/dashboard/messages/{escape(e.messageUUID)}'>"
        f"{escape(e.messageUUID)}</a></td><td>{escape(e.recipientRef or '')}</td>"
        f"<td>{escape(e.channel or '')}</td><td>{escape(e.state.value)}</td>"
        f"<td>{escape(e.attributes.get('provider', ''))}</td>"
        f"<td class=text>{escape(e.attributes.get('text', '') or e.reasonCode or '')}</td></tr>"
        for e in events
    )
    return f"""<p>Every SMS and e-mail the notifier sent (or gave up on), newest first.
The recipient is a pseudonym; the text is the notification's words, never the letter.</p>
<table id=notifications><tr><th>when (UTC)</th><th>message</th><th>recipient</th>
<th>channel</th><th>outcome</th><th>provider</th><th>text</th></tr>{rows}</table>"""


def frame(user: User | None, title: str, body: str, status: int = 200) -> web.Response:
    nav = ""
    if user is not None:
        operator = (
            "<a href='/dashboard/deadletters'>Dead letters</a>"
            "<a href='/dashboard/quarantine'>Quarantine</a>"
            if user.is_operator
            else ""
        )
        who = f"{escape(user.name)} ({user.role}{', CVR ' + escape(user.cvr) if user.cvr else ''})"
        nav = f"""<a href='/dashboard/'>Overview</a><a href='/dashboard/search'>Search</a>
<a href='/dashboard/stats'>Statistics</a><a href='/dashboard/notifications'>Notifications</a>
{operator}<span class=who>{who}
<form method=post action='/dashboard/logout' class=inline><button>Log out</button></form>
</span>"""
    page = f"""<!doctype html><html lang=en><head><meta charset=utf-8>
<title>{escape(title)}</title><style>{STYLE}</style></head><body>
<header><b>DP2</b>{nav}</header><main><h1>{escape(title)}</h1>{body}</main></body></html>"""
    return web.Response(text=page, content_type="text/html", status=status)
