"""Stage-1 commands: ``train-classifier``, ``peaks``, ``show-peaks``."""

from __future__ import annotations

import argparse
import sys
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


def _cfg_train(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_run_args(p)
    add_backbone_args(p)
    p.add_argument("--out", required=True, help="output directory (model.pt, checkpoints/, "
                   "metrics.jsonl, tensorboard/, config.yaml)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val", help="for the image-level mAP ('' = none)")


@command("train-classifier", "train the PeakCAM classifier on image-level labels", _cfg_train)
def cmd_train_classifier(args) -> int:
    cfg = run_config(args, section="classifier")  # before the imports of torch (seconds)
    from wiseseg.classifier.train import train_classifier
    from wiseseg.config import save_config
    from wiseseg.engine.distributed import launched_as_main

    ds = open_dataset_from_args(args)
    cfg = resolve_auto_config(cfg, ds, args.train_split, args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(out / "config.yaml", cfg)
    val = ds.weak(args.val_split) if args.val_split and ds.has_split(args.val_split) else None
    path = train_classifier(ds.weak(args.train_split), cfg["classifier"], out, val=val,
                            seed=cfg["seed"], deterministic=cfg["deterministic"],
                            device=cfg["device"], resume=not args.no_resume,
                            progress=not args.quiet, full_config=cfg)
    if launched_as_main():  # under torchrun, rank 0 alone wrote it
        print(f"classifier saved to {path}")
    return 0


def _cfg_peaks(p: argparse.ArgumentParser) -> None:
    add_data_args(p, split=True)
    add_run_args(p, preset=False)
    p.add_argument("--checkpoint", required=True, help="classifier model.pt")
    p.add_argument("--out", required=True, help="peaks JSON to write")
    p.add_argument("--predicted-classes", action="store_true",
                   help="take peaks of the classes the classifier predicts instead of the "
                        "image-level labels")


@command("peaks", "find the CAM peaks of every image of a split (peaks.json)", _cfg_peaks)
def cmd_peaks(args) -> int:
    # settings before the imports of torch (seconds)
    pcfg = run_config(args, section="peaks", preset_name=args.preset)["peaks"]
    from wiseseg.classifier.model_io import check_classes, load_classifier
    from wiseseg.classifier.peaks import compute_peaks, write_peaks
    from wiseseg.engine.reproducibility import resolve_device

    device = resolve_device(args.device or "auto")
    model, ccfg, classes = load_classifier(args.checkpoint, device)
    ds = open_dataset_from_args(args)
    check_classes(args.checkpoint, classes, ds.classes)
    peaks = compute_peaks(model, ds.weak(args.split), ccfg["input_size"], pcfg,
                          use_labels=not args.predicted_classes, device=device,
                          progress=not args.quiet, category_ids=ds.category_ids)
    write_peaks(args.out, peaks)
    n = sum(len(im["peaks"]) for im in peaks["images"])
    print(f"{n} peaks in {len(peaks['images'])} images written to {args.out}")
    return 0


def _cfg_show(p: argparse.ArgumentParser) -> None:
    add_data_args(p, split=True)
    add_run_args(p, preset=False)
    p.add_argument("--checkpoint", required=True, help="classifier model.pt")
    p.add_argument("--out", required=True, help="directory for the PNGs")
    p.add_argument("--limit", type=int, default=20, help="number of images (default 20)")


@command("show-peaks", "draw CAM heat maps with their peaks over images (PNGs)", _cfg_show)
def cmd_show_peaks(args) -> int:
    from wiseseg.classifier.model_io import check_classes, load_classifier
    from wiseseg.classifier.peaks import cam_geometry, image_cams, peaks_for_image
    from wiseseg.data.images import load_image
    from wiseseg.engine.reproducibility import resolve_device
    from wiseseg.report.overlays import cam_figure, save_figure

    device = resolve_device(args.device or "auto")
    model, ccfg, classes = load_classifier(args.checkpoint, device)
    ds = open_dataset_from_args(args)
    check_classes(args.checkpoint, classes, ds.classes)
    pcfg = run_config(args, section="peaks", preset_name=args.preset)["peaks"]
    out = Path(args.out)
    recs = ds.records(args.split)[: max(0, args.limit)]
    for r in recs:
        image = load_image(r.path)
        cam = image_cams(model, [image], ccfg["input_size"], device,
                         flip=bool(pcfg.get("flip", False)))[0]
        peaks = [{"class": p.category, "y": p.y, "x": p.x}
                 for p in peaks_for_image(model, cam, r, pcfg, use_labels=True,
                                          input_size=ccfg["input_size"])]
        shown = sorted(r.labels) or [int(cam.amax(dim=(1, 2)).argmax())]
        extent = cam_geometry(model, cam, ccfg["input_size"]).image_extent((r.height, r.width))
        fig = cam_figure(image, cam.numpy(), classes, shown, peaks, extent)
        save_figure(fig, out / f"{Path(r.name).stem}.png")
    print(f"wrote {len(recs)} images to {out}", file=sys.stdout)
    return 0
