"""MeMo file content (xs:base64Binary) read and written a piece at a time.

Why it exists: a MeMo message carries its documents as base64 text — 99.5 MB of
documents are about 133 MB of text — so holding that text as one string next to the
bytes it decodes to (and the XML it came in) would cost several copies of every
document. schemas.memo parses through :class:`Builder`, which hands the text of each
``content`` element to a :class:`Base64Stream` as the XML parser delivers it, and
writes content with :func:`encode_chunks`; both keep only a few bytes of text beyond
the current piece.

The lexical rules are xs:base64Binary's, exactly as schemas.memo_structure.read_base64
holds them: XML whitespace anywhere is ignored, the alphabet is RFC 4648's standard
one, and only the last quantum may carry padding, with canonical (zero) pad bits.
"""

from __future__ import annotations

import base64
import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Final

from schemas.memo_structure import leaf_type, read_base64

_SPACES: Final = str.maketrans("", "", " \t\n\r")
_ENCODE_BLOCK: Final = 3 * 256 * 1024  # a multiple of 3: the pieces' base64 concatenates


class Base64Stream:
    """Decodes one element's base64 text as it arrives; ``finish`` gives the bytes."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._pending = ""  # the last quantum seen, which may be the padded one
        self._valid = True

    def feed(self, text: str) -> None:
        if not self._valid:
            return
        text = self._pending + text.translate(_SPACES)
        cut = (len(text) - 1) // 4 * 4 if text else 0
        block, self._pending = text[:cut], text[cut:]
        if not block:
            return
        if "=" in block:  # padding before the last quantum
            self._valid = False
            return
        try:
            self._out.write(base64.b64decode(block, validate=True))
        except ValueError:  # binascii.Error, or a character outside ASCII
            self._valid = False

    def finish(self) -> bytes | None:
        """The decoded bytes, or None if the text was not xs:base64Binary."""
        if not self._valid:
            return None
        try:
            self._out.write(read_base64(self._pending))
        except ValueError:
            return None
        return self._out.getvalue()


def qualified_name(name: str) -> str:
    """``{uri}local`` of an expat name ``uri local`` (namespace_separator " ")."""
    uri, _, local = name.rpartition(" ")
    return f"{{{uri}}}{local}" if uri else local


class Builder:
    """expat's events into an element tree; with `decoded`, each file's base64 text is
    decoded as it arrives into ``decoded[element]`` and left out of the tree (an element
    whose text is not base64 gets the text ``!``, which the check then reports)."""

    def __init__(self, decoded: dict[ET.Element, bytes] | None) -> None:
        self.tree = ET.TreeBuilder()
        self._decoded = decoded
        self._depth = 0
        self._content: Base64Stream | None = None
        self._content_depth = 0

    def start(self, name: str, attributes: dict[str, str]) -> None:
        self._depth += 1
        tag = qualified_name(name)
        self.tree.start(tag, {qualified_name(k): v for k, v in attributes.items()})
        if self._decoded is not None and self._content is None and leaf_type(tag) == "base64Binary":
            self._content, self._content_depth = Base64Stream(), self._depth

    def end(self, name: str) -> None:
        elem = self.tree.end(qualified_name(name))
        if self._content is not None and self._depth == self._content_depth:
            data = self._content.finish()
            self._content = None
            if data is None:
                elem.text = "!"
            elif self._decoded is not None:
                self._decoded[elem] = data
        self._depth -= 1

    def data(self, text: str) -> None:
        if self._content is not None and self._depth == self._content_depth:
            self._content.feed(text)
        else:
            self.tree.data(text)


def encode_chunks(data: bytes) -> Iterator[bytes]:
    """The standard base64 of `data`, in pieces that concatenate to ``b64encode(data)``."""
    view = memoryview(data)
    for start in range(0, len(view), _ENCODE_BLOCK):
        yield base64.b64encode(view[start : start + _ENCODE_BLOCK])
