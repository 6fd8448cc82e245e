"""``dp2 bench --big-document-mb N``: one large document through the SDK and the blob store.

Why it exists: the claim check promises that a large document costs memory once — in
the sender, who holds its plaintext — and never again on the way: the SDK encrypts
it a chunk at a time straight into the blob store, the validator reads the stored
blob a piece at a time (or, over the limit, not at all), and the mailbox decrypts it
a chunk at a time. This run measures that on the bench's own stack (every service its
own process): one letter of N MB from a bench sender to a bench recipient, then

- the sender's seal time and how much its memory grew beyond the document itself,
- the time to the final state (DELIVERED up to 99.5 MB, else REJECTED
  MESSAGE_TOO_LARGE, which the validator finds from the stored size alone),
- each service's peak RSS growth (VmHWM, reset before the letter where Linux lets us).

:func:`write_memo` writes a MeMo file of that size a piece at a time, for the ESDH
connector's test (tests/integration/test_big_input.py) and anyone timing POST /memo.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from brokers.bench.config import PROVIDER, Config, say
from brokers.bench.load import contact_rows, sender_names
from brokers.contacts.register import ContactRegister
from brokers.runtime.settings import Settings
from brokers.stack.access import ADMIN_IDENTITY
from brokers.validator.rules import MAX_AUTHORITY_BYTES
from connectors.sdk import Document, Dp2Client, build_message
from schemas import codec, memo
from schemas.models import Envelope

_MARK = b"dp2-bench-big-document-mark"
_BLOCK = 3 * 256 * 1024  # a multiple of 3: the pieces' base64 concatenates
MB = 1_000_000


def write_memo(path: Path, message: Envelope, size: int) -> str:
    """Write ``message`` as MeMo XML to `path`, its one file replaced by `size` random
    bytes (base64, one line), without holding them; the SHA-256 (hex) of those bytes.

    ``message``'s only file must hold :data:`MARK_DOCUMENT`.
    """
    head, tail = memo.to_xml(message).split(base64.b64encode(_MARK))
    digest = hashlib.sha256()
    with path.open("wb") as out:
        out.write(head)
        left = size
        while left:
            piece = os.urandom(min(_BLOCK, left))
            left -= len(piece)
            digest.update(piece)
            out.write(base64.b64encode(piece))
        out.write(tail)
    return digest.hexdigest()


MARK_DOCUMENT = Document("stor-sag.pdf", "application/pdf", _MARK)


# --- peak memory of processes --------------------------------------------------------------
def _status(pid: int, field: str) -> int | None:
    """A ``VmHWM``/``VmRSS`` value of /proc/<pid>/status in bytes (None off Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def reset_peaks(pids: dict[str, int]) -> dict[str, int | None]:
    """Reset each process's peak RSS where Linux lets us; each one's RSS now."""
    for pid in pids.values():
        # Where it fails, the peak since start counts: still an upper bound.
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")
    return {name: _status(pid, "VmRSS") for name, pid in pids.items()}


def peak_growth(pids: dict[str, int], before: dict[str, int | None]) -> dict[str, float | None]:
    """Each process's peak RSS since reset_peaks, less its RSS then, in MB."""
    grown: dict[str, float | None] = {}
    for name, pid in pids.items():
        peak, base = _status(pid, "VmHWM"), before.get(name)
        grown[name] = None if peak is None or base is None else round((peak - base) / MB, 1)
    return grown


# --- the run -------------------------------------------------------------------------------
async def big_document(settings: Settings, config: Config, pids: dict[str, int]) -> dict[str, Any]:
    """Send one document of ``config.big_document_mb`` MB and measure it (see above)."""
    size = round((config.big_document_mb or 0) * MB)
    contacts = ContactRegister(settings.kafka_as(ADMIN_IDENTITY))
    await contacts.start()
    name, cvr = sender_names(1)[0]
    client = Dp2Client.from_settings(settings, name, contacts=contacts)
    await client.start()
    try:
        recipient = contact_rows(1, 0.0)[0]["id"]
        say(f"making a {size / MB:,.0f} MB document for {PROVIDER}")
        data = os.urandom(size)
        message = build_message(
            sender_cvr=cvr,
            sender_label="Bench Kommune 1",
            recipient_id=recipient,
            label="Stor sag",
            documents=[Document("stor-sag.pdf", "application/pdf", data)],
        )
        del data
        own = {"bench": os.getpid()}
        before = reset_peaks({**pids, **own})
        started = time.perf_counter()
        signed, key = await asyncio.to_thread(client.seal_and_sign, message)
        sealed = time.perf_counter()
        seal_growth = peak_growth(own, before)["bench"]
        raw = codec.encode(signed)
        receipt = await client.submit(raw, signed.header.messageUUID, key)
        say(f"submitted {receipt.message_uuid} ({len(raw):,} bytes on Kafka); waiting")
        event = await client.wait_for(
            receipt.message_uuid,
            {"DELIVERED", "REJECTED", "FAILED"},
            timeout=config.drain_timeout_s,
        )
        finished = time.perf_counter()
        services = peak_growth({**pids, **own}, before)
    finally:
        await client.stop()
        await contacts.stop()
    expected = "DELIVERED" if size <= MAX_AUTHORITY_BYTES else "REJECTED MESSAGE_TOO_LARGE"
    outcome = event.state.value + (f" {event.reasonCode}" if event.reasonCode else "")
    return {
        "schema": "dp2-bench-big/1",
        "document_mb": round(size / MB, 1),
        "record_bytes": len(raw),
        "outcome": outcome,
        "expected": expected,
        "as_expected": outcome == expected,
        "seal_s": round(sealed - started, 2),
        "seal_mb_per_s": round(size / MB / max(sealed - started, 1e-9), 1),
        "sender_growth_mb": seal_growth,
        "submit_to_final_s": round(finished - sealed, 2),
        "peak_growth_mb": services,
    }


def render(figures: dict[str, Any]) -> str:
    """The figures of a big-document run as the bench prints them."""
    lines = [
        f"big document: {figures['document_mb']:,} MB through the SDK and the blob store",
        f"  outcome          {figures['outcome']} (expected {figures['expected']})",
        f"  seal             {figures['seal_s']} s ({figures['seal_mb_per_s']} MB/s), "
        f"sender grew {figures['sender_growth_mb']} MB beyond the document",
        f"  Kafka record     {figures['record_bytes']:,} bytes (the claim check)",
        f"  submit -> final  {figures['submit_to_final_s']} s",
        "  peak RSS growth per process (MB):",
    ]
    for name, grown in sorted(figures["peak_growth_mb"].items()):
        lines.append(f"    {name:<18} {'n/a' if grown is None else grown}")
    return "\n".join(lines)


def write(figures: dict[str, Any], results_dir: Path, stem: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{stem}-big.json"
    path.write_text(json.dumps(figures, indent=2))
    return path
