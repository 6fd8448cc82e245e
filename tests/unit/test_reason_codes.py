"""Every reason code the code can emit is in a reason-code table of docs/, and no other.

How codes are found, without running anything: the source of the four packages is
parsed (ast) and a string is a reason code where the code gives it that role —

- ``reason_code = "X"`` in a class body (an error class's default);
- a ``reason_code=``, ``code=`` or ``reasonCode=`` argument of any call;
- the argument in the place of a parameter named ``code`` or ``reason_code`` of a
  function, method or dataclass defined in the packages (``reject(code, ...)``,
  ``violation(code, ...)``, ``Router._failed(uuid, code, ...)``, ``_Rejection(code,
  ...)``): those are found first, so a new helper that takes a code is seen too;
- the value of a ``"reasonCode"`` key in a dict literal (JSON answers).

Of such an argument every upper-case string constant counts (``"A" if x else "B"``
gives both), and so do those of a module-level table it names (``_CODES.get(k,
"B")``). A code built at run time (an f-string) is expanded to the codes of its own
module that match its pattern; one that matches none fails the test, so that no code
can hide.

How the docs are read: in every Markdown table of docs/*.md, the columns headed
``code`` or ``reasonCode`` hold codes, each in backticks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "brokers", "connectors", "tracing")
CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
CODE_KEYWORDS = frozenset({"reason_code", "code", "reasonCode"})
CODE_COLUMNS = frozenset({"code", "reasoncode", "reason code"})


def _sources() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(ROOT)): ast.parse(path.read_text(encoding="utf-8"))
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _is_record_class(node: ast.ClassDef) -> bool:
    """A dataclass or NamedTuple: its fields, in order, are its constructor's parameters."""
    names = {getattr(d, "id", None) or getattr(d, "attr", None) for d in node.decorator_list}
    names |= {getattr(getattr(d, "func", None), "id", None) for d in node.decorator_list}
    bases = {getattr(b, "id", None) for b in node.bases}
    return "dataclass" in names or "NamedTuple" in bases


def code_parameters(trees: dict[str, ast.Module]) -> dict[str, dict[str, set[int]]]:
    """Module -> callable name -> positions (after self) of its parameters named code or
    reason_code; module "" holds the union, for callables defined in another module."""
    found: dict[str, dict[str, set[int]]] = {"": {}}
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                params = [*node.args.posonlyargs, *node.args.args]
                if params and params[0].arg in {"self", "cls"}:
                    params = params[1:]
                names = [p.arg for p in params]
            elif isinstance(node, ast.ClassDef) and _is_record_class(node):
                names = [
                    s.target.id
                    for s in node.body
                    if isinstance(s, ast.AnnAssign)
                    and isinstance(s.target, ast.Name)
                    and "ClassVar" not in ast.unparse(s.annotation)
                ]
            else:
                continue
            for i, name in enumerate(names):
                if name in CODE_KEYWORDS:
                    for key in (module, ""):
                        found.setdefault(key, {}).setdefault(node.name, set()).add(i)
    return found


class _Finder(ast.NodeVisitor):
    """The codes one module can emit (see the module docstring for where they are)."""

    def __init__(self, tree: ast.Module, parameters: dict[str, set[int]]) -> None:
        """``parameters``: this module's code parameters over everyone else's."""
        self.codes: set[str] = set()
        self.unresolved: list[str] = []
        self._parameters = parameters
        self._all = {
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and CODE.fullmatch(n.value)
        }
        self._tables = {
            target.id: statement.value
            for statement in tree.body
            if isinstance(statement, ast.Assign | ast.AnnAssign) and statement.value is not None
            for target in (
                statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            )
            if isinstance(target, ast.Name)
        }
        self.visit(tree)

    def _take(self, expr: ast.AST, seen: frozenset[str] = frozenset()) -> None:
        inside_fstrings = {
            id(part) for n in ast.walk(expr) if isinstance(n, ast.JoinedStr) for part in n.values
        }
        for node in ast.walk(expr):
            if isinstance(node, ast.JoinedStr):
                fixed = [p.value for p in node.values if isinstance(p, ast.Constant)]
                if not all(re.fullmatch(r"[A-Z0-9_]*", str(f)) for f in fixed):
                    continue  # a sentence in a code's place, not a code
                pattern = "".join(
                    re.escape(part.value)
                    if isinstance(part, ast.Constant) and isinstance(part.value, str)
                    else "[A-Z0-9_]+"
                    for part in node.values
                )
                found = {c for c in self._all if re.fullmatch(pattern, c)}
                if not found:
                    self.unresolved.append(f"line {node.lineno}: {ast.unparse(node)}")
                self.codes |= found
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in inside_fstrings
                and CODE.fullmatch(node.value)
            ):
                self.codes.add(node.value)
            elif isinstance(node, ast.Name) and node.id in self._tables and node.id not in seen:
                self._take(self._tables[node.id], seen | {node.id})

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for statement in node.body:
            targets: list[ast.expr] = []
            if isinstance(statement, ast.Assign):
                targets, value = statement.targets, statement.value
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                targets, value = [statement.target], statement.value
            if any(isinstance(t, ast.Name) and t.id == "reason_code" for t in targets):
                self._take(value)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        for keyword in node.keywords:
            if keyword.arg in CODE_KEYWORDS:
                self._take(keyword.value)
        name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
        for i in self._parameters.get(str(name), ()):
            if i < len(node.args) and not isinstance(node.args[i], ast.Starred):
                self._take(node.args[i])
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "reasonCode":
                self._take(value)
        self.generic_visit(node)


