"""Turning regions (sets of atoms of a label map) into full-resolution COCO RLEs.

The built-in generator works on a downscaled copy of large images, and its masks are unions of
label-map pieces ("atoms") upsampled by nearest neighbour. COCO RLE is the run-length code of
the mask read column by column, so it can be written from the small map directly: inside a
small column a mask is constant along each stretch of one atom, and every full-size column is
a copy of the small column it samples. :func:`encode_regions` does that for all masks at once;
the cost grows with the number of atom stretches and of runs, never with H×W, so a mask of a
12-megapixel image costs about as much as one of the small map.
"""

from __future__ import annotations

import numpy as np

from wiseseg import rle
from wiseseg.rle import RLE


def nearest_index(out_len: int, in_len: int) -> np.ndarray:
    """For each of ``out_len`` output positions, the input position nearest its centre."""
    idx = ((np.arange(out_len) + 0.5) * (in_len / out_len)).astype(np.int64)
    return np.minimum(idx, in_len - 1)


def _expand(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Concatenation of the ranges ``first[i] .. first[i] + count[i] - 1``."""
    offsets = np.repeat(np.cumsum(count) - count, count)
    return np.repeat(first, count) + (np.arange(int(count.sum())) - offsets)


def encode_regions(atoms: np.ndarray, member: np.ndarray, size: tuple[int, int]) -> list[RLE]:
    """RLEs of regions given as sets of atoms.

    Args:
        atoms: h×w int label map (ids 0..A-1) at working resolution.
        member: K×A bool; region k is the union of the atoms marked in row k.
        size: (H, W) ≥ (h, w) of the output masks; the atom map is upsampled to it by nearest
            neighbour (pixel centres aligned).

    Returns:
        K RLEs of size (H, W), equal to ``rle.encode(member[k][upsampled atoms])``.
    """
    h, w = atoms.shape
    big_h, big_w = size
    if big_h < h or big_w < w:
        raise ValueError(f"encode_regions: output {size} is smaller than the map {atoms.shape}")
    k = len(member)
    if k == 0:
        return []
    rows_per = np.bincount(nearest_index(big_h, h), minlength=h)
    cols = nearest_index(big_w, w)

    # Stretches of one atom inside a small column, with their length in full-size rows.
    seq = np.ascontiguousarray(atoms.T).ravel()
    start = np.ones(len(seq), bool)
    start[1:] = seq[1:] != seq[:-1]
    start[::h] = True
    where = np.flatnonzero(start)
    s_atom = seq[where]
    s_col_start = where % h == 0
    # full-size rows of each stretch: differences of the cumulative rows at stretch starts
    cum_rows = np.concatenate(([0], np.cumsum(np.tile(rows_per, w))))
    s_len = np.diff(cum_rows[np.append(where, len(seq))])
    n_s = len(where)

    # Per mask, join neighbouring stretches of equal value within a column.
    val = member[:, s_atom]
    brk = np.empty_like(val)
    brk[:, 0] = True
    np.not_equal(val[:, 1:], val[:, :-1], out=brk[:, 1:])
    brk |= s_col_start
    flat_brk = np.flatnonzero(brk.ravel())
    r_val = val.ravel()[flat_brk]
    # A run's length is the rows of its stretches: a difference of cumulative stretch lengths.
    # Every mask's row of stretches starts a run, so a run ends where the next one starts or
    # at the end of its mask's row (read off without tiling the stretches K times).
    cum_len = np.concatenate(([0], np.cumsum(s_len)))
    local = flat_brk % n_s
    row_start = flat_brk - local
    end = np.append(flat_brk[1:], k * n_s) - row_start
    r_len = cum_len[end] - cum_len[local]
    # Runs are numbered mask by mask, column by column: the first run of each (mask, column).
    col_of_run = np.cumsum(s_col_start)[flat_brk % n_s] - 1 + (flat_brk // n_s) * w
    col_first = np.searchsorted(col_of_run, np.arange(k * w))
    col_runs = np.diff(np.append(col_first, len(r_val)))

    # Every full-size column repeats the runs of the small column it samples.
    which = (np.arange(k)[:, None] * w + cols[None, :]).ravel()
    idx = _expand(col_first[which], col_runs[which])
    seq_val, seq_len = r_val[idx], r_len[idx]
    per_mask = col_runs[which].reshape(k, big_w).sum(axis=1)
    mask_start = np.zeros(len(idx), bool)
    mask_start[np.cumsum(per_mask) - per_mask] = True
    joined = mask_start.copy()
    joined[1:] |= seq_val[1:] != seq_val[:-1]
    pos = np.flatnonzero(joined)
    counts = np.add.reduceat(seq_len, pos)
    values = seq_val[pos]
    owner = np.cumsum(mask_start)[pos] - 1
    bounds = np.searchsorted(owner, np.arange(k + 1))

    out = []
    for i in range(k):
        c = counts[bounds[i]:bounds[i + 1]].tolist()
        if values[bounds[i]]:  # COCO RLE starts with a (possibly empty) run of zeros
            c.insert(0, 0)
        out.append(rle.normalize({"size": [big_h, big_w], "counts": c}))
    return out
