"""Features of a fixed (frozen) network, computed once per training sample and flip.

When a stage trains only the layers on top of a frozen backbone, every epoch recomputes the
same backbone features. :class:`FeatureCache` computes them once per ``(sample, flip)``, keeps
them in memory (``float16`` by default: half the memory, and the trainable layers see values
within 0.1 % of the float32 ones) and, given a path, in one file written atomically — so a
resumed run, or a second stage on the same images and backbone (WISE and the reference
Mask R-CNN), loads instead of recomputing. The file is keyed by a fingerprint of everything
the features depend on; a file with another fingerprint is recomputed and replaced.

What caching gives up, and the stages say so where they use it: augmentations that change
the pixels *before* the backbone (colour jitter, scale jitter) are not applied; horizontal
flips are kept by caching both orientations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from wiseseg.engine.checkpoint import load_checkpoint, save_checkpoint
from wiseseg.errors import WisesegError

log = logging.getLogger(__name__)

ComputeFn = Callable[[Sequence[int], bool], list[dict[str, Tensor]]]
"""``(sample indices, flipped) -> one dict of feature maps (C×h×w) per index``."""


class FeatureCache:
    """Per ``(index, flip)`` dicts of feature maps ``C×h×w`` (see the module docstring)."""

    def __init__(self, items: dict[bool, list[dict[str, Tensor]]], fingerprint: str):
        self.items = items
        self.fingerprint = fingerprint

    def __len__(self) -> int:
        return len(self.items[False])

    @property
    def flips(self) -> bool:
        return True in self.items

    def get(self, index: int, flip: bool = False) -> dict[str, Tensor]:
        if flip and not self.flips:
            raise WisesegError("feature cache holds no flipped features")
        return self.items[bool(flip)][index]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for per in self.items.values() for d in per
                   for t in d.values())

    @classmethod
    def build(cls, n: int, compute: ComputeFn, fingerprint: str, flips: bool = True,
              batch_size: int = 16, dtype: torch.dtype = torch.float16,
              path: str | Path | None = None, progress: bool = True,
              desc: str = "features") -> FeatureCache:
        """Compute (or load from ``path``) the features of samples ``0..n-1``.

        Args:
            n: number of samples.
            compute: see :data:`ComputeFn`; called without autograd, in batches.
            fingerprint: identifies what the features depend on (network, weights, input
                sizes, the samples); a cached file with another one is recomputed.
            flips: also cache the horizontally flipped samples.
            dtype: storage type of the cached maps.
            path: optional file to load from / save to (atomic).
        """
        if path is not None and Path(path).is_file():
            try:
                blob = load_checkpoint(path, "feature cache")
            except WisesegError as e:  # a damaged cache is just recomputed
                log.warning("%s; recomputing", e)
                blob = {}
            if (blob.get("fingerprint") == fingerprint and len(blob.get("plain", [])) == n
                    and (not flips or len(blob.get("flipped", [])) == n)):
                items = {False: blob["plain"]}
                if flips:
                    items[True] = blob["flipped"]
                log.info("feature cache loaded from %s", path)
                return cls(items, fingerprint)
        from tqdm import tqdm

        orientations = [False, True] if flips else [False]
        items: dict[bool, list[dict[str, Tensor]]] = {f: [] for f in orientations}
        bar = tqdm(total=n * len(orientations), desc=desc, unit="img", disable=not progress)
        with torch.no_grad():
            for flip in orientations:
                for start in range(0, n, batch_size):
                    idx = list(range(start, min(n, start + batch_size)))
                    for feats in compute(idx, flip):
                        items[flip].append({k: v.detach().to("cpu", dtype).contiguous()
                                            for k, v in feats.items()})
                    bar.update(len(idx))
        bar.close()
        cache = cls(items, fingerprint)
        if path is not None:
            blob = {"fingerprint": fingerprint, "plain": items[False]}
            if flips:
                blob["flipped"] = items[True]
            save_checkpoint(path, blob)
        return cache


def cache_batch_size(device) -> int:
    """Images per forward pass when filling a cache: one on a CPU, where a batch's large
    activations fall out of the caches and cost fresh pages (lite0 at 384 px: 0.04 s an image
    one at a time, 0.08 s in batches of 16), 16 on an accelerator."""
    return 1 if torch.device(device).type == "cpu" else 16

