"""``dp2 bench``: the end-to-end benchmark, loaded only when this command is chosen.

The benchmark (brokers.bench) starts its own Kafka and stack and is never imported
by the runtime; brokers.cli imports this module only for ``dp2 bench``.
"""

from __future__ import annotations

import argparse

from brokers.bench.run import add_arguments as _bench_arguments
from brokers.bench.run import cmd_bench


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _bench_arguments(parser)
    parser.set_defaults(func=cmd_bench)
