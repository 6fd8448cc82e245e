"""``dp2 dashboard user add|remove`` and ``dp2 dashboard token``: logins and API tokens for the
dashboard and the trace API (tracing.access)."""

from __future__ import annotations

import argparse
import getpass

from brokers.runtime.settings import Settings
from tracing.access import ROLES, Users


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dashboard_command", required=True, metavar="ACTION")
    user = sub.add_parser("user", help="dashboard users")
    usub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = usub.add_parser("add", help="add or replace a user")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True)
    add.add_argument("--cvr", help="the authority's CVR (role authority)")
    add.add_argument("--password", help="(development) instead of a prompt")
    add.set_defaults(func=cmd_user_add)
    remove = usub.add_parser("remove", help="remove a user: its sessions and tokens end")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_user_remove)
    token = sub.add_parser("token", help="a bearer token for the trace API, as a user")
    token.add_argument("name")
    token.add_argument("--days", type=float, default=30.0, help="validity (default 30)")
    token.set_defaults(func=cmd_token)


def cmd_user_add(settings: Settings, args: argparse.Namespace) -> int:
    password = args.password or getpass.getpass(f"password for {args.name}: ")
    user = Users.of(settings).add(args.name, password, args.role, args.cvr)
    print(f"dashboard user {user.name} ({user.role}{', CVR ' + user.cvr if user.cvr else ''})")
    return 0


def cmd_user_remove(settings: Settings, args: argparse.Namespace) -> int:
    users = Users.of(settings)
    removed = users.remove(args.name)
    users.close()
    print(f"dashboard user {args.name} {'removed' if removed else 'was not there'}")
    return 0 if removed else 1


def cmd_token(settings: Settings, args: argparse.Namespace) -> int:
    print(Users.of(settings).token(args.name, days=args.days))
    return 0
