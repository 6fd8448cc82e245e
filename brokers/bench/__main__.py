"""``python -m brokers.bench``: the benchmark without the ``dp2`` front end (``make bench``)."""

import sys

from brokers.bench.run import main

sys.exit(main())
