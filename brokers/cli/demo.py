"""``dp2 demo letter`` and ``dp2 capture``: the demo's sample input and what it alerted.

``dp2 demo letter --out FILE`` writes a fresh MeMo letter (a new messageUUID each
time, so sending it again is a new letter, not a DUPLICATE) from the demo
municipality to the demo citizen and prints its UUID; ``--kombi`` wraps it as an
SF1601 KombiPostAfsend request. ``dp2 capture`` lists the e-mails and SMS that the
embedded default's local capture (brokers.stack.capture) received, newest first.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from brokers.runtime.settings import Settings
from brokers.stack import demo, supervisor
from schemas import memo
from schemas.errors import Dp2Error
from tracing.access import Users


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    if command == "demo":
        sub = parser.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
        letter = sub.add_parser("letter", help="write a fresh MeMo letter; prints its UUID")
        letter.add_argument("--out", required=True, help="the file to write")
        letter.add_argument(
            "--kombi", action="store_true", help="as an SF1601 KombiPostAfsend request"
        )
        letter.set_defaults(func=cmd_demo_letter)
    else:
        parser.add_argument("--channel", choices=("SMS", "EMAIL"), help="only this channel")
        parser.add_argument("--limit", type=int, default=20, help="at most this many (20)")
        parser.add_argument(
            "--wait",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="wait up to SECONDS for the first capture",
        )
        parser.add_argument("--json", action="store_true")
        parser.set_defaults(func=cmd_capture)


def cmd_demo_letter(settings: Settings, args: argparse.Namespace) -> int:
    message = demo.demo_letter()
    data = demo.kombi_request(message) if args.kombi else memo.to_xml(message)
    Path(args.out).write_bytes(data)
    print(message.header.messageUUID)
    return 0


def cmd_capture(settings: Settings, args: argparse.Namespace) -> int:
    info = supervisor.read_run_file(settings, "capture")
    if info is None:
        raise Dp2Error(
            "the local capture is not running",
            reason_code="CAPTURE_NOT_RUNNING",
            hint="It runs with dp2 up when no DP2_SMTP_HOST or DP2_SMS_PROVIDERS is set.",
        )
    query = f"limit={args.limit}" + (f"&channel={args.channel}" if args.channel else "")
    deadline = time.monotonic() + args.wait
    while True:
        captured = _fetch(f"{info['url']}/captured?{query}", Users.of(settings).local_token())
        if captured or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if args.json:
        print(json.dumps(captured, indent=2, ensure_ascii=False))
    elif not captured:
        print("nothing captured yet")
    for item in [] if args.json else captured:
        what = f"{item['subject']}: {item['text']}" if item["subject"] else item["text"]
        print(f"{item['at'][:19]}  {item['channel']:<5}  {item['to']:<28}  {what}")
    return 0 if captured else 1


def _fetch(url: str, token: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - 127.0.0.1
            body: dict[str, list[dict[str, Any]]] = json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise Dp2Error(
            f"the local capture at {url.split('/captured', maxsplit=1)[0]} did not answer"
            f" ({getattr(exc, 'reason', exc)})",
            reason_code="CAPTURE_NOT_RUNNING",
            hint="Run dp2 status; dp2 up starts it again.",
        ) from exc
    return body["captured"]
