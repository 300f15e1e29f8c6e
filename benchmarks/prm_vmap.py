"""Would one backward pass for several peaks (autograd's ``is_grads_batched``: vmap over the
backward, from the one retained forward pass) beat one backward per peak on a CPU?

usage: python benchmarks/prm_vmap.py RUN_DIR [--images 6] [--peaks 8] [--batch 1 4 8]
                                     [--threads 1] [--out FILE]

On the first ``--images`` validation images of a finished run, seeds ``--peaks`` CAM cells
(the strongest) per image and times their input gradients under PRM's excitation rule:
batch 1 with ``wiseseg.models.peak_response``'s own rule (what the PRM stage does), then
``--batch`` sizes with a vmap-able copy of the same rule (``generate_vmap_rule``) and
``torch.autograd.grad(..., is_grads_batched=True)``. Reports seconds per peak and the largest
difference of the maps from batch 1's (relative to the largest value). Writes
benchmarks/results/prm_vmap.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def vmappable_rule():
    """The excitation convolution of ``peak_response`` as a Function vmap can batch."""
    import wiseseg.models.peak_response as pr

    class Exc(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(x, weight, bias, stride, padding, dilation, groups, replicated=False):
            return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

        @staticmethod
        def setup_context(ctx, inputs, output):
            x, weight, _, stride, padding, dilation, groups, _ = inputs
            ctx.save_for_backward(x, weight)
            ctx.conf = (stride, padding, dilation, groups)
            ctx.in_size = tuple(x.shape[-2:])
            ctx.memo = None

        @staticmethod
        def backward(ctx, grad_out):
            x, weight = ctx.saved_tensors
            stride, padding, dilation, groups = ctx.conf
            if ctx.memo is None:
                fmt = torch.channels_last
                low = x.min()
                shifted = (x if bool(low == 0) else x - low).contiguous(memory_format=fmt)
                pos_w = weight.clamp(min=0).contiguous(memory_format=fmt)
                norm = F.conv2d(shifted, pos_w, None, stride, padding, dilation, groups).abs_()
                inv = (norm + pr._EPS).reciprocal_().masked_fill_(~(norm > pr._EPS), 0.0)
                ctx.memo = (shifted, pr._TransposedProduct(pos_w, ctx.in_size, norm.shape[-2:],
                                                           stride, padding, dilation, groups),
                            inv.contiguous(memory_format=fmt))
            shifted, transposed, inv = ctx.memo
            return (shifted * transposed(grad_out * inv),) + (None,) * 7

    return Exc


def time_maps(model, images, n_peaks: int, batch: int) -> tuple[float, list[torch.Tensor]]:
    import wiseseg.models.peak_response as pr

    seconds, maps = 0.0, []
    for x in images:
        bp = pr.PeakBackprop(model, x)
        cam = bp._cam
        top = cam[0].detach().reshape(-1).topk(n_peaks).indices
        seeds = torch.zeros((n_peaks, cam[0].numel()))
        seeds[torch.arange(n_peaks), top] = 1.0
        seeds = seeds.view((n_peaks,) + tuple(cam.shape))
        t = time.perf_counter()
        with torch.enable_grad():
            if batch == 1:
                g = torch.cat([torch.autograd.grad(cam, bp._x, seeds[k], retain_graph=True)[0]
                               for k in range(n_peaks)])
            else:
                g = torch.cat([torch.autograd.grad(cam, bp._x, seeds[s:s + batch],
                                                   retain_graph=True,
                                                   is_grads_batched=True)[0][:, 0]
                               for s in range(0, n_peaks, batch)])
        seconds += time.perf_counter() - t
        maps.append(g.sum(1))
    return seconds / (len(images) * n_peaks), maps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--peaks", type=int, default=8)
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prm_vmap.json")
    args = ap.parse_args(argv)

    import wiseseg.models.peak_response as pr
    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.config import load_config
    from wiseseg.data import open_dataset
    from wiseseg.data.images import load_image
    from wiseseg.data.transforms import resize_image, to_tensor

    torch.set_num_threads(args.threads)
    cfg = load_config(args.run_dir / "config.yaml")
    model, ccfg, _ = load_classifier(args.run_dir / "classifier" / "model.pt", "cpu")
    model.eval()
    ds = open_dataset(cfg["data"]["spec"], progress=False)
    size = int(ccfg["input_size"])
    recs = list(ds.records(cfg["data"]["val_split"]))[: args.images]
    images = [to_tensor(resize_image(load_image(r.path), (size, size))) for r in recs]

    base, ref = time_maps(model, images, args.peaks, 1)
    rows = [{"batch": 1, "rule": "peak_response (the PRM stage's)", "seconds_per_peak": base}]
    own = pr._ExcitationConv2d
    pr._ExcitationConv2d = vmappable_rule()
    try:
        for b in args.batch:
            s, maps = time_maps(model, images, args.peaks, b)
            diff = max(float((m - r).abs().max() / r.abs().max().clamp(min=1e-30))
                       for m, r in zip(maps, ref))
            rows.append({"batch": b, "rule": "vmap (is_grads_batched)", "seconds_per_peak": s,
                         "vs_batch_1": s / base, "max_relative_difference": diff})
    finally:
        pr._ExcitationConv2d = own
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    out = {"commit": commit, "run_dir": str(args.run_dir), "input_size": size,
           "images": len(images), "peaks_per_image": args.peaks, "threads": args.threads,
           "rows": rows}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        print(f"batch {r['batch']:>2} {r['rule']}: {r['seconds_per_peak']:.4f} s / peak"
              + (f" ({r['vs_batch_1']:.2f}× batch 1's, max rel. diff "
                 f"{r['max_relative_difference']:.1e})" if "vs_batch_1" in r else ""))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
