"""Keep glibc from handing large tensor buffers back to the kernel after every use.

With glibc's default settings, every CPU tensor larger than the (dynamic) mmap threshold is
``mmap``-ed when a layer allocates it and ``munmap``-ed when it is freed, so the next batch
page-faults every page of it in again. On this project's CNN feature extraction that kernel
work took more CPU time than the convolutions themselves (docs/performance.md, "Memory
allocator", measured by ``benchmarks/bench_malloc.py``).

:func:`tune_malloc` raises the mmap threshold, the trim threshold and the top pad so that freed
buffers stay in the heap and are reused. ``python -m napari_sickle.train`` and
``python -m napari_sickle.evaluate`` call it at start-up (the training widget runs the former
as a subprocess); a notebook may call it too. It changes a process-wide setting and keeps up
to 2 GiB of freed memory in the process, so the viewer process (analysis widgets) and
``analyze`` (whose memory is benchmarked, docs/performance.md) do not call it. Set
``NAPARI_SICKLE_MALLOC=default`` to leave glibc's settings alone. On other C libraries
(macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

#: (parameter, value): buffers up to 1 GiB come from the heap, the heap is trimmed only when
#: over 2 GiB is free at its top, and it grows 1 GiB at a time (address space; pages count
#: towards memory only once touched).
SETTINGS = ((M_MMAP_THRESHOLD, 1 << 30), (M_TRIM_THRESHOLD, (1 << 31) - 1), (M_TOP_PAD, 1 << 30))

_done: bool | None = None


def tune_malloc() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt`` once per process; True if applied."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("NAPARI_SICKLE_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return _done
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    return _done
