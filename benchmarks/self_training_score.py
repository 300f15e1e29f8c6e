"""Which predictions become the next round's pseudo masks? (``segmenter.self_training_score``)
The last self-training round retrained from one finished run with other score thresholds,
scored on the run's val split — a calibration part of the training split, never a reported
val:

    wiseseg run --data DATA --out BASE --no-reference data.train_split=train-fit \\
        data.val_split=train-calib

Round 1 does not depend on the threshold, so each threshold's run is a copy of BASE in which
only the last round is retrained: the ``wise`` stage's manifest is re-stamped with the hash
the threshold gives it and marked unfinished, the last round's outputs are removed, and
``wiseseg``'s own resume keeps round 1's final checkpoint and its predictions on the training
images (re-predicted when the threshold is below the one they were filtered by). Every other
stage must carry the hash the current code gives it — the copy is checked, a stale BASE is
refused — and the stages after ``wise`` rerun as in any changed run.

``--rounds R`` (more than BASE's) asks instead how many rounds: BASE's rounds are all kept
(its last round's outputs move to ``wise/round<n>/``, where the stage's resume finds them)
and only the rounds after them train, at each threshold given (BASE's own included).

usage: python benchmarks/self_training_score.py BASE --data DATA [--negatives DIR] [--seed 0]
           --thresholds 0.6 0.7 0.8 [--rounds R] [--out DIR] --name NAME [key=value ...]
(``key=value``: BASE's own overrides, e.g. ``data.train_split=train-fit``.)
→ benchmarks/results/self_training_score_NAME.json and .md; BASE is the row of its own
threshold and round count.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gitinfo import commit  # benchmarks/, the script's folder
from self_training_labels import write_results

from wiseseg import api
from wiseseg.data import open_dataset
from wiseseg.io import atomic_write_json, read_json
from wiseseg.pipeline import RunContext, data_fingerprint, stage_hash
from wiseseg.stages import STAGES

AFTER_WISE = ("predict_wise", "pseudo_quality", "evaluate")  # rerun by their changed deps


def config(spec: str, negatives: str | None, seed: int, overrides: list[str]):
    """The config ``wiseseg run`` is given, the one it resolves (auto sizes, plan) and the
    dataset."""
    cfg = api.load_config("cpu", overrides + ([f"data.negatives={negatives}"] if negatives
                                              else []))
    cfg["seed"] = seed
    given = copy.deepcopy(cfg)
    ds = open_dataset(spec, progress=False)
    api._add_negatives(ds, cfg)
    tmp = Path(tempfile.mkdtemp())
    cfg = api.resolved_config(ds, cfg, tmp, reference=False)
    shutil.rmtree(tmp, ignore_errors=True)
    return given, cfg, ds


def restamp(run: Path, cfg: dict, ds, spec: str, base_score: float, base_rounds: int) -> str:
    """Mark ``run`` (a copy of BASE) as BASE under ``cfg`` with only its last round to train
    (or, when ``cfg`` asks for more rounds than BASE's ``base_rounds`` at BASE's threshold,
    only the rounds after BASE's); returns the ``wise`` stage's new hash."""
    ctx = RunContext(cfg=cfg, dataset=ds, data_spec=spec, run_dir=run, progress=False,
                     reference=False)
    fp = data_fingerprint(ds, [ctx.train_split, ctx.val_split])
    for st in STAGES:
        if not st.enabled(ctx):
            continue
        h = ctx.hashes[st.name] = stage_hash(st, ctx, fp)
        p = run / st.name / "stage.json"
        if st.name in AFTER_WISE or not p.is_file():
            continue
        m = read_json(p, "stage manifest")
        if st.name == "wise":
            m.update(hash=h, complete=False)
            atomic_write_json(p, m, indent=2)
        elif m.get("hash") != h or not m.get("complete"):
            raise SystemExit(f"{p}: hash {m.get('hash')} (complete {m.get('complete')}), "
                             f"the current code gives {h}: rerun BASE with this code first")
    w = run / "wise"
    rounds = int(cfg["segmenter"].get("rounds", 1) or 1)
    if rounds < 2:
        raise SystemExit(f"segmenter.rounds={rounds}: no self-training round to retrain")
    last = [w / n for n in ("model.pt", "pseudo.json", "checkpoints", "metrics.jsonl",
                            "tensorboard")]
    score = float(cfg["segmenter"]["self_training_score"])
    if rounds > base_rounds and score == base_score:
        # BASE's last round becomes round base_rounds of this run, finished: kept
        for q in last:
            if q.exists():
                (w / f"round{base_rounds}").mkdir(exist_ok=True)
                q.rename(w / f"round{base_rounds}" / q.name)
        last = []
    elif rounds != base_rounds:
        raise SystemExit(f"segmenter.rounds={rounds} with BASE's {base_rounds}: more rounds "
                         f"are added at BASE's threshold {base_score} only")
    else:  # with 3+ rounds every round after the first depends on the threshold
        last += [w / f"round{r}" for r in range(2, rounds)]
    if score < base_score:
        last.append(w / "round1" / "train_predictions.json")  # filtered at BASE's score
    for q in last:
        shutil.rmtree(q) if q.is_dir() else q.unlink(missing_ok=True)
    for s in AFTER_WISE:
        shutil.rmtree(run / s, ignore_errors=True)
    (run / "metrics.json").unlink(missing_ok=True)
    return ctx.hashes["wise"]


def row(run: Path, threshold: float) -> dict:
    met = read_json(run / "metrics.json", "metrics")
    wise = read_json(run / "wise" / "stage.json", "stage manifest")
    res = met["results"]
    last = (wise.get("summary", {}).get("rounds") or [{}])[-1]
    return {"threshold": threshold, "run": str(run),
            "rounds": int(wise["config"]["segmenter"].get("rounds", 1) or 1),
            **{f"{m}_{k}": round(100 * res[m][k], 1) for m in ("WISE", "WISE+Refine")
               for k in ("mAP50", "mAP25")},
            "from_predictions": last.get("from_predictions"),
            "kept_previous": last.get("kept_previous"),
            "wise_seconds": wise.get("seconds")}


def markdown(out: dict) -> str:
    lines = [f"# self_training_score on {out['name']} (commit {out['commit']})", "",
             f"`{out['command']}`", "",
             "| threshold | rounds | WISE mAP50 | WISE+Refine mAP50 | WISE mAP25 | instances from "
             "predictions | kept from the previous round | wise stage s (resumed: with BASE's) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        base = " (BASE)" if r["run"] == out["base"] else ""
        lines.append(f"| {r['threshold']}{base} | {r.get('rounds', '')} | {r['WISE_mAP50']} "
                     f"| {r['WISE+Refine_mAP50']} "
                     f"| {r['WISE_mAP25']} | {r['from_predictions']} | {r['kept_previous']} "
                     f"| {r['wise_seconds']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--negatives")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thresholds", type=float, nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=None,
                    help="more rounds than BASE's, BASE's own kept (default: BASE's)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--name", required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    out_dir = args.out or args.base.parent / f"{args.base.name}_self_training_score"
    base_cfg = read_json(args.base / "wise" / "stage.json", "stage manifest")["config"]
    base_score = float(base_cfg["segmenter"]["self_training_score"])
    base_rounds = int(base_cfg["segmenter"].get("rounds", 1) or 1)
    rounds = args.rounds or base_rounds
    rows = [row(args.base, base_score)]
    for t in args.thresholds:
        run = out_dir / (f"t{t:g}" if rounds == base_rounds else f"t{t:g}_rounds{rounds}")
        if not (run / "metrics.json").is_file():
            given, cfg, ds = config(args.data, args.negatives, args.seed,
                                    [*args.overrides, f"segmenter.self_training_score={t}",
                                     f"segmenter.rounds={rounds}"])
            if run.exists():
                shutil.rmtree(run)  # an unfinished copy: start it again from BASE
            shutil.copytree(args.base, run)
            stamped = restamp(run, cfg, ds, args.data, base_score, base_rounds)
            t0 = time.time()
            api.run_pipeline(ds, given, run, data_spec=args.data, reference=False,
                             progress=False)
            ran = read_json(run / "wise" / "stage.json", "stage manifest")["hash"]
            if ran != stamped:  # the stage was started afresh, round 1 retrained
                raise SystemExit(f"{run}: the run's wise stage has hash {ran}, stamped "
                                 f"{stamped}: it resolved another config than the stamp's")
            print(f"threshold {t}, {rounds} rounds: {time.time() - t0:.0f} s", flush=True)
            shutil.rmtree(run / "cache", ignore_errors=True)  # BASE's copy, gigabytes
        rows.append(row(run, t))
    out = {"name": args.name, "commit": commit(), "base": str(args.base),
           "command": "python benchmarks/self_training_score.py " + " ".join(sys.argv[1:]),
           "rows": sorted(rows, key=lambda r: (r["rounds"], r["threshold"]))}
    write_results(f"self_training_score_{args.name}", out, markdown(out))
    print(json.dumps({f"{r['threshold']} x{r['rounds']}": r["WISE_mAP50"]
                      for r in out["rows"]}))


if __name__ == "__main__":
    main()
