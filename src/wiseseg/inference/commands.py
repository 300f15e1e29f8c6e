"""``predict`` (Mask R-CNN → COCO results, optional refinement and overlays) and
``prm-baseline``."""

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
from wiseseg.errors import WisesegError


def _cfg_predict(p: argparse.ArgumentParser) -> None:
    add_data_args(p, split=True)
    add_run_args(p, preset=False)
    p.add_argument("--checkpoint", required=True, help="Mask R-CNN model.pt")
    p.add_argument("--images", nargs="+", default=None,
                   help="image files instead of a dataset split")
    p.add_argument("--out", required=True, help="COCO results JSON to write")
    p.add_argument("--refine", action="store_true",
                   help="replace each mask by the proposal of highest IoU (WISE+Refine)")
    p.add_argument("--proposals", default=None, help="proposal directory for --refine")
    p.add_argument("--vis", default=None, help="write overlay PNGs into this directory")
    p.add_argument("--vis-min-score", type=float, default=0.5,
                   help="score threshold of the overlays (default 0.5)")


@command("predict", "run Mask R-CNN on a split or on image files (COCO results JSON)",
         _cfg_predict)
def cmd_predict(args) -> int:
    if args.refine and not args.proposals:
        raise WisesegError("--refine needs --proposals DIR (the proposals of these images)")
    if args.images and args.refine:
        raise WisesegError("--refine works on a dataset split (proposals are stored by image "
                           "id); drop --images or --refine")
    pcfg = run_config(args, section="predict")["predict"]  # before the imports of torch
    from wiseseg.engine.reproducibility import resolve_device
    from wiseseg.inference.predict import paths_as_items, predict, records_as_items
    from wiseseg.inference.refine import refine_all, refine_summary
    from wiseseg.io import atomic_write_json
    from wiseseg.segmenter.model_io import load_segmenter

    device = resolve_device(args.device or "auto")
    model, _, classes, _ = load_segmenter(args.checkpoint, device)
    if args.images:
        entries, items = paths_as_items(args.images)
        category_ids, total, names = list(range(1, len(classes) + 1)), len(entries), classes
    else:
        from wiseseg.classifier.model_io import check_classes

        ds = open_dataset_from_args(args)
        check_classes(args.checkpoint, classes, ds.classes, what="Mask R-CNN")
        recs = ds.records(args.split)
        items, category_ids, total, names = records_as_items(recs), ds.category_ids, \
            len(recs), ds.classes
        entries = ds.coco_images(args.split)
    preds = predict(model, items, category_ids, device=device,
                    batch_size=int(pcfg["batch_size"]),
                    mask_threshold=float(pcfg["mask_threshold"]),
                    min_score=float(pcfg["min_score"]), total=total, progress=not args.quiet,
                    flip=bool(pcfg.get("flip", False)))
    if args.refine:
        from wiseseg.proposals import ProposalStore

        preds = refine_all(preds, ProposalStore.open(args.proposals),
                           float(pcfg["refine_min_iou"]))
        s = refine_summary(preds)
        print(f"refined {s['refined']} of {s['predictions']} masks (kept {s['kept']} whose best "
              f"proposal IoU was < {pcfg['refine_min_iou']})")
    atomic_write_json(args.out, preds)
    print(f"{len(preds)} predictions for {total} images written to {args.out}")
    if args.vis:
        from wiseseg.report.gallery import write_prediction_overlays

        paths = ({e["id"]: e["file_name"] for e in entries} if args.images
                 else {r.id: r.path for r in recs})
        n = write_prediction_overlays(preds, paths, names, category_ids, Path(args.vis),
                                      min_score=args.vis_min_score)
        print(f"{n} overlays written to {args.vis}")
    return 0


def _cfg_prm(p: argparse.ArgumentParser) -> None:
    add_data_args(p, split=True)
    add_run_args(p, preset=False)
    p.add_argument("--classifier", required=True, help="classifier model.pt")
    p.add_argument("--proposals", required=True, help="proposal directory of the split")
    p.add_argument("--out", required=True, help="COCO results JSON to write")


@command("prm-baseline", "PRM: peaks + peak response maps + proposal retrieval (COCO results)",
         _cfg_prm)
def cmd_prm_baseline(args) -> int:
    cfg = run_config(args, section="prm")  # before the imports of torch (seconds)
    from wiseseg.classifier.model_io import check_classes, load_classifier
    from wiseseg.engine.reproducibility import resolve_device
    from wiseseg.inference.prm_baseline import RetrievalSettings, prm_baseline
    from wiseseg.io import atomic_write_json
    from wiseseg.proposals import ProposalStore

    device = resolve_device(args.device or "auto")
    model, ccfg, classes = load_classifier(args.classifier, device)
    ds = open_dataset_from_args(args)
    check_classes(args.classifier, classes, ds.classes)
    preds = prm_baseline(model, ds.records(args.split), ProposalStore.open(args.proposals),
                         ccfg["input_size"], cfg["peaks"], ds.category_ids,
                         RetrievalSettings.from_config(cfg["prm"]), device=device,
                         progress=not args.quiet, workers=int(cfg["prm"].get("workers", 1)),
                         model_path=args.classifier)
    atomic_write_json(args.out, preds)
    print(f"{len(preds)} PRM instances written to {args.out}")
    return 0
