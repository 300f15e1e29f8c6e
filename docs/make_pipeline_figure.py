"""Write docs/pipeline.png (the README's picture) from a finished run.

usage: python docs/make_pipeline_figure.py RUN [--images 3]
Rows: training images picked evenly over the split; columns: image | CAM + peaks | pseudo
masks | WISE prediction | ground truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from wiseseg.config import load_config
from wiseseg.data import open_dataset
from wiseseg.io import atomic_write
from wiseseg.report.build import pick_records, pipeline_figure


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("pipeline.png")))
    args = ap.parse_args()
    cfg = load_config(Path(args.run) / "config.yaml")
    ds = open_dataset(cfg["data"]["spec"])
    split = cfg["data"]["train_split"]
    png = pipeline_figure(args.run, ds, split, pick_records(ds.records(split), args.images))
    atomic_write(args.out, lambda f: f.write(png))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
