"""``python -m brokers.stack.deploy``: write or check deploy/compose and deploy/k8s,
issue a cluster's certificates, or prepare a cluster's topics and ACLs.

    python -m brokers.stack.deploy                    # rewrite the example deployment's files
    python -m brokers.stack.deploy --check            # exit 1 and name the stale files
    python -m brokers.stack.deploy --pki DIR --connectors FILE --out DIR   # your deployment
    python -m brokers.stack.deploy certs --pki DIR    # DP2's identities + the brokers' TLS name
    python -m brokers.stack.deploy prepare            # topics and ACLs, as dp2 up makes them
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from brokers.runtime.settings import Settings
from brokers.security.pki import Pki
from brokers.stack import supervisor
from brokers.stack.access import BROKER_IDENTITY, ensure_service_identities
from brokers.stack.deploy import compose, kubernetes
from brokers.stack.deploy.files import DEPLOY_DIR, stale, write
from brokers.stack.deploy.model import BROKERS, example_deployment, from_files, mailbox_providers
from connectors.base import read_config
from schemas.errors import Dp2Error


def _files(args: argparse.Namespace) -> int:
    if bool(args.pki) != bool(args.connectors):
        print("give both --pki and --connectors, or neither", file=sys.stderr)
        return 2
    deployment = (
        from_files(Path(args.pki), Path(args.connectors)) if args.pki else example_deployment()
    )
    root = Path(args.out)
    if args.check:
        out_of_date = stale(deployment, root)
        for relative in out_of_date:
            print(f"stale: {root / relative}", file=sys.stderr)
        return 1 if out_of_date else 0
    for relative in write(deployment, root):
        print(f"wrote {root / relative}")
    return 0


def _certs(args: argparse.Namespace) -> int:
    """DP2's own identities, and the brokers' certificate with every name it is reached by."""
    pki = Pki(Path(args.pki))
    fresh = ensure_service_identities(pki)
    hosts = [
        "127.0.0.1",
        "localhost",
        *(compose.kafka_host(n) for n in range(1, BROKERS + 1)),
        *kubernetes.listener_hosts(),
    ]
    if BROKER_IDENTITY not in pki.names() or args.force:
        pki.issue_service(BROKER_IDENTITY, hosts=hosts, days=3650, force=args.force)
        fresh.append(BROKER_IDENTITY)
    print(
        f"issued: {', '.join(fresh)}"
        if fresh
        else "nothing to issue (--force re-issues the brokers')"
    )
    return 0


def _prepare(_: argparse.Namespace) -> int:
    """What dp2 up does before it starts the services, for a cluster it did not start."""
    settings = Settings.from_env()
    providers = mailbox_providers(supervisor.providers_in_pki(settings), read_config(settings))
    created, added, removed = asyncio.run(supervisor.prepare_kafka(settings, providers))
    print(f"topics created: {', '.join(created) or 'none'}; ACLs: {added} added, {removed} removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brokers.stack.deploy", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only say whether the files are stale")
    parser.add_argument("--pki", help="your PKI folder (default: the example deployment's)")
    parser.add_argument("--connectors", help="your connectors.toml")
    parser.add_argument("--out", default=str(DEPLOY_DIR), help="where deploy/ is")
    sub = parser.add_subparsers(dest="command")
    certs = sub.add_parser("certs", help="issue DP2's identities and the brokers' certificate")
    certs.add_argument("--pki", required=True, help="the PKI folder (dp2 pki init made it)")
    certs.add_argument("--force", action="store_true", help="re-issue the brokers' certificate")
    sub.add_parser("prepare", help="create the topics and apply the ACLs (compose's setup)")
    args = parser.parse_args(argv)
    try:
        if args.command == "certs":
            return _certs(args)
        if args.command == "prepare":
            return _prepare(args)
        return _files(args)
    except Dp2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
