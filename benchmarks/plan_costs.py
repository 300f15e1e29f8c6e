"""Fit the run plan's seconds per unit of work (``wiseseg.runplan.COST``) to finished runs.

For every run directory given, the units of work of each stage are recomputed exactly as the
run planned them (its ``config.yaml``: the resolved settings, the data it names, negatives
included), and the stage's actual seconds are read from ``RUN/<stage>/stage.json``. One
non-negative least-squares fit over all (run, stage) rows, each row divided by its seconds so
that every stage counts by its relative error, gives the constants. The table then shows, per
run and stage, the seconds planned with the fitted constants (and with the ones in the code)
against the actual seconds, and each run's total.

usage: python benchmarks/plan_costs.py RUN [RUN ...] [--name NAME] [--check] [--stages S ...]
Writes benchmarks/results/plan_costs[_NAME].json. ``--check``: no fit, the code's constants
only (how far a run ended from its plan). ``--stages``: fit (and show) only these stages'
rows; the constants of the other stages keep the code's values (after a change to one
stage, a refit of its constants from the runs made since).
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import nnls

from wiseseg import api
from wiseseg.autoconfig import config_sizes
from wiseseg.io import atomic_write_json, read_json
from wiseseg.runplan import COST, stage_units

ROOT = Path(__file__).resolve().parents[1]


def run_rows(run: Path) -> list[dict]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    spec = cfg["data"].get("spec") or cfg["data"].get("root")
    ds = api.open_dataset(spec, progress=False)
    if cfg["data"].get("negatives"):
        from wiseseg.data.negatives import add_negatives

        add_negatives(ds, cfg["data"]["negatives"], cfg["data"]["train_split"])
    train, val = cfg["data"]["train_split"], cfg["data"]["val_split"]
    ds.has_split(train)
    ds.has_split(val)
    sizes = config_sizes(ds, cfg, train)
    val_images = len(ds.records(val)) if val in ds.splits else 0
    reference = (run / "reference" / "stage.json").is_file()
    units = stage_units(cfg, sizes, val_images, sizes.instances_per_image, reference)
    rows = []
    for stage, u in units.items():
        manifest = run / stage / "stage.json"
        if not manifest.is_file():
            continue
        m = read_json(manifest)
        if not m.get("complete") or not m.get("seconds"):
            continue
        rows.append({"run": str(run), "stage": stage, "units": u,
                     "seconds": float(m["seconds"])})
    return rows


def fit(rows: list[dict]) -> dict[str, float]:
    keys = sorted({k for r in rows for k, v in r["units"].items() if v > 0})
    a = np.array([[r["units"].get(k, 0.0) / r["seconds"] for k in keys] for r in rows])
    x, _ = nnls(a, np.ones(len(rows)))
    fitted = dict(COST)
    fitted.update({k: float(v) for k, v in zip(keys, x)})
    return fitted


def planned(row: dict, cost: dict[str, float]) -> float:
    return sum(cost[k] * v for k, v in row["units"].items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--name", default=None)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--stages", nargs="+", default=None)
    args = ap.parse_args()
    rows = [r for run in args.runs for r in run_rows(Path(run))
            if args.stages is None or r["stage"] in args.stages]
    cost = dict(COST) if args.check else fit(rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    table, totals = [], {}
    for r in rows:
        p, c = planned(r, cost), planned(r, COST)
        table.append({"run": r["run"], "stage": r["stage"], "seconds": round(r["seconds"], 1),
                      "planned": round(p, 1), "planned_code": round(c, 1)})
        t = totals.setdefault(r["run"], {"seconds": 0.0, "planned": 0.0, "planned_code": 0.0})
        t["seconds"] += r["seconds"]
        t["planned"] += p
        t["planned_code"] += c
    for t in totals.values():
        t["ratio"] = round(t["seconds"] / t["planned"], 3) if t["planned"] else None
        t["ratio_code"] = round(t["seconds"] / t["planned_code"], 3) if t["planned_code"] \
            else None
    name = f"plan_costs_{args.name}" if args.name else "plan_costs"
    if not args.check:
        atomic_write_json(ROOT / "benchmarks" / "results" / f"{name}.json",
                          {"commit": commit, "runs": args.runs,
                           "cost": {k: float(f"{v:.4g}") for k, v in cost.items()},
                           "rows": table, "totals": totals}, indent=1)
    print("| run | stage | actual s | planned s (fitted) | planned s (code) |\n"
          "|---|---|---|---|---|")
    for r in table:
        print(f"| {Path(r['run']).name} | {r['stage']} | {r['seconds']:.0f} | "
              f"{r['planned']:.0f} | {r['planned_code']:.0f} |")
    for run, t in totals.items():
        print(f"{run}: actual {t['seconds']:.0f} s, planned {t['planned']:.0f} s (fitted; "
              f"actual/planned {t['ratio']}), {t['planned_code']:.0f} s (code; "
              f"{t['ratio_code']})")
    if not args.check:
        print("\nCOST = {" + ", ".join(f'"{k}": {v:.4g}' for k, v in cost.items()) + "}")


if __name__ == "__main__":
    main()
