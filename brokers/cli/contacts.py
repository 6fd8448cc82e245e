"""``dp2 contacts``: load a contact file into the register, show one person's record."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from brokers.cli.output import say
from brokers.contacts.records import read_contact_file
from brokers.contacts.register import ContactRegister, publish_contacts
from brokers.runtime.kafka import ensure_topics
from brokers.runtime.settings import Settings
from brokers.security.pseudonyms import Pseudonymizer, pseudonym_key
from brokers.stack.access import ADMIN_IDENTITY, REGISTER_IDENTITY
from schemas.vocabulary import CONTACTS_TOPIC, TOPICS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    csub = parser.add_subparsers(dest="contacts_command", required=True, metavar="ACTION")
    load = csub.add_parser("load", help="load a CSV or JSON contact file (ids pseudonymised)")
    load.add_argument("file")
    load.set_defaults(func=cmd_contacts_load)
    show = csub.add_parser("show", help="show the record of a CPR or CVR number")
    show.add_argument("id")
    show.add_argument("--type", choices=("CPR", "CVR"), default="CPR")
    show.set_defaults(func=cmd_contacts_show)


def cmd_contacts_load(settings: Settings, args: argparse.Namespace) -> int:
    pseudonyms = Pseudonymizer(pseudonym_key(settings.home))
    records = read_contact_file(Path(args.file), pseudonyms)
    asyncio.run(ensure_topics(settings.kafka_as(ADMIN_IDENTITY), TOPICS))
    count = asyncio.run(
        publish_contacts(
            settings.kafka_as(REGISTER_IDENTITY),
            records,
            progress=lambda done: say(f"published {done:,} records…"),
        )
    )
    print(f"loaded {count} contact records into dp2.directory and dp2.contacts")
    return 0


async def _show_contact(settings: Settings, ref: str) -> dict[str, Any] | None:
    register = ContactRegister(settings.kafka_as(REGISTER_IDENTITY), topic=CONTACTS_TOPIC)
    await register.start()
    try:
        record = register.get(ref)
    finally:
        await register.stop()
    return None if record is None else dataclasses.asdict(record)


def cmd_contacts_show(settings: Settings, args: argparse.Namespace) -> int:
    ref = Pseudonymizer(pseudonym_key(settings.home)).ref(args.type, args.id)
    record = asyncio.run(_show_contact(settings, ref))
    if record is None:
        print(f"no contact record for that {args.type} number (pseudonym {ref})")
        return 1
    print(json.dumps(record, indent=2, default=str))
    return 0
