"""Seconds of the PRM baseline stage on a finished run's classifier and proposals.

usage: python benchmarks/prm_speed.py RUN_DIR [--images 40] [--threads 2] [--batch 1 4]
                                      [--workers 1 2] [--profile] [--label after]
                                      [--predictions OUT.json] [--same-as OTHER.json]

Times :func:`wiseseg.inference.prm_baseline.prm_baseline` (the PRM stage's work, less writing
its JSON) on the first ``--images`` images of the run's validation split, counts the peaks
backpropagated, and extrapolates to the whole split. ``--batch`` times each peak batch size
(``peak_batch`` of the code under test; code without it is timed once), and ``--workers``
each number of processes sharing the images (``prm.workers``). ``--profile`` adds
the top cProfile entries. Each call appends one entry per batch size to
benchmarks/results/prm_speed.json (``--result``), so runs of two versions of the code (e.g.
``PYTHONPATH=<old checkout>/src``) sit side by side; the machine is shared, so compare
entries measured back to back at similar load averages (recorded); CPU seconds (user +
system of the process) are recorded too, less disturbed by other jobs than wall seconds.
``--predictions`` writes the predictions; ``--same-as`` checks them against another run's
file (same images, classes, masks; scores to 1e-5 relative) and records the outcome.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import itertools
import json
import os
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--images", type=int, default=40, help="first N val images (0: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--batch", type=int, nargs="*", default=[1])
    ap.add_argument("--workers", type=int, nargs="*", default=[1],
                    help="prm.workers values to time (processes of one thread each; peaks are "
                         "counted in this process only, so with workers > 1 they read 0)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--label", default="")
    ap.add_argument("--predictions", type=Path, default=None,
                    help="write the predictions here (to compare versions with --same-as)")
    ap.add_argument("--same-as", type=Path, default=None,
                    help="predictions of another version on the same images: must be equal")
    ap.add_argument("--result", type=Path,
                    default=ROOT / "benchmarks" / "results" / "prm_speed.json")
    args = ap.parse_args(argv)

    import torch

    import wiseseg
    import wiseseg.inference.prm_baseline as prm
    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.config import load_config
    from wiseseg.data import open_dataset
    from wiseseg.proposals import ProposalStore

    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # as `wiseseg run` does (code before it had no such setting)
        from wiseseg.allocator import keep_freed_memory
        kept = keep_freed_memory()
    except ImportError:
        kept = None
    cfg = load_config(args.run_dir / "config.yaml")
    ds = open_dataset(cfg["data"]["spec"], progress=False)
    split = cfg["data"]["val_split"]
    records = list(ds.records(split))
    n_split = len(records)
    if args.images:
        records = records[: args.images]
    model, ccfg, _ = load_classifier(args.run_dir / "classifier" / "model.pt", "cpu")
    store = ProposalStore.open(args.run_dir / "proposals")
    settings = prm.RetrievalSettings(**{k: v for k, v in cfg["prm"].items() if k != "workers"})
    has_batch = "peak_batch" in inspect.signature(prm.prm_baseline).parameters

    peaks_seen = [0]
    original = prm.response_maps_at

    def counting(model, image, peaks, *a, **k):
        peaks_seen[0] += len(peaks)
        return original(model, image, peaks, *a, **k)

    prm.response_maps_at = counting
    entries = []
    has_workers = "workers" in inspect.signature(prm.prm_baseline).parameters
    for batch, workers in itertools.product(args.batch if has_batch else [None],
                                            args.workers if has_workers else [None]):
        kw = {"peak_batch": batch} if has_batch else {}
        if workers is not None:
            kw.update(workers=workers, model_path=args.run_dir / "classifier" / "model.pt")
        peaks_seen[0] = 0
        load_before = [round(v, 2) for v in os.getloadavg()]
        prof = cProfile.Profile() if args.profile else None
        t0, c0 = time.perf_counter(), time.process_time()
        if prof:
            prof.enable()
        preds = prm.prm_baseline(model, records, store, ccfg["input_size"], cfg["peaks"],
                                 ds.category_ids, settings, device="cpu", progress=False, **kw)
        if prof:
            prof.disable()
        secs = time.perf_counter() - t0
        cpu = time.process_time() - c0
        entry = {
            "label": args.label, "wiseseg": str(Path(wiseseg.__file__).parent),
            "run_dir": str(args.run_dir), "images": len(records), "split_images": n_split,
            "input_size": ccfg["input_size"], "peaks": peaks_seen[0],
            "predictions": len(preds), "peak_batch": batch, "workers": workers,
            "torch_threads": torch.get_num_threads(), "seconds": round(secs, 2),
            "cpu_seconds": round(cpu, 2), "keep_freed_memory": kept,
            "seconds_per_image": round(secs / max(1, len(records)), 4),
            "seconds_per_peak": round(secs / max(1, peaks_seen[0]), 4),
            "split_seconds_extrapolated": round(secs / max(1, len(records)) * n_split, 1),
            "load_before": load_before, "load_after": [round(v, 2) for v in os.getloadavg()],
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if prof:
            raw = pstats.Stats(prof).stats  # type: ignore[attr-defined]
            top = sorted(raw.items(), key=lambda kv: -kv[1][2])[:25]
            entry["top_tottime"] = [
                {"function": f"{Path(f).name}:{line}({fn})", "calls": v[1],
                 "tottime": round(v[2], 2), "cumtime": round(v[3], 2)}
                for (f, line, fn), v in top]
        if args.predictions:
            args.predictions.write_text(json.dumps(preds))
        if args.same_as:
            entry["same_as"] = str(args.same_as)
            entry["same_predictions"] = _same(preds, json.loads(args.same_as.read_text()))
        entries.append(entry)
        print(f"{args.label or 'run'} batch={batch} workers={workers}: {secs:.1f} s for "
              f"{len(records)} images, "
              f"{peaks_seen[0]} peaks ({entry['seconds_per_peak']:.3f} s/peak; "
              f"{entry['split_seconds_extrapolated']:.0f} s for the {n_split}-image split; "
              f"CPU {cpu:.1f} s)" + (f"; same predictions as {args.same_as}: "
                                     f"{entry['same_predictions']}" if args.same_as else ""))
    prm.response_maps_at = original
    old = json.loads(args.result.read_text()) if args.result.is_file() else []
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(old + entries, indent=2) + "\n")
    print(f"wrote {args.result}")
    return 0


def _same(a: list[dict], b: list[dict]) -> bool:
    """The same instances in the same order: image, class and mask equal, scores to 1e-5
    relative (a score is the peak's CAM value, tens on the shapes: float rounding alone moves
    its fifth decimal)."""
    if len(a) != len(b):
        return False
    return all(x["image_id"] == y["image_id"] and x["category_id"] == y["category_id"]
               and x["segmentation"] == y["segmentation"]
               and abs(x["score"] - y["score"]) <= 1e-5 * max(1.0, abs(y["score"]))
               for x, y in zip(a, b))


if __name__ == "__main__":
    sys.exit(main())
