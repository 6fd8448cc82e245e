"""The house keeps its shape: import direction, one vocabulary, a light SDK, small modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from schemas import vocabulary

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "brokers", "connectors", "tracing")

#: Layers from the bottom (DESIGN.md, "Layout"): a module may import its own layer's
#: packages and those below, never above. Connectors and tracing are peers that do not
#: import each other; the composition root (stack, cli, bench) may import anything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("schemas",),
    ("brokers.runtime", "brokers.security"),
    ("brokers.contacts", "brokers.validator", "brokers.router"),
    ("connectors", "tracing"),
    ("brokers.stack", "brokers.cli", "brokers.bench"),
)
PEERS_APART = {("connectors", "tracing"), ("tracing", "connectors")}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _room(module: str) -> tuple[int, str]:
    """(layer, room) of a module: its longest matching entry in LAYERS."""
    if module in {"brokers", "connectors", "tracing"}:
        return 0, module  # a package's own __init__: a docstring, importing nothing
    best: tuple[int, str] | None = None
    for level, rooms in enumerate(LAYERS):
        for room in rooms:
            if (module == room or module.startswith(room + ".")) and (
                best is None or len(room) > len(best[1])
            ):
                best = (level, room)
    if best is None:
        raise AssertionError(f"{module} is in no room of LAYERS; add it to the table")
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    """First-party modules ``path`` imports, with line numbers (TYPE_CHECKING included)."""
    result = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            result += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.Import):
            result += [
                (node.lineno, a.name) for a in node.names if a.name.split(".")[0] in PACKAGES
            ]
    return result


def test_imports_run_one_way() -> None:
    """No module imports a room above its own (schemas <- runtime, security <- services
    <- connectors, tracing <- stack, cli, bench), and connectors and tracing stay apart."""
    modules = _modules()
    wrong = []
    for module, path in sorted(modules.items()):
        level, room = _room(module)
        for line, imported in _imports(path):
            if imported not in modules:  # ``from pkg import name`` where name is not a module
                continue
            their_level, their_room = _room(imported)
            top = (room.split(".")[0], their_room.split(".")[0])
            if their_level > level or top in PEERS_APART:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({room}) imports {imported}")
    assert not wrong, "imports against the direction of DESIGN.md:\n" + "\n".join(wrong)


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String constants in code: not docstrings, not logger names."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            skip.add(id(first.value))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get_logger":
            skip.update(id(a) for a in node.args)
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
    ]


def test_no_topic_or_header_name_is_written_outside_the_vocabulary() -> None:
    """Every topic and header name in code comes from schemas.vocabulary."""
    # "traceparent" is W3C's name, used as a JSON field name of the APIs as well.
    names = {spec.name for spec in vocabulary.TOPICS} | {
        value
        for key, value in vars(vocabulary).items()
        if key.endswith("_HEADER") and isinstance(value, str)
    } - {vocabulary.TRACEPARENT_HEADER}
    vocabulary_file = ROOT / "schemas" / "vocabulary.py"
    found = []
    for path in [*_modules().values(), *(ROOT / "examples").rglob("*.py")]:
        if path == vocabulary_file:
            continue
        for line, text in _code_strings(path):
            if text in names or text.startswith(vocabulary.DELIVER_TOPIC_PREFIX):
                found.append(f"{path.relative_to(ROOT)}:{line}: {text!r}")
    assert not found, "use the constants of schemas.vocabulary:\n" + "\n".join(found)


def _topic_constants() -> set[str]:
    return {k for k, v in vars(vocabulary).items() if k.endswith("_TOPIC") and isinstance(v, str)}


_PRODUCE_CALLS = {"Output", "send", "send_and_wait"}
_CONSUME_CALLS = {
    "worker",
    "KafkaWorker",
    "AIOKafkaConsumer",
    "new_consumer",
    "read_from_start",
    "subscribe",
    "ContactRegister",
}


def _aliases(tree: ast.AST, constants: set[str]) -> dict[str, set[str]]:
    """Names that stand for topic constants: a local or attribute assigned from one
    (``topic = ... else PRINT_TOPIC``), a parameter defaulting to one."""
    aliases: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.arguments):
            params = [*node.posonlyargs, *node.args]
            pairs = zip(params[len(params) - len(node.defaults) :], node.defaults, strict=True)
            for param, default in pairs:
                if isinstance(default, ast.Name) and default.id in constants:
                    aliases.setdefault(param.arg, set()).add(default.id)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            named = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
            stands_for = set().union(*(aliases.get(n, set()) for n in named))
            for target in node.targets:
                key = getattr(target, "id", None) or getattr(target, "attr", None)
                if key:
                    aliases.setdefault(key, set()).update(named & constants, stands_for)
    return aliases


def _uses(kind: set[str]) -> set[str]:
    """Vocabulary constants passed (directly or in a list) to calls named in ``kind``."""
    constants = {
        k for k, v in vars(vocabulary).items() if k.endswith("_TOPIC") and isinstance(v, str)
    }
    used: set[str] = set()
    for path in _modules().values():
        if path.parts[-2] == "bench" or path.name == "vocabulary.py":
            continue  # the benchmark is a client, not a service
        tree = ast.parse(path.read_text())
        aliases = _aliases(tree, constants)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name not in kind:
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for inner in ast.walk(arg):
                    key = getattr(inner, "id", None) or getattr(inner, "attr", None)
                    if isinstance(inner, ast.Name | ast.Attribute) and key:
                        used.update({key} & constants, aliases.get(key, ()))
    return used


def test_every_declared_topic_is_produced_and_consumed() -> None:
    """Each topic of the vocabulary has a producer and a consumer among DP2's services,
    connectors and the SDK (the per-provider delivery topics by the router and
    connectors.delivery, proved end to end by the pipeline tests)."""
    declared = {
        k for k, v in vars(vocabulary).items() if k.endswith("_TOPIC") and isinstance(v, str)
    }
    assert {getattr(vocabulary, k) for k in declared} == {t.name for t in vocabulary.TOPICS}
    produced, consumed = _uses(_PRODUCE_CALLS), _uses(_CONSUME_CALLS)
    assert declared - produced == set(), "declared but never produced"
    assert declared - consumed == set(), "declared but never consumed"


def _fresh_interpreter_modules(statement: str) -> set[str]:
    code = f"import json, sys; {statement}; print(json.dumps(sorted(sys.modules)))"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(run.stdout))


def test_the_vendor_sdk_is_light() -> None:
    """Importing connectors.sdk loads no HTTP server, store, validator, router or metrics."""
    loaded = _fresh_interpreter_modules("import connectors.sdk")
    heavy = {
        "aiohttp.web",
        "sqlite3",
        "prometheus_client",
        "brokers.validator",
        "brokers.router",
        "brokers.runtime.host",
        "brokers.runtime.worker",
        "brokers.runtime.sqlite",
        "brokers.runtime.postgres",
        "psycopg",
        "brokers.stack",
        "tracing",
    }
    assert loaded & heavy == set()


@pytest.mark.parametrize("statement", ["import brokers.cli", "import brokers.stack.registry"])
def test_the_runtime_never_imports_the_benchmark(statement: str) -> None:
    """``dp2`` and the services load brokers.bench only when ``dp2 bench`` is run."""
    assert not any(m.startswith("brokers.bench") for m in _fresh_interpreter_modules(statement))


def test_the_services_load_the_postgresql_driver_only_when_they_use_it() -> None:
    """Every service imports its stores' modules; psycopg (~10 MB of every process's RSS)
    is loaded only when a store connects to DP2_DATABASE_URL."""
    loaded = _fresh_interpreter_modules("import brokers.stack.registry")
    assert "brokers.runtime.postgres" in loaded, "the stores are there"
    assert not any(m == "psycopg" or m.startswith("psycopg.") for m in loaded)


def test_modules_stay_small_or_say_why() -> None:
    """A module over 500 lines says in its docstring why it is one module."""
    long = []
    for path in _modules().values():
        source = path.read_text()
        docstring = ast.get_docstring(ast.parse(source)) or ""
        if source.count("\n") > 500 and "one module" not in docstring:
            long.append(f"{path.relative_to(ROOT)}: {source.count(chr(10))} lines")
    assert not long, "split these, or say in the docstring why each is one module:\n" + "\n".join(
        long
    )
