"""How DP2 reads the values that arrive from outside: digits, UUIDs, base64, file names.

Why one place: Python's own readers are generous in ways a shared backbone cannot be.
``str.isdigit`` is true for ``²`` and Arabic-Indic digits, ``int`` reads ``٣`` and
``1_0``, ``base64.b64decode`` ignores excess padding, and a message UUID in upper case
is another string than the same UUID in lower case. Each reader here accepts one
spelling only, so that every service compares and stores the same value:

- numbers: ASCII digits ``0-9`` only, no sign, no spaces, no underscores;
- message UUIDs: compared and stored in lower case (DESIGN.md, "Message flow"); a
  valid one is the canonical 36-character form of a version-4 UUID;
- base64: the standard alphabet, canonical padding and no stray bits (RFC 4648,
  section 3.5), so one byte string has exactly one text form;
- file names: MeMo's forbidden characters, line breaks, control and odd space
  characters, and names a file system reads as a path (``.``, ``..``, empty).

Pure functions, no I/O; callers turn a ``None`` or ``False`` into their own reason code.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
import uuid
from typing import Final, NamedTuple

_ASCII_UPPER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_BASE64: Final = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

#: What MeMo forbids in a file name (MEMO.md), plus the tab.
FILENAME_FORBIDDEN: Final = frozenset('<>:"/\\|?*\r\n\t')
#: Unicode categories refused in file names: odd spaces, line and paragraph separators,
#: control, format and surrogate characters (the plain space is allowed).
FILENAME_FORBIDDEN_CATEGORIES: Final = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs"})


def is_ascii_digits(text: str, length: int | None = None) -> bool:
    """True when ``text`` is one or more ASCII digits (exactly ``length`` of them if given)."""
    return (
        bool(text) and text.isascii() and text.isdigit() and (length is None or len(text) == length)
    )


def parse_ascii_int(text: str) -> int | None:
    """The whole number written in ASCII digits, or None for anything else (``²``, ``٣``,
    ``+1``, `` 1``, ``1_0``, ``-1``)."""
    return int(text) if is_ascii_digits(text) else None


def canonical_uuid(value: str) -> str:
    """A message UUID as DP2 compares and stores it: ASCII letters in lower case.

    Only ASCII is folded, so the result has the same length and folding twice changes
    nothing; whether the value is a UUID at all is :func:`is_message_uuid`'s question.
    """
    return value.translate(_ASCII_UPPER)


def is_message_uuid(value: str) -> bool:
    """True when ``value`` is the canonical (lower-case, hyphenated) form of a v4 UUID."""
    if len(value) != 36 or not value.isascii():
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value


def decode_base64_strict(text: str) -> bytes:
    """The bytes of standard base64 ``text``; ValueError unless it is their only spelling.

    Refused: characters outside the alphabet, missing or excess padding (``SGVq=``),
    and non-zero bits after the last byte (``SGVr`` decodes, but is not how ``Hek``
    is written). Callers strip whitespace first if their format allows it.
    """
    if not text.isascii() or _BASE64.fullmatch(text) is None:
        raise ValueError("not standard base64 with canonical padding")
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from exc
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("base64 with bits set after the last byte")
    return data


class FilenameProblem(NamedTuple):
    """Why a name cannot be a letter's file name: a reason code and what is wrong."""

    code: str
    message: str


def filename_problem(name: str) -> FilenameProblem | None:
    """Why ``name`` cannot be a file name of a letter, or None when it can.

    ``UNSAFE_FILENAME``: empty, or only dots (``.``, ``..``), which a file system reads
    as a folder. ``INVALID_FILENAME``: a character MeMo forbids, a line break, or a
    control or odd space character (NUL included). The message never repeats the name,
    which may hold a CPR number or a case subject.
    """
    if not name.strip():
        return FilenameProblem(code="UNSAFE_FILENAME", message="a file name is empty")
    if set(name) <= {"."}:
        return FilenameProblem(
            code="UNSAFE_FILENAME",
            message="a file name is only dots, which a file system reads as a folder",
        )
    for position, char in enumerate(name, 1):
        if char in FILENAME_FORBIDDEN or (
            unicodedata.category(char) in FILENAME_FORBIDDEN_CATEGORIES and char != " "
        ):
            label = unicodedata.name(char, "control character")
            return FilenameProblem(
                code="INVALID_FILENAME",
                message=f"a file name has U+{ord(char):04X} {label} at position {position}",
            )
    return None
