"""A broker killed under load on a real 3-node cluster (issue 17): nothing lost, nothing twice.

``dp2 up --nodes 3`` runs the core pipeline (validator, router, tracing, the
reference mailbox, the notifier and the local SMTP/SMS capture) on three KRaft
nodes with DP2's topics replicated three ways (min ISR 2). A sender sends letters
at a steady rate; a few seconds in, one broker is killed with SIGKILL and brought
back ten seconds later. The sender does what the SDK tells it: a receipt means the
letter is in Kafka, ``NotSubmitted`` means send the same letter (same UUID) again.

Counted at the end: every letter receipted is delivered, once (the mailbox holds
one row per letter), and notified; the stall — the longest time no letter was
delivered — and any record the delivery topic carries twice are printed for the notes.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from brokers.runtime.kafka import new_consumer
from brokers.runtime.settings import Settings
from brokers.stack.access import ADMIN_IDENTITY
from brokers.stack.kafka import free_base_port
from connectors.sdk import Document, Dp2Client, NotSubmitted, build_message
from schemas import codec
from schemas.errors import Dp2Error
from schemas.models import Envelope
from tests.integration.conftest import free_http_base

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

LETTERS = 240
RATE = 15.0  # letters a second, as in the measurement
KILL_AT_S, DOWN_FOR_S = 4.0, 10.0
CITIZEN = "0101901234"  # the demo register's citizen on digital post (mitpost)


def test_a_broker_killed_under_load_loses_nothing_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    # The core pipeline only: no connectors (the demo's paper letter waits ROUTED).
    (home / "connectors.toml").write_text("# the fault test runs no connectors\n")
    kafka_port = free_base_port(nodes=3)
    env = {
        **os.environ,
        "DP2_HOME": str(home),
        "DP2_KAFKA_PORT": str(kafka_port),
        "DP2_PORT_BASE": str(free_http_base(47000)),
    }
    for name in ("DP2_KAFKA_BOOTSTRAP", "DP2_SMTP_HOST", "DP2_SMS_PROVIDERS", "DP2_PKI"):
        env.pop(name, None)

    dp2 = functools.partial(_dp2, env)

    try:
        up = dp2("up", "--nodes", "3", "--detach", "--demo")
        assert up.returncode == 0, up.stderr
        bootstrap = ",".join(f"127.0.0.1:{kafka_port + 100 * i}" for i in range(3))
        settings = Settings.from_env({**env, "DP2_KAFKA_BOOTSTRAP": bootstrap})

        def kill_one_broker() -> int:
            status = json.loads(dp2("kafka", "status", "--port", str(kafka_port), "--json").stdout)
            victim = status[0]["nodes"][1]
            os.kill(victim["pid"], signal.SIGKILL)
            return int(victim["pid"])

        def restart_brokers() -> None:
            started = dp2("kafka", "start", "--nodes", "3", "--port", str(kafka_port))
            assert started.returncode == 0, started.stderr

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the lost node, each retry
        report = asyncio.run(_load_with_a_fault(settings, kill_one_broker, restart_brokers))
        receipted: set[str] = report.pop("receipted_uuids")
        print(f"[faults] {json.dumps(report)}", file=sys.stderr)

        assert len(receipted) == LETTERS, "every letter got a receipt in the end"
        assert report["undelivered"] == 0, report
        assert report["unnotified"] == 0, report
        stored = _mailbox_rows(home, receipted)
        assert set(stored) == receipted and set(stored.values()) == {1}, "each stored once"
        deliveries = asyncio.run(_delivery_records(settings, receipted))
        assert set(deliveries) == receipted
        # A produce that timed out while the broker was gone may still have landed, so
        # its retry can write a record twice; readers de-duplicate (the mailbox above
        # holds each letter once). Reported, not asserted: a broker's loss is that race.
        extra = sum(n - 1 for n in deliveries.values())
        print(f"[faults] extra records on the delivery topic: {extra}", file=sys.stderr)
    finally:
        down = dp2("down")
    assert down.returncode == 0, down.stderr


def test_killing_an_instance_of_each_service_under_load_loses_nothing(tmp_path: Path) -> None:
    """``dp2 up --instances 2``: two processes of the validator, router, mailbox and
    notifier in one consumer group each, sharing their stores. SIGKILL the first
    instance of every one of them under load: the second takes the partitions over;
    then ``dp2 up`` again restarts what is down. Every letter is delivered once and
    notified."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "connectors.toml").write_text("# the fault test runs no connectors\n")
    env = {
        **os.environ,
        "DP2_HOME": str(home),
        "DP2_KAFKA_PORT": str(free_base_port()),
        "DP2_PORT_BASE": str(free_http_base(47000)),
    }
    for name in ("DP2_KAFKA_BOOTSTRAP", "DP2_SMTP_HOST", "DP2_SMS_PROVIDERS", "DP2_PKI"):
        env.pop(name, None)

    dp2 = functools.partial(_dp2, env)

    victims = ["validator", "router", "mailbox-mitpost", "notifier"]
    try:
        up = dp2("up", "--instances", "2", "--detach", "--demo")
        assert up.returncode == 0, up.stderr
        running = {s["name"] for s in json.loads(dp2("status", "--json").stdout)["services"]}
        assert {f"{v}-2" for v in victims} <= running, running
        settings = Settings.from_env(env)

        def kill_first_instances() -> int:
            for victim in victims:
                info = json.loads((home / "run" / f"{victim}.json").read_text())
                os.kill(info["pid"], signal.SIGKILL)
            return len(victims)

        def start_again() -> None:
            again = dp2("up", "--instances", "2", "--detach")
            assert again.returncode == 0, again.stderr

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        # Down long enough that the letters can only be the second instances' work.
        report = asyncio.run(
            _load_with_a_fault(settings, kill_first_instances, start_again, down_for=30.0)
        )
        receipted: set[str] = report.pop("receipted_uuids")
        report["killed"] = victims
        print(f"[faults] {json.dumps(report)}", file=sys.stderr)
        assert len(receipted) == LETTERS
        assert report["undelivered"] == 0 and report["unnotified"] == 0, report
        assert report["delivered_before_restart"] == LETTERS, "the second instances took over"
        stored = _mailbox_rows(home, receipted)
        assert set(stored) == receipted and set(stored.values()) == {1}, "each stored once"
        services = json.loads(dp2("status", "--json").stdout)["services"]
        assert all(s["health"] in ("up", "degraded") for s in services), services
    finally:
        down = dp2("down")
    assert down.returncode == 0, down.stderr


