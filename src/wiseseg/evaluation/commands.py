"""Evaluation command: ``evaluate``."""

from __future__ import annotations

import argparse
from pathlib import Path

from wiseseg.commandline import add_data_args, command, open_dataset_from_args


def _cfg_evaluate(p: argparse.ArgumentParser) -> None:
    add_data_args(p, split=True)
    p.add_argument("--pred", required=True, help="predictions: COCO results JSON list "
                   "(image_id, category_id, segmentation RLE, score)")
    p.add_argument("--out", help="write all metrics to this JSON file (atomically)")
    p.add_argument("--plots", metavar="DIR", help="write the AP50-by-size / by-count charts "
                   "here (default: beside --out, named after it)")
    p.add_argument("--no-plots", action="store_true", help="no charts, even with --out")
    p.add_argument("--coco", action="store_true",
                   help="also report pycocotools COCOeval segm AP, AP50, AP75")
    p.add_argument("--min-score", type=float, default=0.0,
                   help="leave out predictions scoring below this (default: 0, all)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")


@command("evaluate", "mask mAP25/50/75, ABO, per-class AP and AP50 breakdowns of predictions",
         _cfg_evaluate)
def cmd_evaluate(args) -> int:
    import json
    import math
    import sys

    from wiseseg.errors import WisesegError
    from wiseseg.evaluation.api import evaluate_dataset
    from wiseseg.evaluation.plots import plot_breakdowns
    from wiseseg.evaluation.predictions import load_predictions
    from wiseseg.evaluation.table import format_metrics
    from wiseseg.io import atomic_write_json

    if not math.isfinite(args.min_score):
        raise WisesegError(f"--min-score {args.min_score} is not a finite number")
    ds = open_dataset_from_args(args)
    ds.ground_truth(args.split)  # fail on a mask-less split before reading predictions
    preds = load_predictions(args.pred, ds, args.split)
    metrics = evaluate_dataset(preds, ds, args.split, min_score=args.min_score, coco=args.coco)
    metrics["predictions_file"] = str(Path(args.pred).resolve())
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    info = sys.stderr if args.json else sys.stdout  # keep --json output parseable
    if args.out:
        atomic_write_json(args.out, metrics, indent=2)
        print(f"wrote {args.out}", file=info)
    plot_dir, prefix = None, ""
    if args.plots:
        plot_dir = Path(args.plots)
    elif args.out:
        plot_dir, prefix = Path(args.out).parent, Path(args.out).stem + "_"
    if plot_dir is not None and not args.no_plots:
        for path in plot_breakdowns({ds.name: metrics}, plot_dir, prefix=prefix):
            print(f"wrote {path}", file=info)
    return 0
