"""``dp2 send``: sign, encrypt and submit one message — from flags or a MeMo XML file."""

from __future__ import annotations

import argparse
import asyncio
import mimetypes
from datetime import UTC, date, datetime
from pathlib import Path

from brokers.cli.output import say
from brokers.runtime.settings import Settings
from brokers.stack import demo
from connectors.sdk import Document, Dp2Client
from schemas import memo
from schemas.errors import Dp2Error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--as", dest="identity", required=True, help="PKI identity to sign with")
    add("--sender-cvr", help="CVR to send as (default: the identity's own)")
    add(
        "--memo",
        metavar="FILE",
        help="a MeMo 1.1/1.2 XML file (instead of flags), or a folder: every *.xml in it",
    )
    add("--to", help="recipient CPR (10 digits) or CVR (8)")
    add("--to-type", choices=("CPR", "CVR"), default="CPR")
    add("--label", help="the letter's title")
    add("--file", action="append", default=[], help="a document (repeatable)")
    add("--notification", help="notification text (160 characters at most)")
    add("--not-before", type=date.fromisoformat, help="doNotDeliverUntilDate")
    add("--nemsms", action="store_true", help="a NemSMS: --notification only")
    parser.set_defaults(func=cmd_send)


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    if args.memo:
        return _send_memo(settings, args)
    if not args.to or not args.label:
        raise Dp2Error(
            "dp2 send needs --to and --label, or --memo FILE",
            reason_code="USAGE",
            hint="Give the recipient and title as flags, or a MeMo XML file with --memo.",
        )
    documents = [
        Document(
            Path(path).name,
            mimetypes.guess_type(path)[0] or "application/octet-stream",
            Path(path).read_bytes(),
        )
        for path in args.file
    ]
    receipt = asyncio.run(demo.send_one(settings, args, documents))
    print(receipt.message_uuid)
    return 0


def _send_memo(settings: Settings, args: argparse.Namespace) -> int:
    """``dp2 send --memo FILE|FOLDER``: MeMo 1.1/1.2 messages as an ESDH would post them.

    A folder's files go in name order over one connection, each UUID on stdout as it
    is accepted by Kafka, progress on stderr; an invalid file is reported and skipped
    (exit 2 at the end), never a reason to stop the others."""
    given = Path(args.memo)
    files = sorted(given.glob("*.xml")) if given.is_dir() else [given]
    if not files:
        raise Dp2Error(
            f"{given} holds no *.xml files",
            reason_code="NO_MEMO_FILES",
            hint="Put MeMo XML files (name.xml) in the folder, or give one file.",
        )

    async def send() -> int:
        failed = 0
        async with Dp2Client.from_settings(settings, args.identity) as client:
            for number, path in enumerate(files, start=1):
                try:
                    message = memo.parse_and_validate(path.read_bytes(), now=datetime.now(UTC))
                except memo.MemoError as exc:
                    failed += 1
                    say(f"dp2: error: {path} is not valid MeMo ({len(exc.violations)} problems):")
                    for violation in exc.violations:
                        say(f"  {violation.code} at {violation.path}: {violation.message}")
                        say(f"    how to fix: {violation.hint}")
                else:
                    print((await client.send(message)).message_uuid, flush=True)
                if len(files) > 1 and (number % 100 == 0 or number == len(files)):
                    say(f"sent {number - failed} of {len(files)} files ({failed} invalid)")
        return 2 if failed else 0

    return asyncio.run(send())
