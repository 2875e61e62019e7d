"""The engine: whisper.cpp models (table, download, conversion) and the shared transcriber.

The only package that loads libwhisper (pywhispercpp and ctypes).

OpenMP's wait is bounded here, the one place for it: libgomp reads GOMP_SPINCOUNT once, when
libwhisper loads, and this package's __init__ runs before any of its modules can load it.
ggml's threads meet at a barrier after every node of a graph (hundreds per decoder pass): threads
that sleep there (OMP_WAIT_POLICY=passive) made a decoder pass of tiny.en 2-4x slower on two
threads (1.85 -> 6.6 ms alone, 7.7 -> 18 ms for 8 windows, docs/performance.md), and threads
that spin forever (active) steal the CPU from whatever else runs when a graph is done (a decode
step went from 6 ms to 745 ms with two calls of two threads on two cores). So they spin a little
(100,000 turns, a fraction of a millisecond), then sleep. An operator's values win.
"""

import os

_OPENMP = {"GOMP_SPINCOUNT": "100000"}
# The names set here, not by the operator (cmd/bench runs faster-whisper, which has a libgomp of its own, without them).
OPENMP_SET_HERE = tuple(name for name in _OPENMP if name not in os.environ)
os.environ.update({name: _OPENMP[name] for name in OPENMP_SET_HERE})
