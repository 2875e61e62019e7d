"""Writing files so that a reader never sees half of one (also across a crash)."""

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str) -> Path:
    """Write `text` to a unique temporary file beside `path`, then rename it over `path`.

    The rename is atomic on one filesystem, so readers see the old file or the new one; a
    crash leaves at most a `.<name>.*.tmp` file, never a truncated `path`.
    """
    fd, staged = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(staged, 0o644)  # mkstemp's 0600 would hide outputs from other users of a shared volume
        os.replace(staged, path)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return path
