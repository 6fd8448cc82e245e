"""``dp2 trace UUID [--json] [--follow]``: a message's timeline from the tracing service."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from brokers.runtime.settings import Settings
from tracing.access import Users
from tracing.client import (
    DEFAULT_URL,
    TraceLoginRequired,
    TraceUnreachableError,
    UnknownMessageError,
    fetch_timeline,
    follow,
    render_event,
    render_header,
    render_timeline,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uuid", metavar="UUID", help="the message's messageUUID")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the API's JSON (one event per line with --follow)",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="print events as they arrive, until the state is final (or Ctrl-C)",
    )
    parser.add_argument(
        "--wait",
        metavar="STATE",
        help="wait until the timeline has STATE (e.g. DELIVERED), then print it",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="with --wait: give up after this (60 s)"
    )
    parser.add_argument("--url", help=f"tracing service (default DP2_PORT_BASE's, {DEFAULT_URL})")
    parser.add_argument(
        "--token",
        help="a trace API token (dp2 dashboard token NAME); default: an operator token "
        "from this deployment's key, or DP2_TRACE_TOKEN",
    )
    parser.set_defaults(func=cmd_trace)


async def _follow_and_print(args: argparse.Namespace) -> None:
    header_shown = False
    async for event in follow(args.url, args.uuid, token=args.token):
        if args.json:
            print(json.dumps(event), flush=True)
            continue
        if not header_shown:
            print(render_header({"messageUUID": args.uuid, "state": "(following)"}), flush=True)
            header_shown = True
        print(render_event(event), flush=True)


def _has(doc: dict[str, Any], state: str) -> bool:
    return any(e.get("state") == state.upper() for e in doc.get("timeline", []))


async def _wait_for(args: argparse.Namespace) -> dict[str, Any]:
    """The timeline once it has the state asked for, or as it is at the timeout (a
    message not traced yet is waited for too: its SUBMITTED may be on its way)."""
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            doc = await fetch_timeline(args.url, args.uuid, args.token)
        except UnknownMessageError:
            if time.monotonic() >= deadline:
                raise
        else:
            if _has(doc, args.wait) or time.monotonic() >= deadline:
                return doc
        await asyncio.sleep(0.5)


def cmd_trace(settings: Settings | None, args: argparse.Namespace) -> int:
    """Print the message's timeline (or follow it); exit 1 when unknown or unreachable."""
    if args.url is None:
        args.url = settings.tracing_url if settings is not None else DEFAULT_URL
    if args.token is None:
        args.token = os.environ.get("DP2_TRACE_TOKEN") or (
            Users.of(settings).local_token() if settings is not None else None
        )
    try:
        if args.follow:
            asyncio.run(_follow_and_print(args))
        elif args.wait:
            doc = asyncio.run(_wait_for(args))
            print(json.dumps(doc, indent=2) if args.json else render_timeline(doc))
            if not _has(doc, args.wait):
                print(
                    f"dp2 trace: no {args.wait.upper()} within {args.timeout:.0f} s",
                    file=sys.stderr,
                )
                return 1
        else:
            doc = asyncio.run(fetch_timeline(args.url, args.uuid, args.token))
            print(json.dumps(doc, indent=2) if args.json else render_timeline(doc))
    except (UnknownMessageError, TraceUnreachableError, TraceLoginRequired) as exc:
        print(f"dp2 trace: {exc.reason_code}: {exc.message}", file=sys.stderr)
        print(f"  how to fix: {exc.hint}", file=sys.stderr)
        return 1
    return 0
