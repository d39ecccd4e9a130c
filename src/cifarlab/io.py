"""Small file helpers with no torch dependency (serve, bench and runinfo import them).

    python -c "from cifarlab.io import write_json_atomic; write_json_atomic('x.json', {'a': 1})"

The project's one atomic writer: every result, run-folder and checkpoint file goes through
`atomic_write_bytes` (unique temp file in the same folder, fsync, rename), so a crash leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def give_default_mode(path: Path | str) -> None:
    """Give `path` the mode `open()` would have created it with (0666 minus the umask).

    `tempfile.mkstemp` creates private 0600 files; files renamed into place from one should
    be readable like any other (e.g. the serving container reads models as a non-root user).
    """
    os.chmod(path, 0o666 & ~_process_umask())


@functools.cache
def _process_umask() -> int:
    # Reading the umask means setting it; do that once, not on every write, so other threads
    # creating files have (at most) one instant in which the umask is 0.
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder, fsync and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        give_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, data: Any) -> None:
    """Write `data` as indented JSON (with a final newline) atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