def _dp2(env: dict[str, str], *args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "brokers.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def _load_with_a_fault(
    settings: Settings, kill: Any, restart: Any, down_for: float = DOWN_FOR_S
) -> dict[str, Any]:
    """Send LETTERS at RATE, calling ``kill`` at KILL_AT_S and ``restart`` ``down_for``
    seconds later; then wait for every letter's DELIVERED and NOTIFIED."""
    letters = [
        build_message(
            sender_cvr="29189846",
            sender_label="Demo Kommune",
            recipient_id=CITIZEN,
            label=f"Brev {n}",
            documents=[Document("brev.txt", "text/plain", f"Brev nummer {n}".encode())],
            notification="Du har fået post fra Demo Kommune",
        )
        for n in range(LETTERS)
    ]
    resends = 0
    receipted: set[str] = set()
    async with Dp2Client.from_settings(settings, "demo-kommune") as client:

        async def send(message: Any) -> None:
            nonlocal resends
            while True:
                try:
                    await client.send(message)
                except (NotSubmitted, Dp2Error) as exc:
                    if not getattr(exc, "retriable", False) and not isinstance(exc, NotSubmitted):
                        raise
                    resends += 1
                    await asyncio.sleep(1.0)
                    continue
                receipted.add(message.header.messageUUID)
                return

        started = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        fault = asyncio.create_task(_fault(kill, restart, down_for))
        for n, message in enumerate(letters):
            await asyncio.sleep(max(0.0, started + n / RATE - time.monotonic()))
            tasks.append(asyncio.create_task(send(message)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=300)
        killed_pid, restarted_at = await fault
        delivered_at: dict[str, datetime] = {}
        undelivered = unnotified = 0

        async def settle(message_uuid: str) -> None:
            nonlocal undelivered, unnotified
            try:
                event = await client.wait_for(message_uuid, {"DELIVERED"}, timeout=180)
                delivered_at[message_uuid] = event.occurredAt
            except Dp2Error:
                undelivered += 1
                return
            try:
                await client.wait_for(message_uuid, {"NOTIFIED"}, timeout=120)
            except Dp2Error:
                unnotified += 1

        await asyncio.gather(*(settle(u) for u in receipted))
    times = sorted(delivered_at.values())
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    return {
        "letters": LETTERS,
        "rate_per_s": RATE,
        "killed": killed_pid,
        "down_for_s": down_for,
        "delivered_before_restart": sum(1 for t in times if t < restarted_at),
        "resends": resends,
        "receipted": len(receipted),
        "undelivered": undelivered,
        "unnotified": unnotified,
        "stall_s": round(max(gaps, default=0.0), 2),
        "receipted_uuids": receipted,
    }


async def _fault(kill: Any, restart: Any, down_for: float) -> tuple[int, datetime]:
    await asyncio.sleep(KILL_AT_S)
    what = await asyncio.to_thread(kill)
    await asyncio.sleep(down_for)
    restarted_at = datetime.now(UTC)
    await asyncio.to_thread(restart)
    return int(what), restarted_at


def _mailbox_rows(home: Path, uuids: set[str]) -> dict[str, int]:
    db = sqlite3.connect(home / "data" / "mailbox-mitpost.sqlite")
    try:
        rows = db.execute("SELECT message_uuid, COUNT(*) FROM messages GROUP BY 1").fetchall()
    finally:
        db.close()
    return {str(u): int(n) for u, n in rows if u in uuids}


async def _delivery_records(settings: Settings, uuids: set[str]) -> dict[str, int]:
    """How often each letter was written to the provider's delivery topic."""
    consumer = new_consumer(
        settings.kafka_as(ADMIN_IDENTITY),
        "dp2.deliver.mitpost",
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    counts: Counter[str] = Counter()
    try:
        idle = 0
        while idle < 3:
            batch = await consumer.getmany(timeout_ms=1000)
            idle = 0 if batch else idle + 1
            for records in batch.values():
                for record in records:
                    message_uuid = codec.decode(record.value or b"", Envelope).header.messageUUID
                    if message_uuid in uuids:
                        counts[message_uuid] += 1
    finally:
        await consumer.stop()
    return dict(counts)
