"""``dp2 tokens issue``: development bearer tokens for citizen-facing connectors (not MitID)."""

from __future__ import annotations

import argparse
from datetime import timedelta

from brokers.runtime.settings import Settings
from connectors.citizens import DevTokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    issue = sub.add_parser("issue", help="a bearer token bound to a CPR number")
    issue.add_argument("--cpr", required=True, help="10 digits")
    issue.add_argument("--hours", type=float, default=12.0, help="validity (default 12)")
    issue.set_defaults(func=cmd_tokens_issue)


def cmd_tokens_issue(settings: Settings, args: argparse.Namespace) -> int:
    token = DevTokens.from_home(settings.home).issue(args.cpr, ttl=timedelta(hours=args.hours))
    print(token)
    return 0
