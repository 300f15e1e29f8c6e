"""Which floating-point type a fixed backbone's gradient-free passes run in (``amp``).

Training steps use automatic mixed precision on CUDA only (:class:`~wiseseg.engine.trainer.
Trainer`). The passes that compute *no gradient* through a backbone — the feature caches of
both trained stages, CAMs for peaks, prediction bodies — are most of a CPU run's inference
time; with ``amp`` they run in a reduced type where the hardware computes it natively:
float16 on CUDA, bfloat16 on a CPU with AVX512-BF16 or AMX-BF16 (Lite0 at 384 px: 2.6× the
images a second of float32 on this project's machine, ``benchmarks/precision.py``). A CPU
without them emulates bfloat16, slower than float32: it keeps float32. The backbone returns
float32 maps either way (:meth:`wiseseg.models.backbones.Backbone.forward`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

#: CPU flags (``/proc/cpuinfo``) of native bfloat16 arithmetic
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (a flag of ``_BF16_FLAGS``; False where
    the file is absent, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags")
             for f in line.split(":", 1)[-1].split()}
    return any(f in flags for f in _BF16_FLAGS)


def gradient_free_dtypes(amp: bool) -> dict[str, torch.dtype]:
    """Device type → the reduced type of gradient-free backbone passes (none: float32)."""
    if not amp:
        return {}
    dtypes = {"cuda": torch.float16}
    if cpu_has_native_bfloat16():
        dtypes["cpu"] = torch.bfloat16
    return dtypes
