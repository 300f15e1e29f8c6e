"""Seconds per training image of each preset's classifier and Mask R-CNN on this machine
(random weights and synthetic images at the preset's input size: only the compute is timed),
to tell how long a preset's schedule takes here.

usage: python benchmarks/step_time.py [--presets cpu paper] [--steps 3]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import torch

from wiseseg import api
from wiseseg.classifier.model_io import build_peakcam
from wiseseg.segmenter.model_io import build_segmenter


def _time(model: torch.nn.Module, loss_fn, steps: int) -> float:
    """Seconds per optimisation step of ``loss_fn(model)`` (after one warm-up step)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        opt.zero_grad()
        loss_fn(model).backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _cls_loss(model, x, y):
    return model(x, y)["loss"]


def _seg_loss(model, imgs, targets):
    return sum(model(imgs, targets).values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["cpu", "paper"])
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda: {torch.cuda.is_available()}\n")
    print("| preset | stage | input | batch | s / image | schedule | est. time here |")
    print("|---|---|---|---|---|---|---|")
    for name in args.presets:
        cfg = api.load_config(name, ["classifier.pretrained=none", "segmenter.pretrained=none"])
        c = cfg["classifier"]
        x = torch.rand(c["batch_size"], 3, c["input_size"], c["input_size"])
        y = torch.zeros(c["batch_size"], 20)
        y[:, 0] = 1
        s = _time(build_peakcam(c, 20).train(), partial(_cls_loss, x=x, y=y),
                  args.steps) / c["batch_size"]
        n = 10582 if name == "paper" else 600
        total = s * n * float(c["epochs"])
        print(f"| {name} | classifier | {c['input_size']}² | {c['batch_size']} | {s:.3f} | "
              f"{c['epochs']} epochs × {n} images | {_hours(total)} |")
        g = cfg["segmenter"]
        h, w = g["min_size"], min(g["max_size"], int(g["min_size"] * 4 / 3))
        imgs = [torch.rand(3, h, w) for _ in range(g["batch_size"])]
        box = torch.tensor([[w * 0.2, h * 0.2, w * 0.6, h * 0.7]])
        mask = torch.zeros(1, h, w, dtype=torch.uint8)
        mask[0, int(h * 0.2):int(h * 0.7), int(w * 0.2):int(w * 0.6)] = 1
        tg = [{"boxes": box, "labels": torch.tensor([1]), "masks": mask}] * g["batch_size"]
        s = _time(build_segmenter(g, 20).train(), partial(_seg_loss, imgs=imgs, targets=tg),
                  args.steps) / g["batch_size"]
        n_img = (int(g["steps"]) * g["batch_size"]) if int(g.get("steps") or 0) else \
            600 * float(g["epochs"])
        sched = f"{g['steps']} iterations" if int(g.get("steps") or 0) else \
            f"{g['epochs']} epochs × 600 images"
        print(f"| {name} | Mask R-CNN | {h}×{w} | {g['batch_size']} | {s:.3f} | {sched} | "
              f"{_hours(s * n_img)} |")


if __name__ == "__main__":
    main()
