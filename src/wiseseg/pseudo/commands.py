"""``pseudo-masks`` (peaks × proposals → pseudo-label COCO file) and ``pseudo-quality``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wiseseg.commandline import (
    add_data_args,
    add_run_args,
    command,
    open_dataset_from_args,
    run_config,
)


def _cfg_pseudo(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    add_run_args(p, preset=False)
    p.add_argument("--classifier", required=True, help="classifier model.pt (for the peaks)")
    p.add_argument("--proposals", required=True, help="proposal directory (wiseseg proposals)")
    p.add_argument("--out", required=True, help="pseudo-label COCO JSON to write")
    p.add_argument("--split", default="train", help="training split (default: train)")
    p.add_argument("--peaks", default=None, help="use this peaks.json instead of computing")
    p.add_argument("--mode", choices=("sample", "argmax", "fixed"), default=None,
                   help="sampling mode recorded in the file (the draw itself is made by "
                        "train-segmenter --mode; default: preset)")


@command("pseudo-masks", "build pseudo masks from CAM peaks and proposals (COCO JSON)",
         _cfg_pseudo)
def cmd_pseudo_masks(args) -> int:
    cfg = run_config(args, section="pseudo")  # before the imports of torch (seconds)
    from wiseseg.classifier.model_io import check_classes, load_classifier
    from wiseseg.classifier.peaks import compute_peaks, read_peaks
    from wiseseg.engine.reproducibility import resolve_device
    from wiseseg.proposals import ProposalStore
    from wiseseg.pseudo.labels import build_pseudo_images, to_coco, write_pseudo

    if args.mode:
        cfg["pseudo"]["mode"] = args.mode
    ds = open_dataset_from_args(args)
    split = ds.segmenter_view(args.split, "pseudo")
    device = resolve_device(args.device or cfg["device"])
    model, ccfg, classes = load_classifier(args.classifier, device)
    check_classes(args.classifier, classes, ds.classes)
    if args.peaks:
        from wiseseg.peaks_file import check_peaks_for

        peaks = read_peaks(args.peaks)
        check_peaks_for(args.peaks, peaks, ds.classes, ds.weak(args.split).records)
    else:
        peaks = compute_peaks(model, split, ccfg["input_size"], cfg["peaks"], use_labels=True,
                              device=device, progress=not args.quiet,
                              category_ids=ds.category_ids)
        peaks["by_id"] = {im["image_id"]: im["peaks"] for im in peaks["images"]}
    store = ProposalStore.open(args.proposals)
    retrieval_fn = None
    if int(cfg["pseudo"].get("prm_candidates", 0) or 0) > 0:
        from wiseseg.inference.prm_baseline import RetrievalSettings, retrieval_function

        retrieval_fn = retrieval_function(model, ccfg["input_size"],
                                          RetrievalSettings.from_config(cfg["prm"]), device)
    cam_fn = None
    if float(cfg["pseudo"].get("cam_overlap", 0) or 0) > 0:
        from wiseseg.classifier.peaks import cam_function

        cam_fn = cam_function(model, ccfg["input_size"], cfg["peaks"], device)
    images, stats = build_pseudo_images(split, peaks["by_id"], store, cfg["pseudo"],
                                        progress=not args.quiet, retrieval_fn=retrieval_fn,
                                        cam_fn=cam_fn)
    coco = to_coco(images, split, ds.category_ids, stats, dict(cfg["pseudo"]))
    write_pseudo(args.out, coco)
    s = stats.as_dict()
    print(f"{len(coco['annotations'])} pseudo instances in {len(images)} images → {args.out}; "
          f"of {s['peaks']} peaks, {s['dropped_absent_class']} were of classes absent from the "
          f"image label and {s['without_candidate']} had no candidate proposal (listed in the "
          f"file under wiseseg.peaks_without_candidate)")
    return 0


def _cfg_quality(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--split", default="train", help="split the pseudo masks are for")
    p.add_argument("--pseudo", required=True, help="pseudo-label COCO JSON")
    p.add_argument("--checkpoint", default=None,
                   help="Mask R-CNN trained on them: also score its predictions on the same "
                        "images (the paper's Table 3)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the numbers as JSON")


@command("pseudo-quality", "score pseudo masks (and the model trained on them) against GT",
         _cfg_quality)
def cmd_pseudo_quality(args) -> int:
    from wiseseg.pseudo.quality import pseudo_quality

    ds = open_dataset_from_args(args)
    res = pseudo_quality(ds, args.split, args.pseudo, checkpoint=args.checkpoint,
                         device=args.device, progress=not args.quiet)
    for k, v in res.items():
        if isinstance(v, float):
            print(f"{k:>28}: {v:.4f}")
    if args.out:
        from wiseseg.io import atomic_write_json

        atomic_write_json(Path(args.out), res, indent=2)
    else:
        print(json.dumps({k: v for k, v in res.items() if not isinstance(v, float)}))
    return 0
