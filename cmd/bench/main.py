"""The benchmarks (the `bench` package beside `worker`): `PYTHONPATH=. python cmd/bench/main.py --help`."""

import sys
from pathlib import Path

# bench/ is not installed with the project: the repository root holds it.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
