"""Does this libwhisper transcribe? `make install` asks after building one for the host.

    python -m worker.devtools.engine_check [MODELS_DIR]

Provides the default model's default variant (quantized: the kernels a host build is most likely to
get wrong) from the installed packages, offline, and runs one whisper call on two seconds of quiet
noise in a child process, so that a crash (a segfault in a CPU-specific kernel) is an exit code here,
not a dead caller. Exit 0 when the call returned.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np

_MODEL = "tiny.en"


def _call(models_dir: Path) -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    from worker.engine.models import ModelDownloader
    from worker.engine.transcriber import WhisperTranscriber

    _name, path = ModelDownloader(models_dir, download_url="").provide(_MODEL)
    transcriber = WhisperTranscriber(path, max_concurrent_calls=1)
    noise = (np.random.default_rng(0).standard_normal(32000) * 0.01).astype(np.float32)
    transcriber.transcribe(noise, language="en")


def main() -> int:
    models_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "whisper/models")
    if len(sys.argv) > 2 and sys.argv[2] == "--child":
        _call(models_dir)
        return 0
    done = subprocess.run([sys.executable, "-m", "worker.devtools.engine_check", str(models_dir), "--child"])
    if done.returncode != 0:
        print(f"libwhisper failed a whisper call on {_MODEL} (exit {done.returncode})", file=sys.stderr)
        return 1
    print(f"libwhisper transcribes ({_MODEL}, default variant)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
