"""`wiseseg run` on real photographs with instance masks, image-level labels derived from the
masks: Table 1 (PRM, WISE, WISE+Refine, Mask R-CNN (GT)), stage 1 (peaks), proposal and
pseudo-mask quality (Table 3), wall time and peak memory of each run.

Default settings only (the ``cpu`` preset with its data-following ``auto`` settings): nothing
is tuned on the validation images. Each run is a separate process, so its peak memory is its
own.

Data: COCO-layout folders made by the converters in ``benchmarks/data/`` (their README says
where to get each dataset and its licence; no image is in this repository), e.g.
``python benchmarks/data/pennfudan.py PennFudanPed /data/pennfudan``.

usage: python benchmarks/real.py DATA [DATA ...] [--seeds 0] [--preset cpu]
           [--out runs/bench-real] [--tag T] [key=value ...]
       python benchmarks/real.py --combine RESULT_JSON ... --tag T   (mean ± sd over the
           runs of result files written before → real_<T>.md)
Writes benchmarks/results/real_<name>[_<tag>].json (one per dataset) and prints markdown
tables. DATA/negatives, when it exists, is passed as --negatives.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from wiseseg.io import atomic_write_json, atomic_write_text

ROWS = ("PRM", "WISE", "WISE+Refine", "Mask R-CNN (GT)")
METRICS = ("mAP25", "mAP50", "mAP75", "ABO")


def fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """Mean ± sample standard deviation (ddof = 1) over seeds, or the one value."""
    a = scale * np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return "—"
    return (f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}" if a.size > 1
            else f"{a.mean():.{digits}f}")


def run_once(data: str, out: Path, preset: str, seed: int, overrides: list[str]) -> dict:
    """One `wiseseg run` in a child process; its wall time and peak RSS. ``DATA/negatives``
    (a folder of images with none of the classes), when present, is passed as --negatives."""
    neg = Path(data) / "negatives"
    cmd = [sys.executable, "-m", "wiseseg", "run", "--data", data, "--out", str(out),
           "--preset", preset, "--seed", str(seed), "-q",
           *(["--negatives", str(neg)] if neg.is_dir() else []), *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # max over children
    metrics = json.loads((out / "metrics.json").read_text())
    return {"seed": seed, "wall_seconds": round(wall, 1), "peak_rss_mb_upto_now": round(rss),
            "stderr_auto": [ln for ln in proc.stderr.splitlines()
                            if ln.startswith(("auto:", "warning"))], "metrics": metrics}


def per_class_ap50(metrics: dict) -> dict[str, dict[str, float]]:
    """Method → class → AP50 from a run's metrics.json (``methods``), or {} without them."""
    return {m: {c: v["AP50"] for c, v in e["per_class"].items()}
            for m, e in (metrics.get("methods") or {}).items() if e.get("per_class")}


