"""Turning region memberships into full-resolution COCO RLEs.

The built-in generator works on a downscaled copy of large images. Its masks are label-map
lookups, upsampled by nearest neighbour; :func:`upsampled_rle` writes the run-length code of
the upsampled mask straight from the small one, so a mask of a 12-megapixel image costs the
size of the small mask plus the number of runs, never H×W.
"""

from __future__ import annotations

import numpy as np

from wiseseg import rle
from wiseseg.rle import RLE

#: Bytes of mask pixels decoded at once when encoding at full size.
_CHUNK_BYTES = 32 * 1024 * 1024


def nearest_index(out_len: int, in_len: int) -> np.ndarray:
    """For each of ``out_len`` output positions, the input position nearest its centre."""
    idx = ((np.arange(out_len) + 0.5) * (in_len / out_len)).astype(np.int64)
    return np.minimum(idx, in_len - 1)


def upsampled_rle(mask: np.ndarray, size: tuple[int, int]) -> RLE:
    """COCO RLE of ``mask`` upsampled to ``size`` by nearest neighbour.

    Args:
        mask: h×w bool.
        size: (H, W) with H ≥ h and W ≥ w.

    Returns:
        The RLE equal to ``rle.encode(mask[nearest rows][:, nearest cols])``, computed without
        building the H×W array.
    """
    h, w = mask.shape
    big_h, big_w = size
    if big_h < h or big_w < w:
        raise ValueError(f"upsampled_rle: target {size} is smaller than the mask {mask.shape}")
    rows_per = np.bincount(nearest_index(big_h, h), minlength=h)
    cols = nearest_index(big_w, w)

    # Runs inside each small column (COCO RLE is column-major), lengths in full-size rows.
    vals = np.ascontiguousarray(mask.T).ravel()
    start = np.ones(len(vals), bool)
    start[1:] = vals[1:] != vals[:-1]
    start[::h] = True
    run_val = vals[start]
    run_len = np.add.reduceat(np.tile(rows_per, w), np.flatnonzero(start))
    col_first = np.cumsum(start)[::h] - 1
    col_runs = np.diff(np.append(col_first, len(run_val)))

    # Every full-size column repeats the runs of its small column.
    per = col_runs[cols]
    offsets = np.repeat(np.cumsum(per) - per, per)
    idx = np.repeat(col_first[cols], per) + (np.arange(per.sum()) - offsets)
    seq_val, seq_len = run_val[idx], run_len[idx]
    joined = np.ones(len(seq_val), bool)
    joined[1:] = seq_val[1:] != seq_val[:-1]
    counts = np.add.reduceat(seq_len, np.flatnonzero(joined))
    if seq_val[0]:
        counts = np.concatenate([[0], counts])
    return rle.normalize({"size": [big_h, big_w], "counts": [int(c) for c in counts]})


def encode_regions(atoms: np.ndarray, member: np.ndarray, size: tuple[int, int]) -> list[RLE]:
    """RLEs of regions given as sets of atoms.

    Args:
        atoms: h×w int label map (ids 0..A-1) at working resolution.
        member: K×A bool; region k is the union of the atoms marked in row k.
        size: (H, W) of the output masks, ≥ (h, w); the atom map is upsampled by nearest
            neighbour when larger.

    Returns:
        K RLEs of size (H, W).
    """
    if tuple(atoms.shape) != tuple(size):
        return [upsampled_rle(m[atoms], size) for m in member]
    out: list[RLE] = []
    step = max(1, _CHUNK_BYTES // max(atoms.size, 1))
    for i in range(0, len(member), step):
        out += rle.encode_many(member[i:i + step][:, atoms])
    return out
