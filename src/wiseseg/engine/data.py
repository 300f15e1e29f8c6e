"""Deterministic batch order for exact resume and data-parallel sharding.

The samples of global step ``s`` are a pure function of (seed, s, rank): epoch ``e`` shuffles
the dataset with ``default_rng([seed, e])``, step ``s`` takes its slice, and each rank takes
every ``world_size``-th index of it. Augmentations draw from ``default_rng([seed, e, index])``.
So a resumed run, a run with another number of loader workers and a restarted worker all see
the same data, and nothing depends on a global RNG.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch


class TrainData(Protocol):
    """What the engine trains on: indexable samples with their own augmentation RNG."""

    def __len__(self) -> int: ...

    def load(self, index: int, rng: np.random.Generator) -> Any:
        """Sample ``index``, augmented with ``rng``."""

    def collate(self, samples: list[Any]) -> Any:
        """A batch from a list of samples."""


class StepSchedule:
    """Which dataset indices each global step (and rank) uses."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n <= 0:
            raise ValueError("cannot train on an empty dataset")
        self.n, self.batch, self.seed = n, batch_size, seed
        self.rank, self.world = rank, world_size
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = max(1, n // self.global_batch)
        self._perm_epoch, self._perm = -1, np.zeros(0, np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            if self.n < self.global_batch:  # tiny data: repeat to fill one global batch
                perm = np.resize(perm, self.global_batch)
            self._perm_epoch, self._perm = epoch, perm
        return self._perm

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def indices(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        chunk = self._permutation(epoch)[pos * self.global_batch:(pos + 1) * self.global_batch]
        return [int(i) for i in chunk[self.rank::self.world]]


class StepBatches(torch.utils.data.Dataset):
    """Item ``k`` is the collated batch of global step ``start + k`` (for a DataLoader with
    ``batch_size=None``; works the same with any number of workers)."""

    def __init__(self, data: TrainData, schedule: StepSchedule, start: int, stop: int):
        self.data, self.schedule, self.start, self.stop = data, schedule, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, k: int) -> Any:
        step = self.start + k
        epoch = self.schedule.epoch_of(step)
        samples = [
            self.data.load(i, np.random.default_rng([self.schedule.seed, epoch, i]))
            for i in self.schedule.indices(step)
        ]
        return self.data.collate(samples)
