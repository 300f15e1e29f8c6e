"""The ``wiseseg`` command line: a thin layer over the Python API.

Every user-fixable problem (:class:`wiseseg.errors.WisesegError`) is printed as one line,
``error: <message>``, with exit status 2. Set ``WISESEG_DEBUG=1`` (or pass ``--debug``) to see
tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from wiseseg.errors import WisesegError

log = logging.getLogger("wiseseg")

_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help: str):
    """Register ``fn(args) -> int`` as a subcommand; ``fn.configure(parser)`` adds options."""

    def deco(fn):
        _COMMANDS[name] = (help, fn)
        return fn

    return deco


def _add_data_args(p: argparse.ArgumentParser, split: bool = False) -> None:
    p.add_argument("--data", default="shapes", help="dataset spec: 'shapes[:key=val,...]' or a "
                   "VOC / COCO / folder-per-class path (default: shapes)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad images/annotations with a warning instead of stopping")
    if split:
        p.add_argument("--split", default="val", help="split to use (default: val)")


def _open(args) -> object:
    from wiseseg.data import open_dataset

    ds = open_dataset(args.data, skip_bad=args.skip_bad, progress=not args.quiet)
    if ds.skipped:
        print(f"warning: skipped {len(ds.skipped)} bad item(s) in {ds.root}:", file=sys.stderr)
        for s in ds.skipped:
            print(f"  {s.path}: {s.problem}", file=sys.stderr)
    return ds


# --------------------------------------------------------------------------- data commands

@command("make-shapes", "generate the built-in synthetic shapes dataset (VOC layout)")
def cmd_make_shapes(args) -> int:
    from wiseseg.data.shapes import ShapesConfig, write_shapes

    cfg = ShapesConfig(train=args.train, val=args.val, size=args.size, seed=args.seed,
                       num_classes=args.classes)
    out = write_shapes(Path(args.out), cfg, progress=not args.quiet)
    print(f"wrote {cfg.train} train + {cfg.val} val images ({cfg.size}×{cfg.size}, "
          f"{cfg.num_classes} classes) to {out}")
    return 0


def _cfg_make_shapes(p: argparse.ArgumentParser) -> None:
    from wiseseg.data.shapes import ShapesConfig

    d = ShapesConfig()
    p.add_argument("out", help="output directory (must not exist or be empty)")
    p.add_argument("--train", type=int, default=d.train, help=f"train images ({d.train})")
    p.add_argument("--val", type=int, default=d.val, help=f"val images ({d.val})")
    p.add_argument("--size", type=int, default=d.size, help=f"image side in px ({d.size})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--classes", type=int, default=d.num_classes, help="number of shape classes")


cmd_make_shapes.configure = _cfg_make_shapes


@command("data-stats", "print per-split statistics of a dataset")
def cmd_data_stats(args) -> int:
    from wiseseg.data.stats import format_stats, split_stats

    ds = _open(args)
    splits = [args.split] if args.split else ds.splits
    stats = {s: split_stats(ds, s) for s in splits}
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(format_stats(ds, stats))
    return 0


def _cfg_data_stats(p: argparse.ArgumentParser) -> None:
    _add_data_args(p)
    p.add_argument("--split", default=None, help="only this split (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


cmd_data_stats.configure = _cfg_data_stats


# --------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    from wiseseg import __version__

    parser = argparse.ArgumentParser(
        prog="wiseseg",
        description="Instance segmentation from image-level labels (WISE).",
    )
    parser.add_argument("--version", action="version", version=f"wiseseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, fn) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        getattr(fn, "configure", lambda _p: None)(p)
        p.set_defaults(func=fn)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.verbose else "%(message)s",
    )
    debug = args.debug or os.environ.get("WISESEG_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except WisesegError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (finished work is kept; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
