"""What training the Mask R-CNN backbone's upper stages costs a step: ``frozen_stages`` 4
(the body fixed, c2–c5 cached) against 3 (c2–c4 cached, c5's stages run and train at every
step), on cached features of random weights and images, batch 4, three squares per image —
at the demo's size (Lite0, 128 px) and a photograph's (Lite2, 512 px). The two settings are
timed alternately (``--repeats`` rounds of ``--steps`` steps), medians of seconds per step.

usage: python benchmarks/upper_stages_step.py [--threads 1] [--steps 3] [--repeats 5]
Writes benchmarks/results/upper_stages_step.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import torch
from step_time import _step_setup  # benchmarks/, the script's folder

from wiseseg.io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
CASES = ((128, "efficientnet_lite0"), (512, "efficientnet_lite2"))


def step_function(size: int, frozen: int, backbone: str):
    """One training step of the ``cpu`` preset's Mask R-CNN (``frozen_stages=frozen``) on
    the cached fixed levels of a batch of 4 random ``size``² images
    (``step_time._step_setup``, three squares per image)."""
    return _step_setup(size, {"backbone": backbone, "frozen_stages": frozen})[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print("| size | backbone | frozen_stages 4 (s / step) | 3 (s / step) | ratio |\n"
          "|---|---|---|---|---|")
    for size, backbone in CASES:
        steps = {f: step_function(size, f, backbone) for f in (4, 3)}
        for s in steps.values():
            s()  # warm-up
        times: dict[int, list[float]] = {4: [], 3: []}
        for _ in range(args.repeats):
            for f, s in steps.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    s()
                times[f].append((time.perf_counter() - t0) / args.steps)
        med = {f: statistics.median(v) for f, v in times.items()}
        rows.append({"size": size, "backbone": backbone,
                     "seconds_per_step": {str(f): round(v, 4) for f, v in med.items()},
                     "all": {str(f): [round(t, 4) for t in v] for f, v in times.items()},
                     "ratio": round(med[3] / med[4], 2)})
        print(f"| {size} | {backbone} | {med[4]:.3f} | {med[3]:.3f} | "
              f"{med[3] / med[4]:.2f}× |", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    atomic_write_json(ROOT / "benchmarks" / "results" / "upper_stages_step.json",
                      {"commit": commit, "threads": args.threads, "steps": args.steps,
                       "repeats": args.repeats, "batch": 4, "rows": rows})


if __name__ == "__main__":
    main()