def emitted_codes() -> tuple[dict[str, set[str]], list[str]]:
    """Code -> the files that can emit it; and the run-time codes no pattern resolved."""
    trees = _sources()
    parameters = code_parameters(trees)
    where: dict[str, set[str]] = {}
    unresolved: list[str] = []
    for name, tree in trees.items():
        finder = _Finder(tree, {**parameters[""], **parameters.get(name, {})})
        for code in finder.codes:
            where.setdefault(code, set()).add(name)
        unresolved += [f"{name} {line}" for line in finder.unresolved]
    return where, unresolved


def _cells(line: str) -> list[str]:
    """A table row's cells, split on the pipes that are not escaped (``\\|``)."""
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def documented_codes() -> dict[str, set[str]]:
    """Code -> the docs/*.md files whose reason-code tables list it."""
    where: dict[str, set[str]] = {}
    for path in sorted((ROOT / "docs").glob("*.md")):
        columns: list[int] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.lstrip().startswith("|"):
                columns = []
                continue
            cells = _cells(line)
            if not columns and not all(set(c) <= set("-: ") for c in cells):
                heads = [c.strip("`").lower() for c in cells]
                columns = [i for i, head in enumerate(heads) if head in CODE_COLUMNS] or [-1]
                continue
            for i in columns:
                if 0 <= i < len(cells):
                    for token in re.findall(r"`([^`]+)`", cells[i]):
                        if CODE.fullmatch(token):
                            where.setdefault(token, set()).add(path.name)
    return where


def test_the_finder_sees_every_way_a_code_is_given() -> None:
    """Class defaults, keywords, code parameters of functions and dataclasses, tables they
    name, JSON dicts and f-strings resolved against their module are all found; an
    unresolvable f-string is reported, and a message in a code's place is not a code."""
    source = """
class E(Dp2Error):
    reason_code = "CLASS_CODE"

@dataclass
class Problem:
    code: str
    message: str

def reject(code, message, hint): ...
def report(self, code, path): ...
def _failed(self, message_uuid, code, text): ...
_TABLE = {"kind": "TABLE_CODE"}
raise Dp2Error("m", reason_code="KEYWORD_CODE" if x else "OTHER_CODE", hint="h")
raise reject("REJECT_CODE", "MESSAGE", "hint")
self.report(_TABLE.get(kind, "DEFAULT_CODE"), "PATH")
self._failed(uuid, "FAILED_CODE", "TEXT")
Problem("DATACLASS_CODE", "MESSAGE")
web.json_response({"reasonCode": "JSON_CODE"})
Violation(code=f"MEMO_INVALID_{kind}", path="p")
HINTS = {"MEMO_INVALID_CPR": "..."}
log.info("EVENT_NAME", reason_code=exc.reason_code)
raise Dp2Error("m", reason_code=f"NOWHERE_{x}")
self.report(f"a sentence about {x}", "PATH")
"""
    tree = ast.parse(source)
    finder = _Finder(tree, code_parameters({"example.py": tree})["example.py"])
    assert finder.codes == {
        "CLASS_CODE",
        "KEYWORD_CODE",
        "OTHER_CODE",
        "REJECT_CODE",
        "TABLE_CODE",
        "DEFAULT_CODE",
        "FAILED_CODE",
        "DATACLASS_CODE",
        "JSON_CODE",
        "MEMO_INVALID_CPR",
    }
    assert len(finder.unresolved) == 1 and "NOWHERE_" in finder.unresolved[0]


def test_every_reason_code_is_documented_and_every_documented_code_exists() -> None:
    """The reason-code tables of docs/ list exactly the codes the code can emit."""
    emitted, unresolved = emitted_codes()
    documented = documented_codes()
    assert not unresolved, "reason codes built at run time that match no code:\n" + "\n".join(
        unresolved
    )
    missing = sorted(set(emitted) - set(documented))
    extra = sorted(set(documented) - set(emitted))
    problems = [
        *(
            f"missing from the docs: {c} (emitted in {', '.join(sorted(emitted[c]))})"
            for c in missing
        ),
        *(f"documented, never emitted: {c} (in {', '.join(sorted(documented[c]))})" for c in extra),
    ]
    assert not problems, "add each code to a reason-code table in docs/:\n" + "\n".join(problems)
