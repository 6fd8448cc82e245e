"""Pseudonyms: keyed, stable, one-way references for personal identifiers.

Why it exists: the backbone routes on recipients but must never carry a CPR number
in clear. Every service of a deployment shares one key (:func:`pseudonym_key`), so
one person has one pseudonym everywhere in that deployment, and without the key a
pseudonym can be neither reversed nor recomputed by trying all ten-digit numbers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path
from typing import Final

from brokers.security.signing import SecurityError
from brokers.security.tokens import secret_key_file


# --- pseudonyms ---------------------------------------------------------------------
class Pseudonymizer:
    """Keyed, stable, one-way references for personal identifiers (CPR numbers).

    ``ref(id_type, identifier)`` is ``psn-`` and the first 26 characters (130 bits)
    of the lowercase base32 HMAC-SHA256 of ``"<id_type>:<identifier>"``. Every
    service of a deployment shares the key (brokers.security.pseudonyms.pseudonym_key), so one
    person has one pseudonym there; without the key it cannot be reversed or
    recomputed by trying all ten-digit numbers.
    """

    PREFIX: Final = "psn-"

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise SecurityError(
                f"a pseudonym key of {len(key)} bytes is too short to keep CPR numbers secret",
                reason_code="WEAK_PSEUDONYM_KEY",
                hint="Use 32 random bytes (DP2_PSEUDONYM_KEY as hex, or DP2_HOME/pseudonym.key).",
            )
        self._key = bytes(key)

    def __repr__(self) -> str:
        return "Pseudonymizer(<key hidden>)"

    def ref(self, id_type: str, identifier: str) -> str:
        mac = hmac.new(self._key, f"{id_type}:{identifier}".encode(), hashlib.sha256).digest()
        return self.PREFIX + base64.b32encode(mac).decode("ascii")[:26].lower()


def pseudonym_key(home: Path) -> bytes:
    """The deployment's pseudonym key: DP2_PSEUDONYM_KEY (hex) or ``$DP2_HOME/pseudonym.key``.

    Made on first use (32 random bytes, mode 0600). Every service and connector of
    one deployment must share it, so that a CPR number maps to one pseudonym.
    """
    from_env = os.environ.get("DP2_PSEUDONYM_KEY")
    if from_env:
        return bytes.fromhex(from_env)
    return secret_key_file(home / "pseudonym.key")
