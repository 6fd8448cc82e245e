"""Structural Avro compatibility, following the spec's schema-resolution rules.

A schema change is safe only if both directions work while services upgrade one at a
time: old readers read new data (forward) and new readers read old data (backward).
`check_history` enforces that for every recorded version of a family; the unit tests
run it, so an incompatible .avsc change fails CI before it reaches Kafka.

Rules implemented (reader schema R reads data written with writer schema W):
records match by unqualified name or R's aliases; each R field is found in W by name
or alias, else it needs a default; W fields unknown to R are skipped. Enums match by
name; a W symbol missing from R needs R's default. Fixed needs the same name and size.
Arrays and maps compare items and values. A W union is compatible if every branch is;
an R union needs a matching branch for W. Primitives must be equal or promote
(int→long/float/double, long→float/double, float→double, string↔bytes). Logical
types are compared by their underlying type.
"""

from itertools import permutations
from typing import Any

from fastavro.schema import parse_schema

from schemas.codec import REGISTRY, SchemaRegistry

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "enum", "fixed"})
# (writer type, reader type) pairs that Avro promotes on read.
_PROMOTIONS = frozenset(
    {
        ("int", "long"),
        ("int", "float"),
        ("int", "double"),
        ("long", "float"),
        ("long", "double"),
        ("float", "double"),
        ("string", "bytes"),
        ("bytes", "string"),
    }
)


def can_read(reader_schema: Any, writer_schema: Any) -> list[str]:
    """Problems that stop `reader_schema` from reading data written with `writer_schema`.

    An empty list means compatible. Each problem starts with a path such as
    `Envelope.header.label`.
    """
    checker = _Checker(reader_schema, writer_schema)
    root = checker.reader.root
    start = _short(root["name"]) if isinstance(root, dict) and "name" in root else _kind(root)
    checker.check(root, checker.writer.root, start)
    return checker.problems


def check_history(name: str, registry: SchemaRegistry = REGISTRY) -> list[str]:
    """Problems between any two versions of family `name` (history and current), both ways."""
    problems = []
    for reader, writer in permutations(registry.versions(name), 2):
        problems += [
            f"{name} {reader.version} cannot read {writer.version}: {problem}"
            for problem in can_read(reader.raw, writer.raw)
        ]
    return problems


class _Side:
    """One schema, parsed, with its named types by full name."""

    def __init__(self, schema: Any) -> None:
        self.named: dict[str, Any] = {}
        self.root = parse_schema(schema, named_schemas=self.named, _write_hint=False)

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            return self.named[schema]
        return schema


class _Checker:
    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader = _Side(reader)
        self.writer = _Side(writer)
        self.problems: list[str] = []
        self._seen: set[tuple[str, str]] = set()  # record pairs already compared (recursion)

    def check(self, r: Any, w: Any, path: str) -> None:
        r, w = self.reader.resolve(r), self.writer.resolve(w)
        r_kind, w_kind = _kind(r), _kind(w)
        if w_kind == "union":
            for branch in w:
                self.check(r, branch, path)
        elif r_kind == "union":
            match = self._match(r, w)
            if match is None:
                self.problems.append(
                    f"{path}: writer's {_describe(w)} matches no branch of reader's {_describe(r)}"
                )
            else:
                self.check(match, w, path)
        elif r_kind != w_kind and (w_kind, r_kind) not in _PROMOTIONS:
            self.problems.append(
                f"{path}: reader expects {_describe(r)}, writer has {_describe(w)}"
            )
        elif r_kind in _NAMED and not _names_match(r, w):
            self.problems.append(f"{path}: reader's {_describe(r)} is not writer's {_describe(w)}")
        elif r_kind == "record":
            self._record(r, w, path)
        elif r_kind == "enum":
            self._enum(r, w, path)
        elif r_kind == "fixed" and r["size"] != w["size"]:
            self.problems.append(f"{path}: fixed size {w['size']} read as size {r['size']}")
        elif r_kind == "array":
            self.check(r["items"], w["items"], f"{path}[]")
        elif r_kind == "map":
            self.check(r["values"], w["values"], f"{path}{{}}")

    def _record(self, r: dict[str, Any], w: dict[str, Any], path: str) -> None:
        key = (r["name"], w["name"])
        if key in self._seen:
            return
        self._seen.add(key)
        writer_fields = {f["name"]: f for f in w["fields"]}
        for field in r["fields"]:
            names = [field["name"], *field.get("aliases", [])]
            found = next((writer_fields[n] for n in names if n in writer_fields), None)
            if found is not None:
                self.check(field["type"], found["type"], f"{path}.{field['name']}")
            elif "default" not in field:
                self.problems.append(
                    f"{path}.{field['name']}: not in the writer's schema and has no default"
                )

    def _enum(self, r: dict[str, Any], w: dict[str, Any], path: str) -> None:
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing and "default" not in r:
            self.problems.append(
                f"{path}: writer's symbols {missing} are not in reader's enum "
                f"{_short(r['name'])}, which has no default"
            )

    def _match(self, union: list[Any], w: Any) -> Any:
        """The first reader branch matching `w` exactly, else the first it promotes to."""
        branches = [self.reader.resolve(b) for b in union]
        w_kind = _kind(w)
        for branch in branches:
            if _kind(branch) == w_kind and (w_kind not in _NAMED or _names_match(branch, w)):
                return branch
        return next((b for b in branches if (w_kind, _kind(b)) in _PROMOTIONS), None)


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return _kind(schema["type"])  # a logical type reads as its underlying type
    return str(schema)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _names_match(r: dict[str, Any], w: dict[str, Any]) -> bool:
    aliases = {_short(a) for a in r.get("aliases", [])}
    return _short(w["name"]) in {_short(r["name"]), *aliases}


def _describe(schema: Any) -> str:
    kind = _kind(schema)
    if kind == "union":
        return "union [" + ", ".join(_describe(b) for b in schema) + "]"
    if kind in _NAMED:
        return f"{kind} {_short(schema['name'])}"
    return kind
