"""The engine: whisper.cpp models (table, download, conversion) and the shared transcriber.

The only package that loads libwhisper (pywhispercpp and ctypes).

OpenMP's wait policy is set here, the one place for it: libgomp reads OMP_WAIT_POLICY once, when
libwhisper loads, and this package's __init__ runs before any of its modules can load it.
Threads that spin while idle steal the CPU from the other concurrent calls (a decode step went
from 6 ms to 745 ms here). An operator's value wins.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
