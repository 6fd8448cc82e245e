"""YAML text from plain values (dicts, lists, str, int, bool), in block style.

Why not PyYAML: it is no dependency of DP2, and the deployment files must come out
byte-for-byte the same on every machine so a test can say they are up to date.
This writes the small subset the files use: mappings keep their insertion order,
strings are plain when YAML reads them back as the same string and JSON-quoted
(a valid YAML double-quoted scalar) otherwise; a string with newlines is a literal
block (``|``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@-]*")
#: Words YAML 1.1 (and so PyYAML, Kubernetes, compose) reads as booleans or null.
_SPECIAL = frozenset(
    {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}
    | {"Yes", "No", "On", "Off", "True", "False", "Null", "YES", "NO", "ON", "OFF"}
    | {"Y", "N", "TRUE", "FALSE", "NULL"}
)


def scalar(value: Any) -> str:
    """One scalar as YAML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value not in _SPECIAL:
            return value
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"no YAML for {type(value).__name__}")


def _lines(value: Any, indent: int) -> Iterable[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            yield pad + "{}"
        for key, item in value.items():
            yield from _entry(f"{pad}{scalar(key)}:", item, indent)
    elif isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            yield pad + "[]"
        for item in value:
            head, *rest = list(_lines(item, indent + 2))
            yield f"{pad}- {head[indent + 2 :]}"
            yield from rest
    else:
        yield pad + _inline(value, indent)


def _entry(head: str, item: Any, indent: int) -> Iterable[str]:
    nested = isinstance(item, Mapping | list | tuple) and len(item) > 0
    if nested:
        yield head
        # Lists under a key sit at the key's indentation, as kubectl writes them.
        yield from _lines(item, indent if isinstance(item, list | tuple) else indent + 2)
    else:
        yield f"{head} {_inline(item, indent + 2)}"


def _inline(value: Any, indent: int) -> str:
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, list | tuple):
        return "[]"
    if isinstance(value, str) and "\n" in value:
        body = value.removesuffix("\n").split("\n")
        chomp = "" if value.endswith("\n") else "-"
        return f"|{chomp}\n" + "\n".join((" " * indent + line).rstrip() for line in body)
    return scalar(value)


def dump(value: Mapping[str, Any]) -> str:
    """One YAML document."""
    return "\n".join(_lines(value, 0)) + "\n"


def dump_all(documents: Sequence[Mapping[str, Any]], header: str = "") -> str:
    """Several documents, ``---`` between them, after an optional comment header."""
    return header + "---\n".join(dump(document) for document in documents)
