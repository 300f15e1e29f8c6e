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
        key = _consecutive(key * (int(lab.max()) + 1) + lab.ravel())
    atoms = key.reshape(label_maps[0].shape).astype(np.int32)
    n_atoms = int(key.max()) + 1 if key.size else 0
    out = []
    for lab in label_maps:
        # a label map is constant on an atom, so every pixel of it writes the same label
        of_atom = np.empty(n_atoms, lab.dtype)
        of_atom[key] = lab.ravel()
        out.append(of_atom)
    return atoms, out


def _consecutive(key: np.ndarray) -> np.ndarray:
    """``key``'s values renumbered 0..n-1 in increasing order (``np.unique``'s inverse), so
    that combining the next label map never overflows. A lookup table when the values are
    few enough for one (the usual case: a few million at most), else a sort."""
    top = int(key.max()) if key.size else 0
    if top >= 8 * key.size + 1024:
        return np.unique(key, return_inverse=True)[1].ravel().astype(np.int64)
    present = np.zeros(top + 1, bool)
    present[key] = True
    return (np.cumsum(present) - 1)[key]


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
    rows = sparse.csr_matrix(member, dtype=np.float32)
    # Whole-number pixel counts below 2**24 add exactly in float32.
    weights = atom_area.astype(np.float32)
    area = np.asarray(rows @ weights).ravel()
    weighted = rows.multiply(weights[None, :]).tocsr()
    # IoU ≥ t needs min(area) / max(area) ≥ t. Regions are binned by log area with bins
    # log(1/t) wide, so such pairs lie in one bin or two neighbouring ones, and the
    # intersections are sparse products bin by bin: they visit only pairs of similar size
    # that share an atom. (One product over all regions costs Σ_atoms (regions holding
    # it)², which explodes with the many large regions of the upper hierarchy levels.)
    width = -np.log(threshold) if threshold < 1 else 1e-6
    bins = np.floor(np.log(np.maximum(area, 1.0)) / width).astype(np.int64)
    found_a, found_b = [], []
    for b in np.unique(bins):
        here = np.flatnonzero(bins == b)
        near = np.flatnonzero((bins == b) | (bins == b + 1))
        inter = (weighted[here] @ rows[near].T).tocoo()
        i, j, v = here[inter.row], near[inter.col], inter.data
        # A pair within bin b comes twice (i, j and j, i), a pair across bins b and b+1
        # once (from the lower bin).
        once = np.where(bins[j] == b, i < j, True)
        hit = once & (v >= threshold * (area[i] + area[j] - v))
        found_a.append(np.minimum(i[hit], j[hit]))
        found_b.append(np.maximum(i[hit], j[hit]))
    better = np.concatenate(found_a)
    worse = np.concatenate(found_b)
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
