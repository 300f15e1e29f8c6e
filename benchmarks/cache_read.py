"""What reading a feature cache from disk costs a training step (``engine/feature_cache.py``).

For each cache given (the name a run keeps under ``RUN/cache/``, without suffix), reads every
sample's maps three times through :class:`~wiseseg.engine.feature_cache.DiskItems` (the
operating system's file cache warm after the first pass) and reports the last pass: seconds
for all samples and milliseconds per sample, against the file's size.

usage: python benchmarks/cache_read.py RUN/cache/segmenter_features_<hash> [...] [--out FILE]
Writes benchmarks/results/cache_read.json (or FILE) and prints one line per cache.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import torch

from wiseseg.engine.checkpoint import load_checkpoint
from wiseseg.engine.feature_cache import DiskItems
from wiseseg.io import atomic_write_json


def measure(name: str, repeats: int = 3) -> dict:
    index = load_checkpoint(f"{name}.index", "feature cache index")
    rows = {}
    for key in ("plain", "flipped"):
        if not index.get(key):
            continue
        items = DiskItems(Path(f"{name}.features"), index[key])
        for _ in range(repeats):
            t = time.perf_counter()
            for i in range(len(items)):
                items[i]
            seconds = time.perf_counter() - t
        rows[key] = {"samples": len(items), "seconds_all": round(seconds, 4),
                     "ms_per_sample": round(1e3 * seconds / max(len(items), 1), 4)}
    return {"cache": name, "bytes": Path(f"{name}.features").stat().st_size, **rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("caches", nargs="+")
    ap.add_argument("--out", default="benchmarks/results/cache_read.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = [measure(c) for c in args.caches]
    for r in rows:
        print(f"{r['cache']}: {r['bytes'] / 2**20:.0f} MiB, " + ", ".join(
            f"{k} {v['samples']} samples in {v['seconds_all']:.3f} s "
            f"({v['ms_per_sample']:.3f} ms each)" for k, v in r.items()
            if isinstance(v, dict)))
    atomic_write_json(args.out, {"commit": commit, "rows": rows}, indent=1)


if __name__ == "__main__":
    main()
