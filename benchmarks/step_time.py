"""Seconds per training image of each preset's classifier and Mask R-CNN on this machine
(random weights and synthetic images at the preset's input size: only the compute is timed),
to tell how long a preset's schedule takes here; and seconds per epoch of the real training
code of the ``cpu`` preset on the built-in data, with and without the cached backbone
features (``*.cache_features``), including the one-off cost of computing the cache.

usage: python benchmarks/step_time.py [--presets cpu paper] [--steps 3] [--epoch-steps 30]
Prints markdown tables; the per-epoch table is also written to
benchmarks/results/step_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from wiseseg import api
from wiseseg.autoconfig import resolve_auto
from wiseseg.classifier.model_io import build_peakcam
from wiseseg.io import atomic_write_json
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


def _epoch_seconds(stage: str, cached: bool, steps: int, data: str,
                   overrides: tuple[str, ...] = ()) -> dict[str, float]:
    """Seconds per epoch of the ``cpu`` preset's real training of ``stage`` (``classifier`` or
    ``segmenter`` on true masks), timed over ``steps`` steps after the cache is built."""
    from wiseseg.classifier.train import train_classifier
    from wiseseg.engine.trainer import Trainer
    from wiseseg.segmenter.train import train_segmenter

    ds = api.open_dataset(data, progress=False)
    cfg = api.load_config("cpu", [f"{stage}.steps={steps}", f"{stage}.cache_features={cached}",
                                  f"{stage}.checkpoint_every=100000", *overrides])
    cfg, _ = resolve_auto(cfg, ds)
    cfg = cfg[stage]
    split = ds.weak("train")
    times: dict[str, float] = {}
    real_fit = Trainer.fit

    def timed_fit(self, resume=True):  # the loop alone: after model, data and cache set-up
        t0 = time.perf_counter()
        out = real_fit(self, resume)
        times["loop"] = time.perf_counter() - t0
        times["per_epoch_steps"] = self.schedule.steps_per_epoch
        return out

    Trainer.fit = timed_fit
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            if stage == "classifier":
                train_classifier(split, cfg, tmp, progress=False, resume=False)
            else:
                train_segmenter(list(split.records), dict(ds.ground_truth("train")),
                                ds.classes, cfg, tmp, masks="gt", progress=False,
                                resume=False)
            total = time.perf_counter() - t0
    finally:
        Trainer.fit = real_fit
    per_step = times["loop"] / steps
    size = cfg["input_size"] if stage == "classifier" else f"{cfg['min_size']}"
    return {"size": size, "seconds_per_step": per_step,
            "seconds_per_epoch": per_step * times["per_epoch_steps"],
            "setup_seconds": total - times["loop"]}


#: (stage, input size override) pairs of the per-epoch table: the preset's sizes, and the
#: classifier at 128 px / Mask R-CNN at 256 px for comparison.
EPOCH_RUNS = (("classifier", ()), ("classifier", ("classifier.input_size=128",)),
              ("segmenter", ()),
              ("segmenter", ("segmenter.min_size=256", "segmenter.max_size=256")))


def epoch_table(steps: int, data: str) -> list[dict]:
    rows = []
    print(f"\n`cpu` preset on `{data}` train, real training code, {torch.get_num_threads()} "
          f"threads, timed over {steps} steps\n")
    print("| stage | input | backbone features | s / step | s / epoch | set-up (incl. cache) |")
    print("|---|---|---|---|---|---|")
    for stage, overrides in EPOCH_RUNS:
        for cached in (False, True):
            r = _epoch_seconds(stage, cached, steps, data, overrides)
            size = r.pop("size")
            rows.append({"stage": stage, "input": size, "cached": cached,
                         **{k: round(v, 3) for k, v in r.items()}})
            print(f"| {stage} | {size} | {'cached' if cached else 'recomputed'} | "
                  f"{r['seconds_per_step']:.3f} | {r['seconds_per_epoch']:.1f} | "
                  f"{r['setup_seconds']:.1f} |", flush=True)
    return rows


def segmenter_step(size: int, steps: int, variant: dict, objects: int = 3) -> float:
    """Seconds per training step of the ``cpu`` preset's Mask R-CNN on cached body features
    (as WISE and the reference train): batch of 4 random ``size``² images, ``objects``
    squares of side ``size``/6 each, settings ``variant`` applied to the segmenter section."""
    from wiseseg.models.maskrcnn import MaskRCNNOnFeatures, body_features

    torch.manual_seed(0)
    cfg = api.load_config("cpu", [f"segmenter.min_size={size}", f"segmenter.max_size={size}",
                                  "segmenter.anchor_sizes=[16,32,64,128,256]",
                                  "segmenter.pretrained=none"])["segmenter"]
    cfg.update(variant)
    model = build_segmenter(cfg, 5).train()
    images = [torch.rand(3, size, size) for _ in range(4)]
    with torch.no_grad():
        feats = body_features(model, images)
    side = size // 6
    targets = []
    for _ in images:
        corners = torch.randint(0, size - side, (objects, 2))
        masks = torch.zeros(objects, size, size, dtype=torch.uint8)
        for k, (x, y) in enumerate(corners.tolist()):
            masks[k, y:y + side, x:x + side] = 1
        targets.append({"boxes": torch.cat([corners, corners + side], 1).float(),
                        "labels": torch.randint(1, 6, (objects,)), "masks": masks})
    net = MaskRCNNOnFeatures(model)
    return _time(net, lambda m: sum(m(feats, [(size, size)] * 4, targets).values()), steps)


#: Mask R-CNN step variants: (name, segmenter settings); the first is the reference.
STEP_VARIANTS = (("roi_align_backward=torchvision", {"roi_align_backward": "torchvision"}),
                 ("roi_align_backward=sparse", {"roi_align_backward": "sparse"}))


def step_table(sizes: list[int], steps: int, repeats: int) -> list[dict]:
    """Variants timed alternately (``repeats`` rounds), so that load changes hit all alike."""
    rows = []
    print(f"\nMask R-CNN training step on cached features, batch 4, "
          f"{torch.get_num_threads()} threads, {steps} steps × {repeats} alternating rounds\n")
    print("| size | variant | s / step (median) | speed-up |")
    print("|---|---|---|---|")
    for size in sizes:
        times: dict[str, list[float]] = {name: [] for name, _ in STEP_VARIANTS}
        for _ in range(repeats):
            for name, variant in STEP_VARIANTS:
                times[name].append(segmenter_step(size, steps, variant))
        ref = sorted(times[STEP_VARIANTS[0][0]])[repeats // 2]
        for name, _ in STEP_VARIANTS:
            med = sorted(times[name])[repeats // 2]
            rows.append({"size": size, "variant": name, "seconds_per_step": round(med, 4),
                         "all": [round(t, 4) for t in times[name]],
                         "speedup": round(ref / med, 2)})
            print(f"| {size} | {name} | {med:.3f} | {ref / med:.2f}× |", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="*", default=["cpu", "paper"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--epoch-steps", type=int, default=30,
                    help="steps timed per stage for the per-epoch table (0: skip it)")
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--segmenter-sizes", type=int, nargs="*", default=[],
                    help="time the Mask R-CNN step variants at these sizes, write them to "
                         "step_time.json's 'segmenter_step' and stop")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.segmenter_sizes:
        path = Path("benchmarks/results/step_time.json")
        old = json.loads(path.read_text()) if path.is_file() else {}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        old["segmenter_step"] = {
            "commit": commit, "threads": torch.get_num_threads(), "steps": args.steps,
            "load_before": [round(v, 2) for v in os.getloadavg()],
            "note": "shared 2-core machine: variants alternate, medians compared",
            "rows": step_table(args.segmenter_sizes, args.steps, args.repeats)}
        old["segmenter_step"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
        atomic_write_json(path, old, indent=2)
        return
    if args.epoch_steps > 0:
        rows = epoch_table(args.epoch_steps, args.data)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        atomic_write_json(Path("benchmarks/results/step_time.json"),
                          {"commit": commit, "data": args.data, "threads":
                           torch.get_num_threads(), "steps": args.epoch_steps, "rows": rows},
                          indent=2)
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
