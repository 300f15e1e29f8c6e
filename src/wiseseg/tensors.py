"""Small tensor helpers shared by the models and the training engine (no I/O, no state)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pad_stack(maps: Sequence[Tensor], dtype: torch.dtype = torch.float32) -> Tensor:
    """Stack ``C×h_i×w_i`` maps into ``B×C×max h×max w``, zero-padded at the bottom/right
    (where a batch of padded images has its padding). ``maps`` must not be empty."""
    h = max(m.shape[-2] for m in maps)
    w = max(m.shape[-1] for m in maps)
    out = maps[0].new_zeros((len(maps), maps[0].shape[0], h, w), dtype=dtype)
    for i, m in enumerate(maps):
        out[i, :, : m.shape[-2], : m.shape[-1]] = m
    return out
