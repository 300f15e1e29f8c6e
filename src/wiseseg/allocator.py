"""Keep freed memory in the process (glibc malloc), so that tensors reuse it without faults.

glibc's malloc gives an allocation above its mmap threshold (dynamic, from 128 KiB) fresh
pages from the kernel and returns them on ``free``; its heap is trimmed once 128 KiB are free
at its top. A CPU training step allocates and frees the same multi-megabyte activations and
gradients every time, so every step pays for page faults and for the kernel zeroing those
pages again, which on this project's 2-core virtual machine is a visible part of a Mask
R-CNN step (``benchmarks/step_time.py --segmenter-sizes``: the variants with
``keep_freed_memory``).

:func:`keep_freed_memory` sets the mmap threshold to its maximum (32 MiB on 64-bit; bigger
blocks are still mapped and unmapped) and stops heap trimming, so freed memory is reused.
Nothing computed changes — only where the bytes live. Within a stage the process keeps its
high-water heap; between the stages of ``wiseseg run`` :func:`release_freed_memory` hands the
free part back (``malloc_trim``), so one stage's temporaries do not add to the next one's
peak (a feature cache of several gigabytes, say). A no-op where the C library is not glibc;
``WISESEG_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
_MMAP_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)

_done: bool | None = None


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> bool:
    """Apply the settings above once per process; True when glibc accepted them."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("WISESEG_KEEP_FREED_MEMORY", "1") == "0":
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:  # not glibc (macOS, musl without mallopt, Windows)
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _done


def release_freed_memory() -> bool:
    """Return the heap's free memory to the system (glibc ``malloc_trim(0)``): what the
    process has freed stops counting in its resident size. True when glibc released some."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))
