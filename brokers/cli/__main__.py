"""``python -m brokers.cli``: the same as ``dp2`` (how ``dp2 up`` starts each service)."""

import sys

from brokers.cli import main

sys.exit(main())
