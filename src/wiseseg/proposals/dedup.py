"""Candidate bookkeeping for the built-in generator: duplicate rows, the common refinement of
several over-segmentations ("atoms"), region boxes and non-maximum suppression by mask IoU."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def region_boxes(member: np.ndarray, sp_boxes: np.ndarray) -> np.ndarray:
    """R×4 ``(y0, x0, y1, x1)`` boxes of regions from their superpixels' boxes."""
    big = np.iinfo(np.int64).max
    return np.stack([np.where(member, sp_boxes[:, 0], big).min(axis=1),
                     np.where(member, sp_boxes[:, 1], big).min(axis=1),
                     np.where(member, sp_boxes[:, 2], -1).max(axis=1),
                     np.where(member, sp_boxes[:, 3], -1).max(axis=1)], axis=1)


def unique_rows(member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a bool matrix without repeats.

    Returns:
        (index of the first occurrence of each distinct row, in order; for every row the
        position of its distinct row in that list).
    """
    # Hashing packed rows is exact and much faster than np.unique(axis=0)'s row sort.
    seen: dict[bytes, int] = {}
    inverse = np.empty(len(member), np.int64)
    first = []
    for i, row in enumerate(np.packbits(member, axis=1)):
        key = row.tobytes()
        j = seen.get(key)
        if j is None:
            j = seen[key] = len(first)
            first.append(i)
        inverse[i] = j
    return np.asarray(first, np.int64), inverse


def common_refinement(label_maps: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Atoms: the pieces on which all label maps are constant.

    Returns:
        (h×w int32 atom ids 0..A-1, per label map an A-array of the label of each atom).
    """
    key = np.zeros(label_maps[0].size, np.int64)
    for lab in label_maps:
        key = key * (int(lab.max()) + 1) + lab.ravel()
        # Re-number after each step so the key never overflows.
        _, key = np.unique(key, return_inverse=True)
        key = key.ravel().astype(np.int64)
    _, first = np.unique(key, return_index=True)
    atoms = key.reshape(label_maps[0].shape).astype(np.int32)
    return atoms, [lab.ravel()[first] for lab in label_maps]


def suppress_duplicates(member: np.ndarray, atom_area: np.ndarray,
                        threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression by mask IoU.

    Args:
        member: K×A bool regions over atoms, best first.
        atom_area: A pixel counts.
        threshold: drop a region whose IoU with a kept, better one is ≥ this.

    Returns:
        Indices of the kept regions, in order.
    """
    k = len(member)
    if k == 0:
        return np.zeros(0, np.int64)
    # All pairwise intersections as one sparse product: regions are small sets of atoms, and
    # the product only visits pairs that share an atom, so the cost follows the overlaps, not
    # K² · A. Whole-number pixel counts below 2**24 add exactly in float32.
    rows = sparse.csr_matrix(member, dtype=np.float32)
    weights = atom_area.astype(np.float32)
    area = np.asarray(rows @ weights).ravel()
    inter = (rows.multiply(weights[None, :]).tocsr() @ rows.T).tocoo()
    a, b, v = inter.row, inter.col, inter.data
    upper = a < b
    a, b, v = a[upper], b[upper], v[upper]
    hit = v >= threshold * (area[a] + area[b] - v)
    better, worse = a[hit], b[hit]
    order = np.lexsort((worse, better))
    better, worse = better[order], worse[order]
    suppressed = np.zeros(k, bool)
    if len(better):
        starts = np.flatnonzero(np.r_[True, better[1:] != better[:-1]])
        ends = np.append(starts[1:], len(better))
        # In rank order of the better region, whose own fate is final by the time it is
        # reached.
        for s, e in zip(starts, ends):
            if not suppressed[better[s]]:
                suppressed[worse[s:e]] = True
    return np.flatnonzero(~suppressed)
