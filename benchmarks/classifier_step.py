"""Seconds per stage-1 training step on cached features, for classifier variants.

Each variant is the ``cpu`` preset's classifier (EfficientNet-Lite2 at 384 px unless
overridden) with overrides; the step is the one training runs on its feature cache
(:func:`wiseseg.classifier.train.cache_level`): the fixed backbone's ``feature`` map, or a
lower level's map when the stages above it train. Batch 16, random images and labels,
AdamW; the median of ``--steps`` timed steps after two warm-up steps, and the cached map's
size per image (what the feature cache holds, float16 on disk).

usage: python benchmarks/classifier_step.py [--steps 5] [--variants "" "k=v k=v" ...]
Writes benchmarks/results/classifier_step.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from wiseseg.classifier.model_io import build_peakcam
from wiseseg.classifier.train import cache_level
from wiseseg.config import apply_overrides, load_preset
from wiseseg.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
BASE = ["classifier.backbone=efficientnet_lite2", "classifier.input_size=384",
        "classifier.cam_geometry=uniform"]
VARIANTS = ["",
            "classifier.head_channels=[]",
            "classifier.feature=c4+c5",
            "classifier.train_backbone=true classifier.frozen_stages=3 classifier.feature=c4+c5",
            "classifier.train_backbone=true classifier.frozen_stages=2"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=VARIANTS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows = []
    for variant in args.variants:
        cfg = apply_overrides(load_preset("cpu"), [*BASE, *shlex.split(variant)])["classifier"]
        model = build_peakcam(cfg, 20, pretrained=False).train()
        cached, level = cache_level(model, cfg)
        size = int(cfg["input_size"])
        x = torch.rand(16, 3, size, size)
        with torch.no_grad():
            feats = model.lower_features(x, level) if level else model.backbone_features(x)
        labels = (torch.rand(16, 20) > 0.85).float()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-3)
        times = []
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            out = model(labels=labels, features=feats, features_level=level)
            out["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - t0)
        rows.append({"variant": variant or "(preset)", "cached": cached,
                     "cache_level": level or cfg["feature"],
                     "map_per_image": list(feats.shape[1:]),
                     "cache_mb_per_image_fp16": round(feats[0].numel() * 2 / 2**20, 3),
                     "step_seconds": float(np.median(times)),
                     "trainable_params": sum(p.numel() for p in model.parameters()
                                             if p.requires_grad)})
        print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    atomic_write_json(ROOT / "benchmarks" / "results" / "classifier_step.json",
                      {"commit": commit, "base": BASE, "batch": 16, "rows": rows}, indent=1)
    base = rows[0]["step_seconds"]
    print(f"\ncommit {commit}; batch 16, {args.steps} steps (median)\n\n"
          "| variant | cache holds | per image (fp16) | step s | × the preset | trained params |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['cache_level']} {r['map_per_image']} | "
              f"{r['cache_mb_per_image_fp16']} MB | {r['step_seconds']:.3f} | "
              f"{r['step_seconds'] / base:.1f} | {r['trainable_params']:,} |")


if __name__ == "__main__":
    main()
