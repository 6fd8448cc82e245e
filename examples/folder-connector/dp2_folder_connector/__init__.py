"""Example DP2 connector: a folder in, a folder out.

Why it exists: it is the smallest complete connector — the one a vendor copies. It
shows the three things every connector does:

1. **Implements the contract** (``connectors.base.Connector``): ``name``,
   ``start``, ``stop``, ``health``; a receiving one also ``provider_id`` and
   ``receive``.
2. **Sends with the SDK** (``connectors.sdk``): build a MeMo-shaped message, and
   ``Dp2Client.send`` seals, signs and publishes it; the receipt comes back at once
   and the business receipts follow as lifecycle events.
3. **Is found through its entry point** (``dp2.connectors`` in pyproject.toml) and
   configured by its ``[connectors.folder]`` table, so ``dp2 up`` runs it.

A letter is a JSON file in ``outbox_dir``::

    {"to": "0101901234", "label": "Hej", "text": "Brevets tekst", "toType": "CPR"}

It is sent and moved to ``outbox_dir/sent/`` (or ``failed/`` with the reason), and
the business receipts are appended to ``sent/<name>.receipts.json`` as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from connectors.base import ConnectorContext
from connectors.folders import inside, uuid_file_name
from connectors.sdk import Document, Dp2Client, build_message
from schemas.errors import Dp2Error
from schemas.models import Envelope, IdType

FINAL = {"DELIVERED", "PRINTED", "REJECTED", "FAILED"}


class FolderConnector:
    """Sends every ``*.json`` letter in ``outbox_dir``; records its receipts."""

    def __init__(self, context: ConnectorContext) -> None:
        self.name = context.name
        self._sender_cvr = str(context.require("sender_cvr"))
        self._sender_label = str(context.option("sender_label", self._sender_cvr))
        self._outbox = Path(context.require("outbox_dir"))
        self._poll_s = float(context.option("poll_s", 0.5))
        self._client = Dp2Client.from_settings(
            context.settings, str(context.require("identity")), actor=f"connector:{self.name}"
        )
        self._task: asyncio.Task[None] | None = None
        self._followers: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    async def start(self) -> None:
        self._outbox.mkdir(parents=True, exist_ok=True)
        await self._client.start()
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            for running in [task, *self._followers]:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            await self._client.stop()

    def health(self) -> Mapping[str, Any]:
        running = self._task is not None and not self._task.done()
        return {
            "check": "folder",
            "status": "ok" if running else "failing",
            "sent": self.sent,
            "failed": self.failed,
        }

    async def _watch(self) -> None:
        while True:
            for path in sorted(self._outbox.glob("*.json")):
                await self._send(path)
            await asyncio.sleep(self._poll_s)

    async def _send(self, path: Path) -> None:
        try:
            letter = json.loads(await asyncio.to_thread(path.read_bytes))
            message = build_message(
                sender_cvr=self._sender_cvr,
                sender_label=self._sender_label,
                recipient_id=str(letter["to"]),
                recipient_id_type=IdType(letter.get("toType", "CPR")),
                label=str(letter["label"]),
                documents=[
                    Document("brev.txt", "text/plain", str(letter.get("text", "")).encode())
                ],
            )
            receipt = await self._client.send(message)
        except (ValueError, KeyError, Dp2Error) as exc:
            # A bad letter is moved aside with its reason, never retried forever or lost.
            self.failed += 1
            reason = exc.hint if isinstance(exc, Dp2Error) else "fix the JSON letter"
            _move(path, "failed", {"error": str(exc), "how_to_fix": reason})
            return
        self.sent += 1
        receipts = _move(path, "sent", {"messageUUID": receipt.message_uuid, "events": []})
        follower = asyncio.create_task(self._follow(receipt.message_uuid, receipts))
        self._followers.add(follower)
        follower.add_done_callback(self._followers.discard)

    async def _follow(self, message_uuid: str, receipts: Path) -> None:
        """Record each business receipt (lifecycle event) until a final one, or an hour."""
        for _ in range(3600):
            events = self._client.events(message_uuid)
            doc = {
                "messageUUID": message_uuid,
                "events": [{"state": e.state.value, "at": str(e.occurredAt)} for e in events],
            }
            await asyncio.to_thread(receipts.write_text, json.dumps(doc, indent=2))
            if any(e.state.value in FINAL for e in events):
                return
            await asyncio.sleep(1)


class ReceivingFolderConnector(FolderConnector):
    """Also receives post for CVRs registered at ``provider``, into ``inbox_dir``."""

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(context)
        self.provider_id = str(context.require("provider"))
        self._inbox = Path(context.option("inbox_dir", str(context.data_dir / "inbox")))

    async def receive(self, message: Envelope) -> None:
        """Verified and decrypted by DP2 already; write it durably (a repeat overwrites)."""
        header = message.header
        self._inbox.mkdir(parents=True, exist_ok=True)
        documents = [
            {"filename": f.filename, "text": f.content.data.decode("utf-8", "replace")}
            for f in (message.body.mainDocument.file if message.body else [])
            if hasattr(f.content, "data")
        ]
        letter = {
            "messageUUID": header.messageUUID,
            "from": header.sender.label,
            "to": header.recipient.recipientID,
            "label": header.label,
            "documents": documents,
        }
        # File names from a checked UUID only, and never outside the inbox.
        name = uuid_file_name(header.messageUUID, ".json")
        partial = inside(self._inbox, f".{name}.part")
        partial.write_text(json.dumps(letter, indent=2, ensure_ascii=False), encoding="utf-8")
        partial.replace(inside(self._inbox, name))


def create(context: ConnectorContext) -> FolderConnector:
    """The entry point: a receiving connector when a provider is configured."""
    if "provider" in context.config:
        return ReceivingFolderConnector(context)
    return FolderConnector(context)


def _move(path: Path, folder: str, sidecar: dict[str, Any]) -> Path:
    target = path.parent / folder
    target.mkdir(exist_ok=True)
    path.replace(target / path.name)
    side = target / f"{path.stem}.{'receipts' if folder == 'sent' else 'error'}.json"
    side.write_text(json.dumps(sidecar, indent=2))
    return side
