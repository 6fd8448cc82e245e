"""Files and folders that only their owner may read: stores, keys, blobs.

Why it exists: DP2's stores hold personal data in clear (a mailbox's letters, the
notifier's addresses) and its key files hold the secrets behind pseudonyms and
tokens, so what DP2 creates must not be readable by other local users, whatever
umask the process was started with. A umask can only take permissions away, so
``os.open(..., 0o600)`` alone could leave a file its owner cannot write, and a plain
``mkdir`` leaves a folder open to everyone under the usual 022: each file and folder
made here is set to 0600 / 0700 explicitly right after it is created and before any
data is written. Existing files and folders are left as they are — an operator may
have chosen otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

FILE_MODE: Final = 0o600
DIR_MODE: Final = 0o700


def private_dir(path: Path) -> Path:
    """``path`` as a folder; each folder of it made here is 0700 (existing ones untouched)."""
    missing: list[Path] = []
    folder = path
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for each in reversed(missing):
        try:
            os.mkdir(each, DIR_MODE)
        except FileExistsError:  # another process made it first: theirs to set
            continue
        os.chmod(each, DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    return path


def create_private(path: Path, *, replace: bool = False) -> int:
    """A descriptor for writing the new file ``path``, already 0600.

    FileExistsError if it exists, unless ``replace``: then an existing file is
    truncated and set to 0600 too (for the partial file of an atomic write).
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if replace else os.O_EXCL)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def touch_private(path: Path) -> bool:
    """Create ``path`` empty and 0600 unless it exists; True when it was made here."""
    try:
        fd = create_private(path)
    except FileExistsError:
        return False
    os.close(fd)
    return True
