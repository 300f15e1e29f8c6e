"""Pools of single-threaded worker processes for per-image work on a CPU.

Per-image operations with small tensors (a batch-1 backward pass, polygon grouping) use more
BLAS / OpenMP threads poorly: one process per core, each with one thread, does better.
Workers are spawned (fresh interpreters), so they read the single-thread settings before
numpy and torch load, and inherit nothing of the parent's thread pools; code they run must
be importable (module-level functions), and a script that starts them needs the usual
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

#: the variables that set the thread count of the numerical libraries
SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def single_thread_pool(workers: int, initializer: Callable | None = None,
                       initargs: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """A :class:`ProcessPoolExecutor` of ``workers`` spawned processes, one thread each.

    The environment is set while the pool starts its processes (on the first submit, inside
    the ``with`` block) and restored afterwards."""
    saved = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    os.environ.update({k: "1" for k in SINGLE_THREAD_ENV})
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer,
                                 initargs=initargs) as pool:
            yield pool
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
