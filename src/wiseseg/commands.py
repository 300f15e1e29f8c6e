"""``wiseseg run`` (the whole pipeline) and ``wiseseg report`` (rebuild a run's report)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wiseseg.commandline import (
    add_data_args,
    add_run_args,
    command,
    open_dataset_from_args,
    run_config,
)


def _cfg_run(p: argparse.ArgumentParser) -> None:
    add_data_args(p, negatives=True)
    add_run_args(p)
    p.add_argument("--out", default=None,
                   help="run directory (default: runs/<data>-<preset>)")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the Mask R-CNN trained on ground-truth masks")


@command("run", "the whole WISE pipeline: classifier → peaks → proposals → pseudo masks → "
         "Mask R-CNN → predict (+refine) → evaluate, with the PRM and GT comparison rows",
         _cfg_run)
def cmd_run(args) -> int:
    from wiseseg.api import run_pipeline
    from wiseseg.commandline import resolve_preset_name

    cfg = run_config(args)
    if args.negatives:  # recorded in config.yaml, so a resumed run or report finds them
        cfg["data"]["negatives"] = str(Path(args.negatives).resolve())
    ds = open_dataset_from_args(args)
    preset = Path(resolve_preset_name(args.preset, args.data)).stem
    out = Path(args.out) if args.out else Path("runs") / f"{ds.name}-{preset}"
    result = run_pipeline(ds, cfg, out, data_spec=args.data, reference=not args.no_reference,
                          progress=not args.quiet)
    print(result.table())
    print(f"\nrun directory: {out}   report: {out / 'report.html'}")
    return 0


def _cfg_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory of `wiseseg run`")
    p.add_argument("--skip-bad", action="store_true")


@command("report", "rebuild RUN/metrics.json and RUN/report.html from a run directory",
         _cfg_report)
def cmd_report(args) -> int:
    from wiseseg.api import rebuild_report

    path = rebuild_report(Path(args.run), progress=not args.quiet, skip_bad=args.skip_bad)
    print(f"report written to {path}")
    return 0
