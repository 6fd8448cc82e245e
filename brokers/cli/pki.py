"""``dp2 pki``: the development PKI — init the CA, issue, revoke and list certificates."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from brokers.runtime.settings import Settings
from brokers.security.pki import Identity, IssueOptions, Pki
from brokers.security.signing import (
    DEFAULT_SIGNATURE_ALGORITHM,
    SIGNATURE_ALGORITHMS,
    certificate_fingerprint,
    signature_algorithm,
)
from brokers.security.trust import PROVIDER, SENDER, VENDOR, kind_of, sender_cvrs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="pki_command", required=True, metavar="ACTION")

    init = sub.add_parser("init", help="make the root CA and an empty CRL (once)")
    init.add_argument(
        "--algorithm", choices=SIGNATURE_ALGORITHMS, default=DEFAULT_SIGNATURE_ALGORITHM
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=cmd_pki_init)

    issue = sub.add_parser("issue", help="issue a sender, vendor or provider certificate")
    kinds = issue.add_subparsers(dest="kind", required=True, metavar="KIND")

    def issuing(kind: str, help_text: str) -> argparse.ArgumentParser:
        parser = kinds.add_parser(kind, help=help_text)
        parser.add_argument("--days", type=int, default=365, help="validity (default 365)")
        parser.add_argument("--algorithm", choices=SIGNATURE_ALGORITHMS, help="default: the CA's")
        parser.add_argument("--force", action="store_true", help="replace an existing identity")
        return parser

    sender = issuing(SENDER, "an organisation's signing certificate (CVR in the subject)")
    sender.add_argument("--cvr", required=True, help="8 digits")
    sender.add_argument("--name", required=True, help="identity name, e.g. aarhus-kommune")
    sender.set_defaults(func=cmd_pki_issue_sender)
    vendor = issuing(VENDOR, "a vendor connector that sends on behalf of organisations")
    vendor.add_argument("--name", required=True)
    vendor.add_argument("--on-behalf-of", required=True, metavar="CVR[,CVR]")
    vendor.set_defaults(func=cmd_pki_issue_vendor)
    provider = issuing(PROVIDER, "a mailbox provider: signing + X25519 encryption certificates")
    provider.add_argument("--id", required=True, help="provider id, e.g. mitpost")
    provider.add_argument(
        "--citizen-gateway",
        action="store_true",
        help="a connector that logs citizens in itself (forms, mail submission): it may "
        "send for any citizen, not only those the register names this provider for",
    )
    provider.set_defaults(func=cmd_pki_issue_provider)

    revoke = sub.add_parser("revoke", help="put an identity or certificate on the CRL")
    revoke.add_argument("target", metavar="NAME_OR_FINGERPRINT")
    revoke.set_defaults(func=cmd_pki_revoke)

    listing = sub.add_parser("list", help="every identity with its kind and status")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_pki_list)


def _pki(settings: Settings) -> Pki:
    return Pki(settings.pki_dir)


def _issue_options(args: argparse.Namespace) -> IssueOptions:
    return IssueOptions(days=args.days, algorithm=args.algorithm, force=args.force)


def _print_identity(identity: Identity, pki: Pki) -> None:
    print(f"{identity.kind} {identity.name}: {identity.fingerprint}")
    print(f"  {pki.root / 'identities' / identity.name}")


def cmd_pki_init(settings: Settings, args: argparse.Namespace) -> int:
    pki = _pki(settings)
    cert = pki.init(args.algorithm, force=args.force)
    print(f"CA {certificate_fingerprint(cert)} ({signature_algorithm(cert.public_key())})")
    print(f"  {pki.root}")
    return 0


def cmd_pki_issue_sender(settings: Settings, args: argparse.Namespace) -> int:
    pki = _pki(settings)
    _print_identity(pki.issue_sender(args.cvr, args.name, **_issue_options(args)), pki)
    return 0


def cmd_pki_issue_vendor(settings: Settings, args: argparse.Namespace) -> int:
    pki = _pki(settings)
    cvrs = [c.strip() for c in args.on_behalf_of.split(",") if c.strip()]
    _print_identity(pki.issue_vendor(args.name, cvrs, **_issue_options(args)), pki)
    return 0


def cmd_pki_issue_provider(settings: Settings, args: argparse.Namespace) -> int:
    pki = _pki(settings)
    identity = pki.issue_provider(
        args.id, citizen_gateway=args.citizen_gateway, **_issue_options(args)
    )
    _print_identity(identity, pki)
    return 0


def cmd_pki_revoke(settings: Settings, args: argparse.Namespace) -> int:
    revoked = _pki(settings).revoke(args.target)
    for fingerprint in revoked:
        print(f"revoked {fingerprint}")
    if not revoked:
        print(f"{args.target} was already revoked")
    return 0


def cmd_pki_list(settings: Settings, args: argparse.Namespace) -> int:
    pki = _pki(settings)
    revoked = pki.revoked_serials()
    now = datetime.now(UTC)
    rows = []
    for name in pki.names():
        cert = pki.identity(name).certificate
        status = (
            "revoked"
            if cert.serial_number in revoked
            else "expired"
            if now > cert.not_valid_after_utc
            else "valid"
        )
        rows.append(
            {
                "name": name,
                "kind": kind_of(cert),
                "fingerprint": certificate_fingerprint(cert),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "status": status,
                "may_send_as": sorted(sender_cvrs(cert)),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    for row in [] if args.json else rows:
        print(
            f"{row['name']:<24} {row['kind']:<9} {row['fingerprint'][:16]}  "
            f"{row['not_after'][:10]}  {row['status']:<7} {','.join(row['may_send_as'])}"
        )
    return 0
