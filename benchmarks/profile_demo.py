"""Where the demo's time goes: per-stage seconds (from the run's metrics.json) and, when this
script runs the demo itself, the top cProfile entries of the whole run.

usage:
    python benchmarks/profile_demo.py [--out runs/profile-demo] [--top 40] [key=value ...]
        runs ``wiseseg run --data shapes --preset cpu`` in this process under cProfile
        (a fresh run directory; ~12 min on 2 free cores; cProfile adds a little to the
        Python-heavy stages, nothing to time spent inside torch's kernels)
    python benchmarks/profile_demo.py --run-dir runs/demo
        reads an existing run's metrics.json only (no cProfile entries)

Writes benchmarks/results/profile_demo.json (``--result`` to write elsewhere): the commit,
torch's thread count, the load average before and after (the machine is shared; the
numbers are only as quiet as it was), the per-stage seconds sorted by time and their share,
and, when profiled, the top entries by own time (``tottime``) and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

from gitinfo import commit  # noqa: E402  (benchmarks/, the script's folder)

ROOT = Path(__file__).resolve().parents[1]


def _dirty() -> bool:
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"],
                             cwd=ROOT, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    return bool(out.strip())


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Per-stage seconds of a finished run: metrics.json's ``run.seconds``, else the stage
    manifests (``<stage>/stage.json``-like files holding ``seconds``)."""
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        secs = json.loads(metrics.read_text()).get("run", {}).get("seconds")
        if secs:
            return {k: float(v) for k, v in secs.items()}
    out: dict[str, float] = {}
    for manifest in sorted(run_dir.glob("*/*.json")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and "stage" in m and "seconds" in m:
            out[m["stage"]] = float(m["seconds"])
    return out


def _stage_table(secs: dict[str, float]) -> list[dict]:
    total = sum(secs.values()) or 1.0
    return [{"stage": k, "seconds": round(v, 1), "share": round(v / total, 3)}
            for k, v in sorted(secs.items(), key=lambda kv: -kv[1])]


def _top(stats: pstats.Stats, key: str, n: int) -> list[dict]:
    rows = []
    raw = stats.stats  # type: ignore[attr-defined]
    idx = {"tottime": 2, "cumtime": 3}[key]
    for (file, line, fn), (_cc, nc, tt, ct, _) in sorted(raw.items(),
                                                         key=lambda kv: -kv[1][idx])[:n]:
        short = file
        for prefix in (str(ROOT / "src") + os.sep, sys.prefix + os.sep):
            short = short.replace(prefix, "")
        rows.append({"function": f"{short}:{line}({fn})", "calls": nc,
                     "tottime": round(tt, 2), "cumtime": round(ct, 2)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, default=None,
                    help="an existing run directory: read its metrics.json, run nothing")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "profile-demo",
                    help="run directory for the profiled demo (must not hold a run)")
    ap.add_argument("--data", default="shapes")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--result", type=Path,
                    default=ROOT / "benchmarks" / "results" / "profile_demo.json")
    ap.add_argument("--label", default="", help="free text kept in the result (e.g. before)")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)

    import torch

    import wiseseg

    result: dict = {"label": args.label, "commit": commit(),
                    "uncommitted_src_changes": _dirty(),
                    "wiseseg_imported_from": str(Path(wiseseg.__file__).parent),
                    "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_before": [round(v, 2) for v in os.getloadavg()],
                    "note": "wall-clock seconds on a shared machine; compare stages of one "
                            "run, and runs only when the load averages are alike"}
    if args.run_dir is not None:
        result.update(mode="existing run", run_dir=str(args.run_dir))
        secs = stage_seconds(args.run_dir)
    else:
        from wiseseg import api

        if (args.out / "metrics.json").exists():
            ap.error(f"{args.out} holds a finished run; pass --run-dir to read it, or "
                     f"another --out")
        cfg = api.load_config(args.preset, tuple(args.overrides))
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        api.run_pipeline(args.data, cfg, args.out, progress=False)
        prof.disable()
        wall = time.perf_counter() - t0
        secs = stage_seconds(args.out)
        stats = pstats.Stats(prof)
        result.update(mode="profiled run", run_dir=str(args.out), data=args.data,
                      preset=args.preset, overrides=list(args.overrides),
                      wall_seconds=round(wall, 1),
                      top_tottime=_top(stats, "tottime", args.top),
                      top_cumtime=_top(stats, "cumtime", args.top))
    result["stage_seconds_total"] = round(sum(secs.values()), 1)
    result["stages"] = _stage_table(secs)
    result["load_after"] = [round(v, 2) for v in os.getloadavg()]
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["stages"]:
        print(f"{row['stage']:>20} {row['seconds']:8.1f} s  {100 * row['share']:5.1f} %")
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
