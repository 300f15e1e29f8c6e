"""Data commands: ``make-shapes`` and ``data-stats``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wiseseg.commandline import add_data_args, command, open_dataset_from_args


def _cfg_make_shapes(p: argparse.ArgumentParser) -> None:
    from wiseseg.data.shapes import ShapesConfig

    d = ShapesConfig()
    p.add_argument("out", help="output directory (must not exist or be empty)")
    p.add_argument("--train", type=int, default=d.train, help=f"train images ({d.train})")
    p.add_argument("--val", type=int, default=d.val, help=f"val images ({d.val})")
    p.add_argument("--size", type=int, default=d.size, help=f"image side in px ({d.size})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--classes", type=int, default=d.num_classes, help="number of shape classes")


@command("make-shapes", "generate the built-in synthetic shapes dataset (VOC layout)",
         _cfg_make_shapes)
def cmd_make_shapes(args) -> int:
    from wiseseg.data.shapes import ShapesConfig, write_shapes

    cfg = ShapesConfig(train=args.train, val=args.val, size=args.size, seed=args.seed,
                       num_classes=args.classes)
    out = write_shapes(Path(args.out), cfg, progress=not args.quiet)
    print(f"wrote {cfg.train} train + {cfg.val} val images ({cfg.size}×{cfg.size}, "
          f"{cfg.num_classes} classes) to {out}")
    return 0


def _cfg_data_stats(p: argparse.ArgumentParser) -> None:
    add_data_args(p, negatives=True)
    p.add_argument("--split", default=None, help="only this split (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


@command("data-stats", "print per-split statistics of a dataset", _cfg_data_stats)
def cmd_data_stats(args) -> int:
    from wiseseg.data.stats import everywhere_warning, format_stats, split_stats

    ds = open_dataset_from_args(args, train_split="train" if args.negatives else None)
    splits = [args.split] if args.split else ds.splits
    stats = {s: split_stats(ds, s) for s in splits}
    if args.json:
        print(json.dumps(stats, indent=2))
        for s in splits:  # the warning also reaches a user who reads only the JSON's exit
            if stats[s]["classes_in_every_image"]:
                print(everywhere_warning(stats[s]["classes_in_every_image"], s,
                                         stats[s]["images"]
                                         + stats[s]["image_level_only_images"]),
                      file=sys.stderr)
    else:
        print(format_stats(ds, stats))
    return 0
