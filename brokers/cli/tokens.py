"""``dp2 tokens issue`` and ``dp2 tokens authority``: development bearer tokens for
citizen-facing connectors (not MitID), and access tokens for an authority's case system."""

from __future__ import annotations

import argparse
from datetime import timedelta

from brokers.runtime.settings import Settings
from connectors.authorities import AuthorityTokens
from connectors.citizens import DevTokens


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    issue = sub.add_parser("issue", help="a bearer token bound to a CPR number")
    issue.add_argument("--cpr", required=True, help="10 digits")
    issue.add_argument("--hours", type=float, default=12.0, help="validity (default 12)")
    issue.set_defaults(func=cmd_tokens_issue)
    authority = sub.add_parser(
        "authority", help="an access token bound to an authority's CVR (ESDH, SF1601)"
    )
    authority.add_argument("--cvr", required=True, help="8 digits")
    authority.add_argument("--days", type=float, default=90.0, help="validity (default 90)")
    authority.set_defaults(func=cmd_tokens_authority)


def cmd_tokens_issue(settings: Settings, args: argparse.Namespace) -> int:
    token = DevTokens.from_home(settings.home).issue(args.cpr, ttl=timedelta(hours=args.hours))
    print(token)
    return 0


def cmd_tokens_authority(settings: Settings, args: argparse.Namespace) -> int:
    tokens = AuthorityTokens.from_home(settings.home)
    print(tokens.issue(args.cvr, ttl=timedelta(days=args.days)))
    return 0