def summarise(name: str, runs: list[dict]) -> str:
    lines = [f"### {name}\n", "| Method | " + " | ".join(METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for row in ROWS:
        vals = [r["metrics"]["results"].get(row) for r in runs]
        if all(vals):
            lines.append(f"| {row} | " + " | ".join(fmt([v[k] for v in vals])
                                                    for k in METRICS) + " |")
    res = [r["metrics"]["results"] for r in runs]
    if all("WISE" in x and "Mask R-CNN (GT)" in x for x in res):
        ratio = [x["WISE"]["mAP50"] / max(x["Mask R-CNN (GT)"]["mAP50"], 1e-9) for x in res]
        lines.append(f"\nWISE / Mask R-CNN (GT) mAP50: {fmt(ratio, 1.0, 2)}")
    pk = [r["metrics"]["peaks"].get("val") for r in runs if r["metrics"].get("peaks")]
    if pk and all(pk):
        lines.append(f"peaks (val): recall {fmt([p['peak_recall'] for p in pk])}, precision "
                     f"{fmt([p['peak_precision'] for p in pk])}")
    pr = [r["metrics"].get("proposals") for r in runs]
    if all(pr):
        keys = sorted(k for k in pr[0] if "recall" in k or k in ("abo", "auc"))
        lines.append("proposals (val): " + ", ".join(
            f"{k} {fmt([p[k] for p in pr])}" for k in keys if isinstance(pr[0][k], float)))
    pq = [r["metrics"].get("pseudo_quality") for r in runs]
    if all(pq):
        lines.append(f"Table 3 (train): pseudo masks mAP50 "
                     f"{fmt([q['pseudo_mAP50'] for q in pq])}, WISE on the same images "
                     f"{fmt([q.get('model_mAP50') for q in pq])}")
    per = [r["metrics"].get("per_class_AP50") or per_class_ap50(r["metrics"]) for r in runs]
    if per[0]:
        classes = next(iter(per[0].values()))
        lines += ["\nper-class AP50 (val)\n", "| Class | " + " | ".join(per[0]) + " |",
                  "|---|" + "---|" * len(per[0])]
        for c in classes:
            lines.append(f"| {c} | " + " | ".join(fmt([p[m][c] for p in per if m in p])
                                                  for m in per[0]) + " |")
    for w in runs[0]["metrics"].get("warnings") or []:
        lines.append(f"\n{w}")
    walls = [r["wall_seconds"] for r in runs]
    lines.append(f"wall time per run {np.mean(walls):.0f} s (max {max(walls):.0f}); peak RSS "
                 f"{max(r['peak_rss_mb_upto_now'] for r in runs)} MB")
    return "\n".join(lines)


def combine(files: list[str], tag: str) -> None:
    """The summary tables over the runs of several result files (their commits listed)."""
    loaded = [json.loads(Path(f).read_text()) for f in files]
    runs = [r for d in loaded for r in d["runs"]]
    names = sorted({Path(d["data"]).name for d in loaded})
    head = "\n".join(f"- {f}: commit {d['commit']}, seeds {d['seeds']}, overrides "
                     f"{d['overrides'] or 'none'}" for f, d in zip(files, loaded))
    text = (f"# {', '.join(names)}: {len(runs)} runs combined (± = sample sd, ddof 1)\n\n"
            f"{head}\n\n" + summarise(", ".join(names), runs) + "\n")
    out = Path(f"benchmarks/results/real_{tag}.md")
    atomic_write_text(out, text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="*", help="COCO- or VOC-layout dataset folders, then any "
                    "key=value overrides of the preset")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--out", default="runs/bench-real")
    ap.add_argument("--tag", default=None,
                    help="results go to real_<name>_<tag>.json (e.g. a calibrated variant)")
    ap.add_argument("--combine", nargs="+", metavar="RESULT_JSON", default=None,
                    help="no runs: the tables (mean ± sd over every run) of result files "
                         "written before, e.g. seeds run at different times; written to "
                         "real_<tag>.md")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine, args.tag or "combined")
        return
    if not args.data:
        ap.error("give a dataset folder (or --combine RESULT_JSON ...)")
    args.overrides = [a for a in args.data if "=" in a]
    args.data = [a for a in args.data if "=" not in a]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    for data in args.data:
        name = Path(data).name
        runs = []
        for seed in args.seeds:
            r = run_once(data, Path(args.out) / name / f"seed{seed}", args.preset, seed,
                         args.overrides)
            runs.append(r)
            res = r["metrics"]["results"]
            print(f"{name} seed {seed}: " + ", ".join(
                f"{k} {100 * v['mAP50']:.1f}" for k, v in res.items()) +
                f" ({r['wall_seconds']:.0f} s)", flush=True)
        stem = f"real_{name}" + (f"_{args.tag}" if args.tag else "")
        atomic_write_json(Path(f"benchmarks/results/{stem}.json"),
                          {"commit": commit, "data": data, "preset": args.preset,
                           "overrides": args.overrides, "seeds": args.seeds,
                           "runs": [{**r, "metrics": {
                               **{k: r["metrics"].get(k) for k in (
                                   "results", "peaks", "proposals", "pseudo_quality", "auto",
                                   "stages", "total_seconds", "environment", "warnings")},
                               "per_class_AP50": per_class_ap50(r["metrics"])}}
                               for r in runs]},
                          indent=1)
        print(f"\ncommit {commit}\n" + summarise(name, runs) + "\n", flush=True)


if __name__ == "__main__":
    main()
