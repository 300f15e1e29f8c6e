"""Seconds per training image of each preset's classifier and Mask R-CNN on this machine
(random weights and synthetic images at the preset's input size: only the compute is timed),
to tell how long a preset's schedule takes here; and seconds per epoch of the real training
code of the ``cpu`` preset on the built-in data, with and without the cached backbone
features (``*.cache_features``), including the one-off cost of computing the cache.

usage: python benchmarks/step_time.py [--presets cpu paper] [--steps 3] [--epoch-steps 30]
Prints markdown tables; the per-epoch table is also written to
benchmarks/results/step_time.json.

       python benchmarks/step_time.py --segmenter-sizes 128 512 [--threads 1] [--steps 5]
                                      [--repeats 5]
times the Mask R-CNN training step on cached features for each of ``STEP_VARIANTS``
(torchvision's modules as before issue 18, the sparse RoIAlign backward, the exact CPU
shortcuts, the allocator setting), alternately and each in a fresh process, and writes
step_time.json's ``segmenter_step_<threads>_threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
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


def _step_setup(size: int, variant: dict, objects: int = 3):
    """The benchmark's model, optimiser and one batch (see :func:`segmenter_step`); returns
    ``(model, step function)``."""
    from wiseseg.models.maskrcnn import MaskRCNNOnFeatures, body_features, fixed_levels

    torch.manual_seed(0)
    cfg = api.load_config("cpu", [f"segmenter.min_size={size}", f"segmenter.max_size={size}",
                                  "segmenter.backbone=efficientnet_lite0",
                                  "segmenter.anchor_sizes=[16,32,64,128,256]",
                                  "segmenter.pretrained=none",
                                  # the whole body fixed: every level read from the cache
                                  "segmenter.frozen_stages=4"])["segmenter"]
    cfg.update(variant)
    model = build_segmenter(cfg, 5).train()
    images = [torch.rand(3, size, size) for _ in range(4)]
    with torch.no_grad():  # the levels training reads from a cache (all, when the body is fixed)
        feats = body_features(model, images, levels=fixed_levels(model))
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
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        torch.manual_seed(1)
        opt.zero_grad()
        sum(net(feats, [(size, size)] * 4, targets).values()).backward()
        opt.step()

    return model, step


def step_profile(size: int, variant: dict, steps: int = 3, top: int = 25) -> dict:
    """Where a step's time goes: torch.profiler's operators by own time (grouped by input
    shapes), their share, and the share of convolutions and matrix products; and the
    fraction of each FPN level's positions that receive a gradient (what the sparse
    backward of :class:`~wiseseg.models.sparse_conv.SparseGradConv2d` skips)."""
    from torch.profiler import ProfilerActivity, profile

    model, step = _step_setup(size, variant)
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    gemm = ("aten::convolution_backward", "aten::mkldnn_convolution", "aten::mm",
            "aten::addmm", "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward",
            "aten::_convolution", "aten::slow_conv_transpose2d")
    by_name: dict[str, float] = {}
    for e in events:
        by_name[e.key] = by_name.get(e.key, 0.0) + e.self_cpu_time_total
    reached: dict[str, float] = {}
    hooks = []
    for i, block in enumerate(model.backbone.fpn.layer_blocks):
        def keep(mod, inp, out, level=str(i)):
            out.register_hook(lambda g: reached.__setitem__(
                level, round(float((g != 0).any(1).float().mean()), 3)))
        hooks.append(block.register_forward_hook(keep))
    step()
    for h in hooks:
        h.remove()
    return {
        "profiled_seconds_per_step": round(total / 1e6 / steps, 4),
        "convolution_and_matmul_share": round(sum(
            v for k, v in by_name.items() if k in gemm) / total, 3),
        "top_operators": [{"op": k, "share": round(v / total, 3)} for k, v in sorted(
            by_name.items(), key=lambda kv: -kv[1])[:top]],
        "top_by_shape": [{"op": e.key, "shapes": str(e.input_shapes)[:160],
                          "calls_per_step": e.count // steps,
                          "share": round(e.self_cpu_time_total / total, 3)}
                         for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]],
        "fpn_positions_with_gradient": reached,
    }


def segmenter_step(size: int, steps: int, variant: dict, objects: int = 3
                   ) -> tuple[float, float]:
    """(wall, CPU) seconds per training step of the ``cpu`` preset's Mask R-CNN on cached
    body features (as WISE and the reference train): batch of 4 random ``size``² images,
    ``objects`` squares of side ``size``/6 each, settings ``variant`` applied to the
    segmenter section. The RPN's and RoI heads' random draws are seeded per step, so every
    variant trains on the same samples."""
    _, step = _step_setup(size, variant, objects)
    step()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return (time.perf_counter() - w0) / steps, (time.process_time() - c0) / steps


#: Mask R-CNN step variants: (name, segmenter settings, wiseseg.allocator on); the first is
#: the code before the issue-18 work (torchvision's modules, glibc's default allocator).
STEP_VARIANTS = (
    ("torchvision", {"roi_align_backward": "torchvision", "cpu_shortcuts": False}, False),
    ("roi_align_backward=sparse", {"roi_align_backward": "sparse", "cpu_shortcuts": False},
     False),
    ("sparse + cpu_shortcuts", {"roi_align_backward": "sparse", "cpu_shortcuts": True}, False),
    ("torchvision + keep_freed_memory",
     {"roi_align_backward": "torchvision", "cpu_shortcuts": False}, True),
    ("sparse + cpu_shortcuts + keep_freed_memory",
     {"roi_align_backward": "sparse", "cpu_shortcuts": True}, True),
)


def _step_in_child(size: int, steps: int, index: int, threads: int | None) -> dict:
    """One variant timed in a fresh process (the allocator setting is per process and
    cannot be undone; a fresh process also starts every variant from the same heap)."""
    env = dict(os.environ, WISESEG_KEEP_FREED_MEMORY="1" if STEP_VARIANTS[index][2] else "0")
    cmd = [sys.executable, __file__, "--child-step", str(size), str(steps), str(index)]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def step_table(sizes: list[int], steps: int, repeats: int, threads: int | None) -> list[dict]:
    """Variants timed alternately (``repeats`` rounds, each variant in its own process), so
    that load changes hit all alike; medians of wall-clock and of CPU seconds per step."""
    rows = []
    print(f"\nMask R-CNN training step on cached features, batch 4, "
          f"{threads or torch.get_num_threads()} threads, {steps} steps × {repeats} "
          f"alternating rounds\n")
    print("| size | variant | wall s / step (median) | speed-up | CPU s / step (median) | "
          "speed-up |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        wall: dict[str, list[float]] = {name: [] for name, _, _ in STEP_VARIANTS}
        cpu: dict[str, list[float]] = {name: [] for name, _, _ in STEP_VARIANTS}
        for _ in range(repeats):
            for index, (name, _, _) in enumerate(STEP_VARIANTS):
                r = _step_in_child(size, steps, index, threads)
                wall[name].append(r["wall"])
                cpu[name].append(r["cpu"])
        ref = STEP_VARIANTS[0][0]
        w_ref, c_ref = statistics.median(wall[ref]), statistics.median(cpu[ref])
        for name, variant, keep in STEP_VARIANTS:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            rows.append({"size": size, "variant": name, "settings": variant,
                         "keep_freed_memory": keep, "wall_seconds_per_step": round(w, 4),
                         "cpu_seconds_per_step": round(c, 4),
                         "wall_all": [round(t, 4) for t in wall[name]],
                         "cpu_all": [round(t, 4) for t in cpu[name]],
                         "wall_speedup": round(w_ref / w, 2), "cpu_speedup": round(c_ref / c, 2)})
            print(f"| {size} | {name} | {w:.3f} | {w_ref / w:.2f}× | {c:.3f} | "
                  f"{c_ref / c:.2f}× |", flush=True)
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
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of the timed step (default: torch's)")
    ap.add_argument("--child-step", type=int, nargs=3, metavar=("SIZE", "STEPS", "VARIANT"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true",
                    help="with --segmenter-sizes: profile the first and last variant instead "
                         "and write benchmarks/results/step_profile.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child_step:
        size, steps, index = args.child_step
        if STEP_VARIANTS[index][2]:
            from wiseseg.allocator import keep_freed_memory

            keep_freed_memory()
        w, c = segmenter_step(size, steps, STEP_VARIANTS[index][1])
        print(json.dumps({"wall": w, "cpu": c}))
        return
    if args.segmenter_sizes and args.profile:
        out = {"commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True).stdout.strip(),
               "threads": torch.get_num_threads(),
               "load_before": [round(v, 2) for v in os.getloadavg()],
               "note": "torch.profiler self CPU time (wall time inside each operator) over 3 "
                       "steps; shares are what compares across a shared machine",
               "profiles": []}
        for size in args.segmenter_sizes:
            for name, variant, _keep in (STEP_VARIANTS[0], STEP_VARIANTS[-1]):
                out["profiles"].append({"size": size, "variant": name,
                                        **step_profile(size, variant)})
                print(f"profiled {size} px, {name}", flush=True)
        out["load_after"] = [round(v, 2) for v in os.getloadavg()]
        atomic_write_json(Path("benchmarks/results/step_profile.json"), out, indent=1)
        return
    if args.segmenter_sizes:
        path = Path("benchmarks/results/step_time.json")
        old = json.loads(path.read_text()) if path.is_file() else {}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        key = f"segmenter_step_{args.threads or torch.get_num_threads()}_threads"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"],
                               capture_output=True, text=True).stdout.strip() != ""
        old[key] = {
            "commit": commit, "uncommitted_src_changes": dirty,
            "threads": args.threads or torch.get_num_threads(),
            "steps": args.steps, "repeats": args.repeats,
            "load_before": [round(v, 2) for v in os.getloadavg()],
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "note": "shared 2-core machine: variants alternate round by round, each in a "
                    "fresh process; medians compared. CPU seconds (user + system of the "
                    "process) are less disturbed by other jobs than wall seconds at one "
                    "thread; at two threads OpenMP's waiting counts as CPU time too",
            "rows": step_table(args.segmenter_sizes, args.steps, args.repeats, args.threads)}
        old[key]["load_after"] = [round(v, 2) for v in os.getloadavg()]
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
        cfg, _ = resolve_auto(cfg, api.open_dataset(args.data, progress=False))  # cpu: auto
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
