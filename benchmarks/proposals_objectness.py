"""Train the built-in generator's objectness model on training splits only.

For each ``--train DATA:N`` entry, N images of DATA's ``train`` split (every k-th image, so
they span the split) go through the built-in generator's candidate stage
(:func:`wiseseg.proposals.builtin.candidates`, with the settings of each ``--quality``) —
every distinct region of every hierarchy with its
:data:`~wiseseg.proposals.objectness.FEATURES`. A candidate is a positive when its mask IoU
with some ground-truth instance is ≥ 0.5, measured at the working resolution (the
instance masks resized there by nearest neighbour). A one-hidden-layer perceptron
(``--hidden`` ReLU units) is fitted to these labels with the logistic loss (Adam, full batch,
weight decay), each image weighted equally; a quarter of the images of every dataset is held
out, and the epoch with the best held-out ROC AUC is kept.

The parameters are written as a Python literal into
``src/wiseseg/proposals/objectness_model.py`` (imported like any module, no pickle), and a
report with the held-out AUC per dataset and per single feature into ``--json``.

Default: COCO-subset train (natural photographs) and shapes train (the built-in data), so
Penn-Fudan, DSB2018 and NWPU VHR-10 stay unseen datasets for the benchmark
(``benchmarks/proposals_real.py``), and no val split is ever read.

Usage::

    .venv/bin/python benchmarks/proposals_objectness.py \\
        --train /data/coco_subset:80 shapes:200 [--quality fast accurate] [--hidden 16] \\
        [--json benchmarks/results/proposals_objectness.json] [--dry-run]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from wiseseg import rle  # noqa: E402
from wiseseg.data import load_image, open_dataset  # noqa: E402
from wiseseg.proposals import roc_auc  # noqa: E402
from wiseseg.proposals.builtin import BuiltinSource, candidates, working_image  # noqa: E402
from wiseseg.proposals.objectness import FEATURES  # noqa: E402

MODEL_FILE = Path(__file__).resolve().parents[1] / "src/wiseseg/proposals/objectness_model.py"


def image_samples(image: np.ndarray, masks: list[dict], cfg) -> tuple[np.ndarray, np.ndarray]:
    """Features (K×D float32) and best IoU with an instance (K float32) of the candidates."""
    work = working_image(image, cfg.work_pixels)
    atoms, member, feats = candidates(work, cfg)
    h, w = work.shape[:2]
    n_atoms = member.shape[1]
    atom_area = np.bincount(atoms.ravel(), minlength=n_atoms).astype(np.float64)
    area = member.astype(np.float64) @ atom_area
    best = np.zeros(len(member))
    for m in masks:
        small = np.asarray(Image.fromarray(rle.decode(m).astype(np.uint8) * 255).resize(
            (w, h), Image.Resampling.NEAREST)) > 127
        if not small.any():
            continue
        in_atom = np.bincount(atoms[small], minlength=n_atoms).astype(np.float64)
        inter = member.astype(np.float64) @ in_atom
        best = np.maximum(best, inter / np.maximum(area + small.sum() - inter, 1.0))
    return feats, best.astype(np.float32)


def collect(spec: str, qualities: list[str]) -> list[dict]:
    """Per image (and quality), its candidates' features and best IoUs."""
    data, _, count = spec.rpartition(":")
    if not data or not count.isdigit():
        raise SystemExit(f"--train {spec!r}: expected DATA:N")
    ds = open_dataset(data)
    records = list(ds.records("train"))
    records = records[:: max(1, len(records) // int(count))][: int(count)]
    gts = ds.ground_truth("train")
    out = []
    for q in qualities:
        cfg = BuiltinSource(quality=q).config
        for i, r in enumerate(records):
            masks = [inst.segmentation for inst in gts[r.id].instances]
            feats, iou = image_samples(load_image(r.path), masks, cfg)
            out.append({"data": data, "quality": q, "image": r.id, "x": feats, "iou": iou,
                        "holdout": i % 4 == 3})
            print(f"\r{data} {q}: {i + 1}/{len(records)}", end="", flush=True)
        print()
    return out


def fit(samples: list[dict], hidden: int, epochs: int, seed: int) -> tuple[dict, dict]:
    """Fit the perceptron; returns (model parameters, training report)."""
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    train = [s for s in samples if not s["holdout"]]
    held = [s for s in samples if s["holdout"]]
    x = np.concatenate([s["x"] for s in train]).astype(np.float64)
    y = np.concatenate([s["iou"] >= 0.5 for s in train]).astype(np.float32)
    # Every image weighs the same, however many candidates it has.
    wt = np.concatenate([np.full(len(s["x"]), 1.0 / max(len(s["x"]), 1)) for s in train])
    wt = wt / wt.mean()
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    yt, wtt = torch.tensor(y), torch.tensor(wt, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=1e-4)
    xh = np.concatenate([s["x"] for s in held]).astype(np.float64)
    yh = np.concatenate([s["iou"] >= 0.5 for s in held])
    xht = torch.tensor((xh - mean) / std, dtype=torch.float32)
    best, best_state, history = -1.0, None, []
    for epoch in range(epochs):
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(
            net(xt)[:, 0], yt, reduction="none") * wtt).mean()
        loss.backward()
        opt.step()
        if epoch % 10 == 9 or epoch == epochs - 1:
            with torch.no_grad():
                auc = roc_auc(net(xht)[:, 0].numpy(), yh)
            history.append({"epoch": epoch + 1, "loss": float(loss.detach()), "holdout_auc": auc})
            if auc is not None and auc > best:
                best = auc
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    sd = {k: v.numpy().astype(np.float64) for k, v in net.state_dict().items()}
    model = {"features": list(FEATURES), "mean": mean.tolist(), "std": std.tolist(),
             "w1": sd["0.weight"].tolist(), "b1": sd["0.bias"].tolist(),
             "w2": sd["2.weight"][0].tolist(), "b2": float(sd["2.bias"][0])}
    return model, {"history": history, "holdout_auc": best,
                   "train_candidates": int(len(x)), "train_positives": int(y.sum()),
                   "holdout_candidates": int(len(xh)), "holdout_positives": int(yh.sum())}


def evaluate(model: dict, samples: list[dict]) -> dict:
    """Held-out ROC AUC per dataset and quality, and of each single feature (either sign)."""
    from wiseseg.proposals.objectness import score

    out = {}
    for key in sorted({(s["data"], s["quality"]) for s in samples}):
        held = [s for s in samples if s["holdout"] and (s["data"], s["quality"]) == key]
        if not held:
            continue
        x = np.concatenate([s["x"] for s in held])
        y = np.concatenate([s["iou"] >= 0.5 for s in held])
        single = {}
        for j, name in enumerate(FEATURES):
            auc = roc_auc(x[:, j], y)
            single[name] = None if auc is None else round(max(auc, 1 - auc), 3)
        out[f"{key[0]} ({key[1]})"] = {"auc": roc_auc(score(x, model), y),
                                       "candidates": int(len(x)), "positives": int(y.sum()),
                                       "single_feature_auc": single}
    return out


def _fmt(v: float) -> str:
    return format(v, ".6g")


def write_model(model: dict, about: str) -> None:
    """Write the parameters as a Python literal (lines under 100 characters)."""
    import textwrap

    def vec(v, indent: int) -> list[str]:
        body = textwrap.wrap(", ".join(_fmt(x) for x in v), 96 - indent)
        pad = " " * indent
        return [pad + "["] + [pad + "    " + line for line in body] + [pad + "],"]

    lines = ['"""Parameters of the built-in generator\'s objectness (see',
             ":mod:`wiseseg.proposals.objectness`). Written by "
             "``benchmarks/proposals_objectness.py``;",
             "do not edit by hand.", "", *textwrap.wrap(about, 92), '"""', "", "MODEL = {",
             '    "features": [',
             *["        " + line for line in textwrap.wrap(
                 ", ".join(json.dumps(f) for f in model["features"]), 88)],
             "    ],"]
    for key in ("mean", "std"):
        lines += [f'    "{key}":', *vec(model[key], 8)]
    lines.append('    "w1": [')
    for row in model["w1"]:
        lines += vec(row, 8)
    lines += ["    ],", '    "b1":', *vec(model["b1"], 8), '    "w2":', *vec(model["w2"], 8),
              f'    "b2": {_fmt(model["b2"])},', "}", ""]
    MODEL_FILE.write_text("\n".join(lines))


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", nargs="+", default=[], metavar="DATA:N",
                    help="training data: a dataset path (or shapes) and a number of images "
                         "of its train split")
    ap.add_argument("--quality", nargs="+", default=["fast"], help="settings to sample with")
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dry-run", action="store_true", help="do not write the model file")
    ap.add_argument("--rewrite", type=Path, default=None, metavar="JSON",
                    help="only rewrite the model file from an earlier run's --json output")
    args = ap.parse_args()
    if args.rewrite:
        old = json.loads(args.rewrite.read_text())
        write_model(old["model"], old["about"])
        return
    if not args.train:
        ap.error("--train DATA:N ... is required")
    start = time.perf_counter()
    samples = [s for spec in args.train for s in collect(spec, args.quality)]
    model, report = fit(samples, args.hidden, args.epochs, args.seed)
    per = evaluate(model, samples)
    names = ", ".join(f"{Path(spec.rpartition(':')[0]).name} train ({spec.rpartition(':')[2]} "
                      f"images)" for spec in args.train)
    about = (f"Trained on {names}, candidates of the {'/'.join(args.quality)} settings; a "
             f"{args.hidden}-unit ReLU layer; held-out ROC AUC {report['holdout_auc']:.3f}\n"
             f"(a quarter of those images). Commit {_commit()}.")
    if not args.dry_run:
        write_model(model, about)
    result = {"train": args.train, "quality": args.quality, "hidden": args.hidden,
              "epochs": args.epochs, "seed": args.seed, "commit": _commit(),
              "seconds": time.perf_counter() - start, "about": about, **report,
              "per_dataset": per,
              "model": model}
    print(json.dumps({k: v for k, v in result.items() if k not in ("model", "history")},
                     indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
