"""Handing a rendered letter to the print provider, from the spool: a folder drop or an upload.

Both stream the PDF from its spool file (connectors.print.spool) a piece at a time, so
a 99.5 MB letter costs no more memory than a small one:

- :func:`drop` writes ``<uuid>.json`` (the job's metadata) and then ``<uuid>.pdf``
  (copied from the spool) into the provider's folder, each under a temporary name,
  flushed to disk and renamed, then the folder synced — the PDF last, so a provider
  that picks up ``*.pdf`` always finds its metadata, and a hand-over the queue counts
  as done survives a power cut. Names come from a version-4 UUID only and must resolve
  inside the folder (connectors.folders: ``UNSAFE_PATH``, nothing is written).
- :func:`upload` POSTs the file as the request body (aiohttp reads it a chunk at a
  time and sends its size as Content-Length); any 2xx means taken.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import aiohttp

from connectors.folders import fsync_dir, uuid_file_name, write_whole
from connectors.print.store import Job

_PIECE = 1024 * 1024


def drop(folder: Path, job: Job, pdf: Path) -> None:
    """Put ``<uuid>.json`` then ``<uuid>.pdf`` in ``folder``, each whole (see above)."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = json.dumps(job.meta, indent=2).encode()

    def copy(handle: BinaryIO) -> None:
        with pdf.open("rb") as source:
            shutil.copyfileobj(source, handle, _PIECE)

    writes: tuple[tuple[str, Callable[[BinaryIO], object]], ...] = (
        (".json", lambda handle: handle.write(meta)),
        (".pdf", copy),
    )
    for suffix, write in writes:
        write_whole(folder, uuid_file_name(job.message_uuid, suffix), write)
    fsync_dir(folder)


async def upload(session: aiohttp.ClientSession, url: str, job: Job, pdf: Path) -> str | None:
    """POST the PDF to ``url``; None once the provider has it, else what went wrong."""
    headers = {
        "Content-Type": "application/pdf",
        "X-DP2-Message-UUID": job.message_uuid,  # lets the provider ignore a repeat
        "X-DP2-Pages": str(job.pages),
    }
    try:
        with pdf.open("rb") as body:  # streamed from the file, never read whole
            async with session.post(url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status} from the print provider"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"{type(exc).__name__} at {url}"


__all__ = ["drop", "upload"]
