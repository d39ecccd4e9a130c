"""Small shared helpers: atomic file writes, sha256, softmax, figure saving (no torch).

    python -c "from cifarlab.io import sha256_file; print(sha256_file('README.md'))"

Everything that writes a file (run folders, checkpoints, reports, exports, the data cache)
goes through `atomic_path`: the content is written to a unique temporary name beside the
target, flushed and renamed over it, so a crash leaves either the old file or the new one,
never half of one. The serving side imports this module too, so it needs numpy only
(matplotlib is imported inside `save_figure`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

StrPath = str | os.PathLike[str]


@functools.cache
def _process_umask() -> int:
    # Reading the umask means setting it; do that once, not on every write, so other threads
    # creating files have (at most) one instant in which the umask is 0.
    umask = os.umask(0)
    os.umask(umask)
    return umask


def give_default_mode(path: StrPath) -> None:
    """Give `path` the mode `open()` would have created it with (0666 minus the umask).

    `tempfile.mkstemp` creates private 0600 files; files renamed into place from one should
    be readable like any other (e.g. the serving container reads models as a non-root user).
    """
    os.chmod(path, 0o666 & ~_process_umask())


@contextlib.contextmanager
def atomic_path(path: StrPath, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`.

    For writers that want a file name (np.save, savefig, ONNX export). `suffix` keeps the
    extension some writers insist on (e.g. `.npy`, `.png`). On error the temp file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        give_default_mode(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Write `data` to `path` via a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: StrPath, text: str) -> None:
    """Write `text` (UTF-8) to `path` via a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(path: StrPath, data: Any) -> None:
    """Write `data` as indented JSON (with a final newline) via `atomic_write_text`."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: StrPath) -> str:
    """Hex sha256 of a file, read in chunks (`hashlib.file_digest`)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def save_figure(fig: Any, path: StrPath, dpi: int = 100) -> Path:
    """Render a matplotlib figure to `path` atomically, then close it.

    PNG metadata carries no software version, so an unchanged figure gives unchanged bytes.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix or ".png") as tmp:
            fig.savefig(tmp, dpi=dpi, metadata={"Software": None})
    finally:
        plt.close(fig)
    return path
