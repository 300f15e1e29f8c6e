"""Features of a fixed (frozen) network, computed once per training sample and flip.

When a stage trains only the layers on top of a frozen backbone, every epoch recomputes the
same backbone features. :class:`FeatureCache` computes them once per ``(sample, flip)``
(``float16`` by default: half the memory, and the trainable layers see values within 0.1 % of
the float32 ones). Without a path it keeps them in memory. Given a path it writes every map
to a data file as it is computed (``<path stem>.features``, atomically, then a small index,
``<path stem>.index``) and reads a sample's maps back when a step asks for them: the
operating system's file cache keeps a cache that is read every epoch in RAM, but the
process holds only the maps in use, so a run's memory does not grow with the training
split (the VOC sample's run peaked at 2.3 GB instead of 4.0, benchmarks/results/real_voc.json
at 26f2c32 against 0acd699). A resumed run, or a
second stage on the same images and backbone (WISE and the reference Mask R-CNN), opens the
file instead of recomputing. The index carries a fingerprint of everything the features
depend on; a file with another fingerprint is recomputed and replaced.

What caching gives up, and the stages say so where they use it: augmentations that change
the pixels *before* the backbone (colour jitter, scale jitter) are not applied; horizontal
flips are kept by caching both orientations.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from wiseseg.engine.checkpoint import load_checkpoint, save_checkpoint
from wiseseg.errors import WisesegError
from wiseseg.io import atomic_write

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
        """Bytes of all the cached maps (in memory or in the data file)."""
        return sum(per.nbytes() if isinstance(per, DiskItems) else
                   sum(t.numel() * t.element_size() for d in per for t in d.values())
                   for per in self.items.values())

    @classmethod
    def build(cls, n: int, compute: ComputeFn, fingerprint: str, flips: bool = True,
              batch_size: int = 16, dtype: torch.dtype = torch.float16,
              path: str | Path | None = None, progress: bool = True,
              desc: str = "features") -> FeatureCache:
        """Compute (or open from ``path``) the features of samples ``0..n-1``.

        Args:
            n: number of samples.
            compute: see :data:`ComputeFn`; called without autograd, in batches.
            fingerprint: identifies what the features depend on (network, weights, input
                sizes, the samples); a cached file with another one is recomputed.
            flips: also cache the horizontally flipped samples.
            dtype: storage type of the cached maps.
            path: where the cache lives on disk (module docstring: its stem names the data
                and index files); None keeps it in memory.
        """
        orientations = [False, True] if flips else [False]
        if path is not None:
            index, data = _files(path)
            found = _open(index, data, fingerprint, n, orientations)
            if found is not None:
                log.info("feature cache opened from %s", data)
                return cls(found, fingerprint)
        from tqdm import tqdm

        bar = tqdm(total=n * len(orientations), desc=desc, unit="img", disable=not progress)

        def maps():  # (flip, the sample's maps as stored), in order
            with torch.no_grad():
                for flip in orientations:
                    for start in range(0, n, batch_size):
                        idx = list(range(start, min(n, start + batch_size)))
                        for feats in compute(idx, flip):
                            yield flip, {k: v.detach().to("cpu", dtype).contiguous()
                                         for k, v in feats.items()}
                        bar.update(len(idx))

        if path is None:
            items: dict[bool, list] = {f: [] for f in orientations}
            for flip, m in maps():
                items[flip].append(m)
            bar.close()
            return cls(items, fingerprint)
        entries: dict[bool, list] = {f: [] for f in orientations}

        def write(f) -> None:
            offset = 0
            for flip, m in maps():
                entry = {}
                for k, t in m.items():
                    raw = _bytes(t)
                    f.write(raw)
                    entry[k] = [offset, list(t.shape), str(t.dtype).removeprefix("torch.")]
                    offset += raw.nbytes
                entries[flip].append(entry)

        atomic_write(data, write)
        bar.close()
        save_checkpoint(index, {"format": FORMAT, "fingerprint": fingerprint, "n": n,
                                "bytes": data.stat().st_size, "data": data.name,
                                **{_KEYS[f]: entries[f] for f in orientations}})
        with contextlib.suppress(FileNotFoundError):  # the one-file format before this one
            Path(path).with_suffix(".pt").unlink()
        return cls({f: DiskItems(data, entries[f]) for f in orientations}, fingerprint)


#: Version of the on-disk layout (raw maps, one after the other, and a torch-saved index).
FORMAT = "wiseseg-feature-cache-1"
_KEYS = {False: "plain", True: "flipped"}
#: Storage types a cache file may name (whatever else an index says is refused).
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64}


def _files(path: str | Path) -> tuple[Path, Path]:
    """The index and data files of the cache named ``path`` (any suffix is replaced)."""
    path = Path(path)
    return path.with_suffix(".index"), path.with_suffix(".features")


def _bytes(t: Tensor):
    """A contiguous CPU tensor's bytes as a NumPy uint8 view (any dtype, bfloat16 too)."""
    return t.reshape(-1).view(torch.uint8).numpy()


def _open(index: Path, data: Path, fingerprint: str, n: int, orientations: list[bool]
          ) -> dict[bool, DiskItems] | None:
    """The cache's items when ``index`` describes these features and ``data`` is whole."""
    if not index.is_file() or not data.is_file():
        return None
    try:
        blob = load_checkpoint(index, "feature cache index")
    except WisesegError as e:  # a damaged index is just recomputed
        log.warning("%s; recomputing", e)
        return None
    if (blob.get("format") != FORMAT or blob.get("fingerprint") != fingerprint
            or blob.get("n") != n or blob.get("bytes") != data.stat().st_size
            or any(len(blob.get(_KEYS[f]) or []) != n for f in orientations)):
        return None
    try:
        return {f: DiskItems(data, blob[_KEYS[f]]) for f in orientations}
    except (TypeError, ValueError, KeyError) as e:
        log.warning("%s: unreadable feature cache index (%s); recomputing", index, e)
        return None


class DiskItems(Sequence):
    """The per-sample maps of a cache data file, read when asked for.

    ``entries[i]`` maps a feature name to ``[byte offset, shape, dtype name]`` in ``path``.
    Each read fills a fresh tensor (the caller may keep or modify it). The open file is per
    process and is not pickled, so data-loader workers open their own.
    """

    def __init__(self, path: Path, entries: list[dict]):
        self.path = Path(path)
        self.entries = [{k: (int(off), tuple(int(s) for s in shape), _DTYPES[str(dt)])
                         for k, (off, shape, dt) in e.items()} for e in entries]
        self._file = None
        self._pid = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        out = {}
        with self._lock:
            f = self._handle()
            for k, (offset, shape, dtype) in self.entries[i].items():
                t = torch.empty(shape, dtype=dtype)
                want = t.numel() * t.element_size()
                f.seek(offset)
                if want and f.readinto(_bytes(t)) != want:
                    raise WisesegError(f"{self.path}: the feature cache file ends before map "
                                       f"{k!r} of sample {i}; delete it and rerun")
                out[k] = t
        return out

    def nbytes(self) -> int:
        return sum(math.prod(shape) * dt.itemsize
                   for e in self.entries for _, shape, dt in e.values())

    def _handle(self):
        if self._file is None or self._pid != os.getpid():
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open between reads)
            self._pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_file=None, _pid=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def cache_batch_size(device) -> int:
    """Images per forward pass when filling a cache: one on a CPU, where a batch's large
    activations fall out of the caches and cost fresh pages (lite0 at 384 px: 0.04 s an image
    one at a time, 0.08 s in batches of 16), 16 on an accelerator."""
    return 1 if torch.device(device).type == "cpu" else 16

