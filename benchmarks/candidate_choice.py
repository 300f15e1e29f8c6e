"""How good is each rule for picking a peak's pseudo mask among the proposals containing it?

For every peak of a labelled class that lies inside a ground-truth instance of its class (a
correct peak), the proposals containing it (after the pseudo-mask size filter) are the
candidates; each rule picks one, and the table gives the mean IoU of the pick with that
instance and the share of picks with IoU ≥ 0.5, beside the oracle (the best candidate) and
Eq. 1 over the 3 of highest objectness (the ``cpu`` preset's draw, in expectation). Run it on
training images (a calibration part, or the images a classifier was trained on, as pseudo
masks are made on them), never on the split a table reports.

usage: python benchmarks/candidate_choice.py CLASSIFIER.pt DATA --split train-fit
           [--negatives DIR] [--proposals DIR] [--preset cpu] [--name NAME]
Writes benchmarks/results/candidate_choice_<name>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import torch

from wiseseg import api, rle
from wiseseg.classifier.model_io import load_classifier
from wiseseg.classifier.peaks import image_cams, peaks_for_image
from wiseseg.data.images import load_image
from wiseseg.io import atomic_write_json
from wiseseg.proposals import build_proposal_source, compute_proposals

ROOT = Path(__file__).resolve().parents[1]


def rules(ious: np.ndarray, scores: np.ndarray, areas: np.ndarray) -> dict[str, float]:
    """IoU of each rule's pick (candidates sorted by nothing in particular)."""
    order = np.argsort(-scores, kind="stable")
    top3 = order[:3]
    p3 = scores[top3] / scores[top3].sum() if scores[top3].sum() > 0 else \
        np.full(len(top3), 1 / len(top3))
    out = {"oracle": ious.max(), "top objectness (argmax)": ious[order[0]],
           "Eq. 1 over top 3 (expected)": float((ious[top3] * p3).sum())}
    for beta in (0.3, 0.5):
        out[f"objectness × area^{beta}"] = ious[(scores * areas ** beta).argmax()]
    out["largest of top 3"] = ious[top3[areas[top3].argmax()]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("classifier")
    ap.add_argument("data")
    ap.add_argument("--split", default="train-fit")
    ap.add_argument("--negatives", default=None)
    ap.add_argument("--proposals", default=None, help="proposal store folder (computed if new)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = api.load_config(args.preset)
    ds = api.open_dataset(args.data, progress=False)
    if args.negatives:
        from wiseseg.data.negatives import add_negatives

        add_negatives(ds, args.negatives, "train")
    ds.has_split(args.split)
    recs, gts = ds.records(args.split), ds.ground_truth(args.split)
    model, ccfg, _ = load_classifier(args.classifier)
    size = int(ccfg["input_size"])
    pc, sc = cfg["pseudo"], cfg["peaks"]
    store_dir = args.proposals or f"runs/candidate-choice/{Path(args.data).name}-{args.split}"
    store = compute_proposals(list(recs), build_proposal_source("builtin", top_k=1000),
                              store_dir, workers=2, progress=False, top_k=1000)
    picks: dict[str, list[float]] = {}
    without = 0
    for r in recs:
        cam = image_cams(model, [load_image(r.path)], size, "cpu", flip=bool(sc["flip"]))[0]
        peaks = peaks_for_image(model, cam, r, sc, True, input_size=size)
        props = store.get(r.id)
        masks = rle.decode_many(props.masks, (r.height, r.width)).astype(bool)
        scores = np.asarray(props.scores, float)
        areas = masks.reshape(len(masks), -1).sum(1).astype(float)
        hw = r.height * r.width
        ok = (areas >= max(pc["min_area_px"], pc["min_area_frac"] * hw)) & \
            (areas <= pc["max_area_frac"] * hw)
        inst = gts[r.id].instances
        gm = rle.decode_many([i.segmentation for i in inst], (r.height, r.width)).astype(bool)
        cats = np.array([i.category for i in inst])
        for p in peaks:
            hit = [k for k in range(len(cats)) if cats[k] == p.category and gm[k][p.y, p.x]]
            if not hit:
                continue
            inside = np.nonzero(masks[:, p.y, p.x] & ok)[0]
            if not len(inside):
                without += 1
                for k in picks:
                    picks[k].append(0.0)
                continue
            m, g = masks[inside], gm[hit[0]]
            ious = (m & g).reshape(len(m), -1).sum(1) / (m | g).reshape(len(m), -1).sum(1)
            for k, v in rules(ious, scores[inside], areas[inside]).items():
                picks.setdefault(k, []).append(float(v))
    table = {k: {"mean_iou": float(np.mean(v)), "iou50": float(np.mean(np.array(v) >= 0.5)),
                 "peaks": len(v)} for k, v in picks.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    name = args.name or Path(args.data).name
    atomic_write_json(ROOT / "benchmarks" / "results" / f"candidate_choice_{name}.json",
                      {"commit": commit, "classifier": args.classifier, "data": args.data,
                       "split": args.split, "peaks_settings": dict(sc),
                       "correct_peaks_without_candidate": without, "rules": table}, indent=1)
    print(f"{args.data} {args.split}: correct peaks {len(next(iter(picks.values()), []))}, "
          f"{without} without a candidate\n\n| rule | mean IoU | IoU ≥ 0.5 |\n|---|---|---|")
    for k, v in table.items():
        print(f"| {k} | {v['mean_iou']:.3f} | {100 * v['iou50']:.1f} % |")


if __name__ == "__main__":
    main()
