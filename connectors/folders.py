"""Folder drops: the names of files and folders that connectors build from message values.

Why it exists: a print provider's outbox, an ESDH journal folder and a vendor's inbox
are written with names taken from messages — the message UUID, the case id — and a
message is input, signed or not. A UUID such as ``../../x`` or a case id ``..`` must
never name a place outside the folder the operator configured. So every name comes
from a validated value only (a UUID must be a canonical version-4 UUID, a case id is
reduced to a safe folder name), and every path is resolved and checked to lie inside
its folder before anything is written (``Path.resolve().is_relative_to``), which also
refuses a symbolic link that points out of it.

Refusals are :class:`UnsafePathError` (``UNSAFE_PATH``): nothing was written.

What lands in such a folder is read by someone else's program (a print provider's,
an ESDH's) the moment it appears, so each file is written whole or not at all
(:func:`write_whole`): under a temporary dot-name in the same folder, flushed to
disk, then renamed over its name; :func:`fsync_dir` makes the renames durable.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from brokers.runtime.private import create_private
from schemas.errors import Dp2Error
from schemas.values import is_message_uuid

_T = TypeVar("_T")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_NAME = 120  # far below a file system's 255 bytes, with room for suffixes


class UnsafePathError(Dp2Error):
    """A file or folder name built from a message would leave its folder, or is no name."""

    reason_code = "UNSAFE_PATH"
    hint = (
        "Nothing was written. The message's UUID must be a version-4 UUID; if it was, "
        "check the folder for symbolic links that point out of it."
    )


def uuid_file_name(message_uuid: str, suffix: str) -> str:
    """``<uuid><suffix>`` for a canonical version-4 message UUID (UnsafePathError else)."""
    if not is_message_uuid(message_uuid):
        raise UnsafePathError(
            f"the message UUID {message_uuid[:60]!r} cannot name a file: it is not a version-4 UUID"
        )
    return f"{message_uuid}{suffix}"


def folder_name(value: str) -> str:
    """A folder name for a case id: letters, digits, ``.``, ``_`` and ``-`` only.

    Other characters become ``_`` (``SAG/2024`` -> ``SAG_2024``, as before), a leading
    dot too (``..`` -> ``__``, ``.x`` -> ``_x``), and a very long id keeps its start and
    gets a digest of the whole, so that it still names one folder.
    """
    name = _UNSAFE_CHARS.sub("_", value)
    stripped = name.lstrip(".")
    name = "_" * (len(name) - len(stripped)) + stripped
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f"{name[: _MAX_NAME - 17]}-{digest}"
    if not name:
        raise UnsafePathError("an empty case id cannot name a folder")
    return name


def inside(folder: Path, *names: str) -> Path:
    """``folder / names...`` once it is sure to resolve inside ``folder`` (else UnsafePathError).

    Each name must be one path component (no separator, not ``.`` or ``..``); the
    resolved path, symbolic links followed, must lie under the resolved folder.
    """
    for name in names:
        if not name or name in {".", ".."} or "/" in name or "\\" in name or "\0" in name:
            raise UnsafePathError(f"{name[:60]!r} is not a file or folder name")
    target = folder.joinpath(*names)
    if not target.resolve().is_relative_to(folder.resolve()):
        raise UnsafePathError(f"{'/'.join(names)[:120]!r} resolves outside {folder}")
    return target


def write_whole(
    folder: Path, name: str, fill: Callable[[BinaryIO], _T], *, private: bool = False
) -> tuple[Path, _T]:
    """Write ``folder/name`` with ``fill(file)``, whole or not at all; returns its path
    and what ``fill`` returned. A reader never sees part of it: the bytes go to a
    temporary dot-name beside it, are flushed and fsynced, then renamed over ``name``
    (the rename is durable once the caller's :func:`fsync_dir` of the folder ran, one
    for several files). ``private`` makes the file 0600 (DP2's own spool); otherwise
    it gets the process's umask, as a folder shared with a provider expects. On any
    error the temporary file is removed and nothing is left."""
    target = inside(folder, name)
    partial = inside(folder, f".{name}.{uuid.uuid4().hex}.part")
    try:
        opened = os.fdopen(create_private(partial), "wb") if private else partial.open("wb")
        with opened as handle:
            result = fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return target, result


def fsync_dir(path: Path) -> None:
    """Make the renames in folder ``path`` durable (POSIX)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
