"""Keep the server's resident memory from creeping up: large buffers go back to the system.

    python -c "from cifarlab.serve.memory import bound_malloc; print(bound_malloc())"

glibc serves allocations above its mmap threshold (128 kB at start) with their own `mmap`, which
`free` returns to the system at once. But the threshold is dynamic: after the first such
block is freed it rises (up to 32 MB), and later multi-megabyte buffers (upload bodies, decoded
photos) come from the malloc arenas instead, where freed space fragments and stays resident.
A soak test saw the server's RSS creep up without a plateau (issue 13). Fixing the threshold
(which also switches the dynamic adjustment off) keeps large buffers on `mmap`; in a one-off
in-process probe of the upload and decode paths the RSS then stayed flat where, without it,
it kept growing (bench/serve_soak.py measures the server itself).
`cifarlab serve` calls this
before it starts; elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, now fixed


def bound_malloc(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; True when glibc accepted it."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    log.debug("malloc mmap threshold fixed at %d bytes: %s", threshold, ok)
    return ok
