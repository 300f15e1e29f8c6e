"""Validation of compressed COCO RLE ``counts`` strings before they reach pycocotools.

pycocotools' C code trusts its input: with a truncated string ``rleFrString`` reads past the
end of the buffer, and with runs that do not add up to ``h × w`` ``rleIou`` and ``rleMerge``
loop forever (``decode`` writes out of bounds). Masks from files therefore have to be checked
first. The check re-implements the string decoding of ``rleFrString`` (maskApi.c) with numpy
over many strings at once, so tens of thousands of masks take well under a second.

The format: each run length is stored as 5-bit groups, least significant first, one character
``chr(48 + group)`` each; bit 0x20 of a group means "more groups follow" and bit 0x10 of a
run's last group is its sign. From the fourth run on (index m > 2) the stored value is the
difference to run m − 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Longest accepted run encoding: 6 groups hold 30 bits (runs up to 2**29 pixels, far beyond
#: any image the readers accept) and keep pycocotools' ``int`` shifts free of overflow.
MAX_GROUPS_PER_RUN = 6
#: Characters per batch: small enough that the temporary arrays stay in the CPU cache (measured
#: fastest among 2**13 .. 2**21).
_BATCH_CHARS = 1 << 15


def rle_counts_problems(counts: Sequence[str],
                        sizes: Sequence[tuple[int, int]]) -> list[str | None]:
    """Check compressed RLE count strings against their mask sizes.

    Args:
        counts: the ``counts`` strings (compressed COCO RLE).
        sizes: ``(height, width)`` of each mask.

    Returns:
        One entry per string: None when pycocotools can use it safely and it is canonical
        (only characters ``'0'``..``'o'``, no truncated run, no run longer than
        :data:`MAX_GROUPS_PER_RUN` characters, every run ≥ 0 and non-zero after the first,
        runs summing to ``height × width``), else a short description of the first problem.
    """
    if len(sizes) != len(counts):
        raise ValueError(f"{len(counts)} count strings but {len(sizes)} sizes")
    problems: list[str | None] = []
    start, chars = 0, 0
    for i, s in enumerate(counts):
        chars += len(s)
        if chars >= _BATCH_CHARS or i == len(counts) - 1:
            problems.extend(_check_batch(counts[start:i + 1], sizes[start:i + 1]))
            start, chars = i + 1, 0
    return problems


def _check_batch(counts: Sequence[str], sizes: Sequence[tuple[int, int]]) -> list[str | None]:
    n = len(counts)
    problems: list[str | None] = [None] * n

    def flag(strings: np.ndarray, message: str) -> None:
        for i in np.unique(strings).tolist():
            if problems[i] is None:
                problems[i] = message

    ascii_ok = [s.isascii() for s in counts]
    flag(np.flatnonzero(~np.asarray(ascii_ok)), "counts has a character outside '0'..'o'")
    texts = [s if ok else "" for s, ok in zip(counts, ascii_ok)]
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    flag(np.flatnonzero(lengths == 0), "counts is empty")
    string_end = np.cumsum(lengths)  # exclusive end of each string in the buffer
    buf = np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint8)
    if buf.size == 0:
        return problems
    bad_char = np.flatnonzero((buf < 48) | (buf > 111))
    flag(np.searchsorted(string_end, bad_char, side="right"),
         "counts has a character outside '0'..'o'")

    nonempty = np.flatnonzero(lengths > 0)
    last_char = string_end[nonempty] - 1
    ends = buf < 80  # a group without the 0x20 "more" bit ends its run
    flag(nonempty[~ends[last_char]], "counts is truncated (its last run is incomplete)")
    ends[last_char] = True  # a run never continues into the next string

    run_end = np.flatnonzero(ends)
    runs_per_string = np.diff(np.concatenate(([0], np.cumsum(ends)[string_end - 1])))
    runs_per_string[lengths == 0] = 0
    run_owner = np.repeat(np.arange(n), runs_per_string)
    first_run = np.cumsum(runs_per_string) - runs_per_string
    run_len = np.diff(run_end, prepend=-1)
    flag(run_owner[run_len > MAX_GROUPS_PER_RUN], "counts has a run length too long to be real")

    last = (buf[run_end].astype(np.int64) - 48) & 0x3F
    value = last & 0x1F
    multi = np.flatnonzero(run_len > 1)
    for j in range(1, MAX_GROUPS_PER_RUN):  # Horner from the last group down to the first
        multi = multi[run_len[multi] > j]
        if multi.size == 0:
            break
        group = (buf[run_end[multi] - j].astype(np.int64) - 48) & 0x1F
        value[multi] = (value[multi] << 5) | group
    sign = (last >> 4) & 1
    value -= sign << (5 * np.minimum(run_len, MAX_GROUPS_PER_RUN))

    # Undo the delta coding: runs 1, 3, 5, ... and runs 2, 4, 6, ... of a string are running
    # sums. Stride-2 sums over the whole batch, minus their value just before the string.
    starts = first_run[runs_per_string > 0]
    chained = value.copy()
    chained[starts] = 0
    total = np.empty_like(chained)
    total[0::2] = np.cumsum(chained[0::2])
    total[1::2] = np.cumsum(chained[1::2])
    before = first_run[run_owner] - 1
    before -= (np.arange(run_end.size) - before) & 1  # same parity as the run itself
    runs = total - np.concatenate(([0, 0], total))[before + 2]
    runs[starts] = value[starts]
    is_first = np.zeros(run_end.size, dtype=bool)
    is_first[starts] = True

    flag(run_owner[runs < 0], "counts decodes to a negative run length")
    flag(run_owner[(runs == 0) & ~is_first],
         "counts has an empty run after the first (not a canonical COCO RLE)")
    pixels = np.zeros(n, dtype=np.int64)
    has_runs = runs_per_string > 0
    pixels[has_runs] = np.add.reduceat(runs, first_run[has_runs])
    expected = np.array([h * w for h, w in sizes], dtype=np.int64)
    for i in np.flatnonzero(has_runs & (pixels != expected)).tolist():
        if problems[i] is None:
            h, w = sizes[i]
            problems[i] = (f"counts covers {int(pixels[i])} pixels but size {h}×{w} (h×w) "
                           f"has {h * w}")
    return problems
