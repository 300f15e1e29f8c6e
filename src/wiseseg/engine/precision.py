"""Mixed precision of the fixed backbones' passes (the ``amp`` setting of the trained stages).

Stage 1 and both Mask R-CNNs keep their ImageNet backbone fixed on a CPU and compute its
features once (``cache_features``); with ``amp`` those passes run under autocast in:

- CUDA: float16;
- CPU: bfloat16 where the processor computes it natively (AMX or AVX512-BF16: Intel Xeon
  since Sapphire Rapids, AMD Zen 4 and newer), where the backbones' passes ran 1.5–1.9×
  faster (``benchmarks/cpu_amp.py``); elsewhere float32, as emulated bfloat16 is slower.

The features are stored as before (float16 for training, float32 for predicting). Training
steps use autocast on CUDA only (:class:`~wiseseg.engine.trainer.Trainer`): on a CPU the Mask
R-CNN step gained 1.04–1.2× in bfloat16 (its sparse backward kernels have no bfloat16 form)
and its box regression would lose precision. ``amp: false`` computes in float32 throughout.
"""

from __future__ import annotations

import contextlib
import functools

import torch


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AMX-BF16 or AVX512-BF16)."""
    try:
        caps = torch.cpu.get_capabilities()
    except Exception:  # an older torch without the query: assume emulation
        return False
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def autocast_dtype(device: torch.device | str, amp: bool) -> torch.dtype | None:
    """The float type of a fixed backbone's pass on ``device`` with ``amp``; None: float32."""
    kind = torch.device(device).type
    if not amp:
        return None
    if kind == "cuda":
        return torch.float16
    if kind == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device | str, amp: bool):
    """A context in which autocast runs as :func:`autocast_dtype` says (a no-op for None)."""
    dtype = autocast_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def describe(device: torch.device | str, amp: bool) -> str:
    """``"bfloat16"``, ``"float16"`` or ``"float32"``: what :func:`autocast` computes in."""
    dtype = autocast_dtype(device, amp)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
