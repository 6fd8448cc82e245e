"""Request bodies read as they stream in, refused as soon as they pass their limit.

Why it exists: aiohttp's ``request.read()`` buffers a whole body (up to the
application's ``client_max_size``) before a handler sees a byte of it, so one 150 MB
POST costs 150 MB of memory whatever the handler then does, and four in a row four
times that. Connectors read bodies here instead:

- :func:`spool` copies the body into a private temporary file (in the connector's
  own 0700 data folder, unlinked at once, so nothing stays behind) a piece at a
  time, for parsers that read files (the ESDH connector's MeMo);
- :func:`read_limited` reads a small body into memory (a JSON setting).

Both refuse early: at once when ``Content-Length`` says the body is over the limit,
else as soon as the bytes read pass it. The refusal is :class:`BodyTooLargeError`,
``REQUEST_TOO_LARGE``, which connectors answer with 413 and the limit.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import IO, Final

from aiohttp import web

from schemas.errors import Dp2Error

#: What one MeMo message may take as a request: 99.5 MB of documents are about 133 MB
#: of base64 text, with room for the XML around them.
MEMO_BODY_LIMIT: Final = 140 * 1024 * 1024
_PIECE: Final = 256 * 1024


class BodyTooLargeError(Dp2Error):
    """A request body over the endpoint's limit; nothing of it was used."""

    reason_code = "REQUEST_TOO_LARGE"
    status: Final = 413

    def __init__(self, limit: int, what: str = "the request body") -> None:
        super().__init__(
            f"{what} is larger than the {limit:,} bytes this endpoint takes",
            hint="Send less: one message per request, documents within MeMo's limits "
            "(99.5 MB from an authority, 10 MB from a citizen).",
        )
        self.limit = limit


def _check_declared(request: web.Request, limit: int) -> None:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLargeError(limit)


async def spool(request: web.Request, limit: int, directory: Path) -> IO[bytes]:
    """The body of `request` in an anonymous temporary file in `directory`, at its start.

    The caller closes the file (``with``); BodyTooLargeError past `limit`.
    """
    _check_declared(request, limit)
    handle = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - returned to the caller
    try:
        size = 0
        while piece := await request.content.read(_PIECE):
            size += len(piece)
            if size > limit:
                raise BodyTooLargeError(limit)
            handle.write(piece)
        handle.seek(0)
    except BaseException:
        handle.close()
        raise
    return handle


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The whole body of `request` if it is at most `limit` bytes (BodyTooLargeError)."""
    _check_declared(request, limit)
    body = io.BytesIO()
    while piece := await request.content.read(_PIECE):
        if body.tell() + len(piece) > limit:
            raise BodyTooLargeError(limit)
        body.write(piece)
    return body.getvalue()
