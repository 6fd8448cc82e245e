"""``dp2``: the one command line for operators, vendors and developers.

Why one entry point: a new user should need two commands (``make run``,
``make test``) and then discover everything else with ``dp2 --help``. Each command
group is one module of this package, a thin layer over the modules that tests
drive directly; this module only finds the group, parses arguments, and turns a
:class:`Dp2Error` into a two-line message and exit code 2 instead of a traceback.

Why the groups load lazily: ``dp2 --help`` and ``dp2 trace`` should not pay for
importing the whole stack (or the benchmark). :data:`COMMANDS` names each command,
its group module and its one-line help; only the chosen command's module is
imported, and it adds its own arguments (``add_arguments``).

| module | commands |
|---|---|
| kafka | ``dp2 kafka fetch / start / stop / status`` |
| stack | ``dp2 up / down / status / run``, ``dp2 connectors list`` |
| pki | ``dp2 pki init / issue / revoke / list`` |
| contacts | ``dp2 contacts load / show`` |
| send | ``dp2 send`` |
| trace | ``dp2 trace`` |
| tokens | ``dp2 tokens issue`` |
| dashboard | ``dp2 dashboard user add`` |
| demo | ``dp2 demo letter``, ``dp2 capture`` |
| bench | ``dp2 bench`` (loads brokers.bench) |

Exit codes: 0 ok, 1 something is not running/healthy (status), 2 an error the
message explains, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from brokers.cli.output import say
from brokers.runtime.logs import configure_logging
from brokers.runtime.settings import Settings
from schemas.errors import Dp2Error

#: command -> (module in this package, one-line help). A module with one command
#: exports ``add_arguments(parser)``; one with several, ``add_arguments(command, parser)``.
COMMANDS: dict[str, tuple[str, str]] = {
    "kafka": ("kafka", "local Kafka broker(s) from the Maven jars"),
    "up": ("stack", "run the whole stack on the embedded default"),
    "down": ("stack", "stop everything that dp2 up started"),
    "status": ("stack", "every service with its URL and health"),
    "run": ("stack", "run one service in the foreground (dp2 up uses this)"),
    "connectors": ("stack", "installed and configured connectors"),
    "pki": ("pki", "development PKI: CA, certificates, revocation"),
    "contacts": ("contacts", "the contact register (dp2.contacts)"),
    "send": ("send", "sign, encrypt and submit a message; prints its UUID"),
    "trace": ("trace", "a message's timeline from the tracing service"),
    "receipt": ("receipt", "a message's offline-verifiable receipt; verify FILE checks one"),
    "log": ("receipt", "the verifiable log of lifecycle events (log verify)"),
    "tokens": ("tokens", "development citizen tokens (not MitID)"),
    "dashboard": ("dashboard", "users of the operators' dashboard"),
    "demo": ("demo", "the demo's sample input: a fresh MeMo letter (or SF1601 request)"),
    "capture": ("demo", "e-mails and SMS the embedded default captured instead of sending"),
    "bench": ("bench", "end-to-end benchmark on its own stack: throughput, latency, CPU, RSS"),
}
_MULTI_COMMAND_MODULES = frozenset({"stack", "receipt", "demo"})


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``dp2`` parser; with ``argv``, only the chosen command's module is loaded."""
    parser = argparse.ArgumentParser(
        prog="dp2",
        description="DP2: open message-broker infrastructure for secure digital post.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for command, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(command, help=help_text)
        if argv is None or command == chosen:
            module = importlib.import_module(f"brokers.cli.{module_name}")
            if module_name in _MULTI_COMMAND_MODULES:
                module.add_arguments(command, command_parser)
            else:
                module.add_arguments(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(arguments).parse_args(arguments)
        settings = Settings.from_env()
        configure_logging(settings.log_format)
        code: int = args.func(settings, args)
        sys.stdout.flush()
    except Dp2Error as exc:
        say(f"dp2: error: {exc.reason_code}: {exc.message}")
        if exc.hint:
            say(f"  how to fix: {exc.hint}")
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``dp2 trace UUID --json | head``): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code
