"""`python -m bench`: what cmd/bench/main.py runs (the row children are started this way, from the root)."""

import sys

from bench.cli import main

sys.exit(main())
