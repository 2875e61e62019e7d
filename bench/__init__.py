"""The benchmarks: every table of docs/performance.md and docs/accuracy.md, against faster-whisper where it
has a row. A package of its own, beside `worker` and never imported by it (pyproject's import contracts);
not installed with the project (run from the repository root: `PYTHONPATH=. python cmd/bench/main.py`, or
`python -m bench`). `cli` parses the flags and runs the rows; each other module is one family of rows."""
