"""Does a self-training round pay? (``segmenter.rounds``) Round 1's Mask R-CNN against the
last round's, both from one finished run: scored on the run's val split and on its training
images with true masks (Table 3's images).

A setting is chosen on a calibration part of the training split, never on the reported val:
run it on calibration runs, e.g.

    wiseseg run --data DATA --out RUN --no-reference data.train_split=train-fit \\
        data.val_split=train-calib

usage: python benchmarks/self_training_rounds.py RUN [RUN …] [--train-only] --name NAME
→ benchmarks/results/self_training_rounds_NAME.json and .md. The last round's val score is
recomputed here and must equal the run's own (``metrics.json``), a check that both models are
scored as the run scores them. ``--train-only``: the training images only (for runs whose val
split is a reported one).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gitinfo import commit  # benchmarks/, the script's folder
from self_training_labels import write_results

from wiseseg import api
from wiseseg.config import load_config
from wiseseg.io import read_json
from wiseseg.pseudo.quality import score_results


def _scores(model_path: Path, ds, split: str, cfg: dict, min_score: float) -> dict:
    from wiseseg.engine.reproducibility import resolve_device
    from wiseseg.inference.predict import predict, records_as_items
    from wiseseg.models.freezing import fold_batchnorm
    from wiseseg.segmenter.model_io import load_segmenter

    dev = resolve_device(cfg.get("device", "auto"))
    model, _, _, _ = load_segmenter(model_path, dev)
    model.backbone.body = fold_batchnorm(model.backbone.body)  # as the run predicts
    recs = ds.records(split)
    preds = predict(model, records_as_items(recs), ds.category_ids, device=dev,
                    batch_size=int(cfg["predict"]["batch_size"]),
                    mask_threshold=float(cfg["predict"]["mask_threshold"]),
                    min_score=min_score, total=len(recs), progress=True)
    r = score_results(preds, ds, split, str(model_path))
    return {k: round(100 * r[k], 1) for k in ("mAP25", "mAP50", "mAP75", "ABO")}


def measure_run(run: Path, val_too: bool = True) -> dict:
    cfg = load_config(run / "config.yaml")
    ds = api.open_dataset(cfg["data"]["spec"], progress=False)
    api._add_negatives(ds, cfg)
    train, val = cfg["data"]["train_split"], cfg["data"]["val_split"]
    ds.has_split(val)  # carves <split>-fit / -calib
    t0 = time.perf_counter()
    rows = {}
    for name, path in (("round 1", run / "wise" / "round1" / "model.pt"),
                       ("last round", run / "wise" / "model.pt")):
        # val as the run predicts it; Table 3 as pseudo_quality does (min score 0.05)
        rows[name] = {"train": _scores(path, ds, train, cfg, 0.05)}
        if val_too:
            rows[name]["val"] = _scores(path, ds, val, cfg,
                                        float(cfg["predict"].get("min_score", 0.0)))
    m = read_json(run / "metrics.json", "metrics")
    return {"run": str(run), "data": cfg["data"]["spec"], "seed": cfg.get("seed"),
            "train_split": train, "val_split": val,
            "train_images_with_masks": len(ds.records(train)), "val_images": len(ds.records(val)),
            "rounds": cfg["segmenter"].get("rounds"),
            "self_training_score": cfg["segmenter"].get("self_training_score"),
            "relabelled": m["stages"]["wise"]["summary"].get("rounds"),
            "run_wise_val_mAP50": round(100 * m["results"]["WISE"]["mAP50"], 1)
            if val_too else None,
            "run_table3_model_mAP50": round(100 * m["pseudo_quality"]["model_mAP50"], 1),
            "seconds": round(time.perf_counter() - t0, 1), "models": rows}


def markdown(out: dict) -> str:
    lines = [f"# Self-training: round 1 against the last round ({out['name']}, commit "
             f"{out['commit']})", "", f"`{out['command']}`", "",
             "mAP50 (%) of each round's Mask R-CNN on the run's val split and on its training "
             "images with true masks (Table 3).", "",
             "| run | val split (images) | round 1: val | last round: val | round 1: train | "
             "last round: train | run's own WISE val / Table 3 |",
             "|---|---|---|---|---|---|---|"]
    for r in out["runs"]:
        a, b = r["models"]["round 1"], r["models"]["last round"]
        va, vb = (a["val"]["mAP50"], b["val"]["mAP50"]) if "val" in a else ("—", "—")
        own = r["run_wise_val_mAP50"] if r["run_wise_val_mAP50"] is not None else "—"
        lines.append(f"| {r['data']} seed {r['seed']} | {r['val_split']} ({r['val_images']}) | "
                     f"{va} | {vb} | {a['train']['mAP50']} | {b['train']['mAP50']} | "
                     f"{own} / {r['run_table3_model_mAP50']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--train-only", action="store_true",
                    help="score the training images only (runs whose val split is reported)")
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    out = {"name": args.name, "commit": commit(),
           "command": "python benchmarks/self_training_rounds.py " + " ".join(sys.argv[1:]),
           "runs": [measure_run(r, not args.train_only) for r in args.runs]}
    write_results(f"self_training_rounds_{args.name}", out, markdown(out))


if __name__ == "__main__":
    main()
