"""``train-segmenter``: Mask R-CNN on pseudo masks, or on true masks (the reference)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wiseseg.commandline import (
    add_backbone_args,
    add_data_args,
    add_run_args,
    command,
    open_dataset_from_args,
    resolve_auto_config,
    run_config,
)


def _cfg(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_run_args(p)
    add_backbone_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pseudo", help="pseudo-label COCO JSON (from pseudo-masks)")
    src.add_argument("--masks", choices=("gt",), help="train on ground-truth masks instead")
    p.add_argument("--out", required=True, help="output directory (model.pt, checkpoints/, ...)")
    p.add_argument("--split", default="train", help="training split (default: train)")
    p.add_argument("--mode", choices=("sample", "argmax", "fixed"), default=None,
                   help="how pseudo masks are drawn from their candidates (default: preset)")


@command("train-segmenter", "train Mask R-CNN on pseudo masks (or --masks gt)", _cfg)
def cmd_train_segmenter(args) -> int:
    cfg = run_config(args, section="segmenter")  # before the imports of torch (seconds)
    from wiseseg.config import save_config
    from wiseseg.engine.distributed import launched_as_main
    from wiseseg.pseudo.labels import pseudo_view, read_pseudo
    from wiseseg.segmenter.train import segmenter_settings, train_segmenter

    if args.mode:
        cfg["segmenter"]["mode"] = args.mode
    ds = open_dataset_from_args(args)
    auto_epochs = cfg["segmenter"].get("epochs") == "auto"
    cfg = resolve_auto_config(cfg, ds, args.split, args.quiet)
    masks = "pseudo" if args.pseudo else "gt"
    include: set[int] = set()
    if args.pseudo:  # with the partially labelled images it lists (pseudo.partial_labels)
        split = pseudo_view(args.pseudo, ds, args.split)
        include = {r.id for r in split.records if r.unknown}
        instances = read_pseudo(args.pseudo, split, ds.category_ids)
    else:
        instances = dict(ds.ground_truth(args.split))
    # one Mask R-CNN here: an `auto` epoch count follows its own images (true masks: the
    # reference's rule); a number given is used as it is
    settings = segmenter_settings(cfg["segmenter"], masks) if auto_epochs else cfg["segmenter"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(out / "config.yaml", {**cfg, "segmenter": settings})
    recs = ds.segmenter_records(args.split, masks,
                                float(cfg["segmenter"].get("negatives", 1.0)), include)
    path = train_segmenter(recs, instances, ds.classes, settings, out,
                           masks=masks, seed=cfg["seed"], deterministic=cfg["deterministic"],
                           device=cfg["device"], resume=not args.no_resume,
                           progress=not args.quiet, full_config=cfg)
    if launched_as_main():  # under torchrun, rank 0 alone wrote it
        print(f"Mask R-CNN ({masks} masks) saved to {path}")
    return 0
