"""``dp2 receipt UUID``, ``dp2 receipt verify FILE`` and ``dp2 log verify``: the evidence.

A receipt is a message's events as their actors signed them, with inclusion proofs
and a signed tree head (tracing.evidence); anyone checks it offline with the CA
certificate alone. ``dp2 log verify`` checks the tracing service's whole stored log
on the deployment's machine and names the first entry that does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from brokers.runtime.settings import Settings
from brokers.security.signing import load_certificate_der
from brokers.security.trust import load_certificate, principal_name
from schemas.errors import Dp2Error
from tracing.access import Users
from tracing.evidence import LogInvalid, ReceiptInvalid, verify_log, verify_receipt


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    if command == "log":
        sub = parser.add_subparsers(dest="log_command", required=True, metavar="ACTION")
        check = sub.add_parser("verify", help="check every entry and tree head of the log")
        check.add_argument("--ca", help="the CA certificate (default: this deployment's)")
        check.add_argument(
            "--log",
            help="the log: a file or a postgresql:// URL "
            "(default: DP2_DATABASE_URL, else $DP2_HOME/data/evidence.sqlite)",
        )
        check.set_defaults(func=cmd_log_verify)
        return
    parser.add_argument("uuid", metavar="UUID|verify", help="a message UUID, or: verify FILE")
    parser.add_argument("file", nargs="?", help="with verify: the receipt to check")
    parser.add_argument("-o", "--output", help="write the receipt here (default: UUID.json)")
    parser.add_argument("--ca", help="with verify: the CA certificate (default: this deployment's)")
    parser.add_argument("--url", help="tracing service (default: this deployment's)")
    parser.add_argument("--token", help="trace API token (default: the local operator's)")
    parser.set_defaults(func=cmd_receipt)


def _ca(settings: Settings | None, path: str | None) -> Any:
    if path:
        return load_certificate(Path(path))
    if settings is None:
        raise Dp2Error("no CA given", reason_code="CA_REQUIRED", hint="Pass --ca ca.pem.")
    return load_certificate(settings.pki_dir / "ca" / "cert.pem")


async def _fetch(url: str, token: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(url, headers=headers) as response,
    ):
        body: dict[str, Any] = await response.json()
        if response.status != 200:
            error = body.get("error", {})
            raise Dp2Error(
                error.get("message", f"HTTP {response.status}"),
                reason_code=error.get("reasonCode", "RECEIPT_UNAVAILABLE"),
                hint=error.get("hint", "Check the UUID and the tracing service."),
            )
        return body


def cmd_receipt(settings: Settings, args: argparse.Namespace) -> int:
    if args.uuid == "verify":
        if not args.file:
            raise Dp2Error(
                "which receipt?", reason_code="RECEIPT_REQUIRED", hint="dp2 receipt verify FILE"
            )
        try:
            doc = json.loads(Path(args.file).read_text())
            events = verify_receipt(doc, _ca(settings, args.ca))
        except (ReceiptInvalid, ValueError) as exc:
            print(f"dp2 receipt: NOT VALID: {exc}", file=sys.stderr)
            return 1
        print(f"receipt of {doc['messageUUID']} holds: {len(events)} events in the signed log")
        signers = {
            fp: principal_name(load_certificate_der(base64.b64decode(der)))
            for fp, der in doc["certificates"].items()
        }
        for event in events:
            signer = signers.get(event.attributes.get("signer", ""), "?")
            print(f"  {event.occurredAt.isoformat()}  {event.state.value:<20} signed by {signer}")
        return 0
    url = (args.url or settings.tracing_url).rstrip("/")
    token = args.token or os.environ.get("DP2_TRACE_TOKEN") or Users.of(settings).local_token()
    doc = asyncio.run(_fetch(f"{url}/messages/{args.uuid}/receipt", token))
    path = Path(args.output or f"{args.uuid}.json")
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path} ({len(doc['events'])} events, tree of {doc['treeHead']['size']})")
    return 0


def cmd_log_verify(settings: Settings, args: argparse.Namespace) -> int:
    # The log in PostgreSQL (DP2_DATABASE_URL, or --log postgresql://...), else the file.
    given: str | None = args.log or settings.database_url
    log: Path | str = (
        given
        if given and given.startswith(("postgresql://", "postgres://"))
        else Path(given)
        if given
        else settings.home / "data" / "evidence.sqlite"
    )
    try:
        report = verify_log(log, _ca(settings, args.ca))
    except LogInvalid as exc:
        print(f"dp2 log verify: {exc.reason_code}: {exc.message}", file=sys.stderr)
        print(f"  how to fix: {exc.hint}", file=sys.stderr)
        return 1
    print(f"log holds: {report.entries} entries, {report.heads} signed tree heads, all consistent")
    return 0
