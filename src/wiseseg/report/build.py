"""RUN/report.html: one self-contained page with the paper's tables and figures for a run.

Sections: results (Table 1), per-class AP50 (Table 2), pseudo-mask analysis (Table 3) with the
intermediate quality numbers, AP50 by size / count (Fig. 5), galleries (Figs. 1 and 4),
training curves, time per stage, environment and config. Every input is optional: a missing
file drops its table, figure or gallery column and says so, because a report of a partial run
(or of a dataset without masks) is still worth reading.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from wiseseg.data.dataset import Dataset, ImageRecord
from wiseseg.data.images import load_image
from wiseseg.io import atomic_write_text, read_json
from wiseseg.report import html as H
from wiseseg.report.collect import METHOD_LABELS, STAGE_ORDER
from wiseseg.report.figures import (
    Column,
    cam_panel,
    curves_png,
    gallery_png,
    image_panel,
    instances_panel,
)
from wiseseg.report.gallery import group_by_image

log = logging.getLogger(__name__)

#: Predictions drawn in the galleries score at least this (as ``predict --vis``).
GALLERY_MIN_SCORE = 0.5
#: Marks a section whose drawing raised (the tests look for it).
FAILED = "This section could not be built"

METRIC_NOTE = (
    "Mask AP at IoU t (mAP25/50/75, percent): per class, predictions over the validation split "
    "are ranked by score and matched greedily to the unmatched ground-truth instance of their "
    "class with the highest mask IoU ≥ t; AP is the area under the monotone precision envelope "
    "(all points, PASCAL VOC 2010+); the mean is over classes with instances. Void / crowd "
    "pixels are removed before IoU. ABO (average best overlap): per class, the mean over "
    "instances of the best IoU with any prediction of that class, averaged over classes; it "
    "rewards recall only. Definitions: wiseseg.evaluation.evaluator.")


def write_report(run_dir: str | Path, ds: Dataset, cfg: dict, metrics: dict,
                 progress: bool = True) -> Path:
    """Build RUN/report.html from ``metrics`` (RUN/metrics.json) and the stage outputs.

    Args:
        run_dir: the run directory.
        ds: the run's dataset (images for the galleries, ground truth when it has some).
        cfg: the merged configuration (``report.gallery``: images per gallery).
        metrics: :func:`wiseseg.report.collect.collect_metrics` of the run.
        progress: show a progress bar while the galleries are drawn.

    Returns:
        The path of the written report.
    """
    run_dir = Path(run_dir)
    n_gallery = int((cfg.get("report") or {}).get("gallery", 8))
    train, val = cfg["data"]["train_split"], cfg["data"]["val_split"]
    sections = [
        ("results", "Results (Table 1)", lambda: _results(metrics)),
        ("per-class", "Per-class AP50 (Table 2)", lambda: _per_class(metrics, ds)),
        ("pseudo", "Pseudo masks and intermediate quality (Table 3)", lambda: _pseudo(metrics)),
        ("breakdowns", "AP50 by object size and objects per image (Fig. 5)",
         lambda: _breakdowns(run_dir, metrics)),
        ("gallery-train", f"Gallery: training images ({train})",
         lambda: _train_gallery(run_dir, ds, train, n_gallery, progress)),
        ("gallery-val", f"Gallery: validation images ({val})",
         lambda: _val_gallery(run_dir, ds, val, n_gallery, progress)),
        ("curves", "Training curves", lambda: _curves(metrics)),
        ("time", "Time per stage", lambda: _timing(metrics)),
        ("environment", "Environment and configuration", lambda: _environment(run_dir, metrics,
                                                                                cfg)),
    ]
    built = [(anchor, title, _guarded(title, fn)) for anchor, title, fn in sections]
    # run_pipeline takes data.spec out of cfg (it is not a setting); config.yaml keeps it.
    saved = _saved_config(run_dir)
    spec = (saved.get("data") or {}).get("spec") or (cfg.get("data") or {}).get("spec") \
        or str(ds.root)
    sizes = ", ".join(f"{s}: {len(ds.records(s))} images" for s in ds.splits)
    subtitle = f"run {run_dir.resolve().name} · data {spec} ({sizes}) · preset " \
               f"{cfg.get('preset', '?')}"
    page = H.page("wiseseg report", subtitle, built)
    return atomic_write_text(run_dir / "report.html", page)


def _saved_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    return data if isinstance(data, dict) else {}


def _guarded(title: str, build: Callable[[], str]) -> str:
    # The report is a view over results already on disk: one unreadable file should cost one
    # section, not the page (nor, at the end of `wiseseg run`, the run's exit status).
    try:
        return build()
    except Exception as e:  # the message goes into the page and the log
        log.warning("report section %r failed: %s", title, e, exc_info=True)
        return H.note(f"{FAILED}: {type(e).__name__}: {e}")


# ----------------------------------------------------------------------------- tables
def _results(metrics: dict) -> str:
    results = metrics.get("results") or {}
    rows = [(label, *(H.pct(results[label].get(k)) for k in ("mAP25", "mAP50", "mAP75", "ABO")))
            for label in METHOD_LABELS.values() if label in results]
    if not rows:
        return H.note("No evaluation: the validation split has no ground-truth masks (or the "
                      "evaluate stage has not run).")
    return H.table(["Method", "mAP25", "mAP50", "mAP75", "ABO"], rows) + H.note(METRIC_NOTE)


def _per_class(metrics: dict, ds: Dataset) -> str:
    methods = {k: v for k, v in (metrics.get("methods") or {}).items() if v.get("per_class")}
    if not methods:
        return H.note("No per-class results (no evaluation).")
    first = next(iter(methods.values()))["per_class"]
    classes = [c for c in ds.classes if c in first] + [c for c in first if c not in ds.classes]
    rows = [(c, first[c].get("n_gt", "–"),
             *(H.pct((m["per_class"].get(c) or {}).get("AP50")) for m in methods.values()))
            for c in classes]
    rows.append(("mean (mAP50)", sum(int(first[c].get("n_gt") or 0) for c in classes),
                 *(H.pct(m.get("mAP50")) for m in methods.values())))
    return (H.table(["Class", "instances", *methods], rows)
            + H.note("AP50 in percent on the validation split; '–': no instance of the class."))


def _pseudo(metrics: dict) -> str:
    parts = []
    pq = metrics.get("pseudo_quality")
    if pq:
        rows = [(label, *(H.pct(pq.get(f"{p}_{k}")) for k in ("mAP25", "mAP50", "mAP75", "ABO")),
                 H.num(pq.get(f"{p}_count_error")), H.num(pq.get(f"{p}_instances")))
                for p, label in (("pseudo", "Pseudo masks"), ("model", "WISE predictions"))
                if f"{p}_mAP50" in pq]
        parts += [H.table(["On the training images", "mAP25", "mAP50", "mAP75", "ABO",
                           "count error", "masks"], rows),
                  H.note("Pseudo masks: the arg-max mask of each peak (duplicates left out). "
                         "WISE predictions: the Mask R-CNN trained on them, run on the same "
                         "images. Count error: mean |#masks − #GT| over the (image, class) "
                         "pairs of the image-level labels; predictions counted at score ≥ 0.5.")]
    else:
        parts.append(H.note("No pseudo-mask analysis: it needs ground-truth masks on the "
                            "training split (stage pseudo_quality)."))
    if ps := metrics.get("pseudo"):
        parts += ["<h3>Pseudo labels</h3>", H.kv_table([
            ("peaks", ps.get("peaks")),
            ("peaks dropped (class not in the image label)", ps.get("dropped_absent_class")),
            ("peaks without any candidate proposal", ps.get("without_candidate")),
            ("pseudo instances", ps.get("instances")),
            ("images without any instance", ps.get("images_without_instance"))])]
    if pk := metrics.get("peaks"):
        rows = [(split, H.pct(q.get("peak_recall")), H.pct(q.get("peak_precision")),
                 H.num(q.get("count_mae")), H.num(q.get("peaks")), H.num(q.get("instances")))
                for split, q in pk.items()]
        parts += ["<h3>Peaks (stage 1)</h3>",
                  H.table(["Split", "recall", "precision", "count MAE", "peaks", "instances"],
                          rows),
                  H.note("Recall: instances containing a peak of their class; precision: peaks "
                         "inside an instance of their class (percent).")]
    if pr := metrics.get("proposals"):
        rec = pr.get("recall") or {}
        ks = list(next(iter(rec.values()), {}))
        rows = [(f"IoU ≥ {t}", *(H.pct(v.get(k)) for k in ks)) for t, v in rec.items()]
        parts += ["<h3>Proposals (validation images)</h3>",
                  H.kv_table([("ABO (percent)", H.pct(pr.get("abo"))),
                             ("proposals per image", H.num(pr.get("proposals_per_image"), 1)),
                             ("seconds per image", H.num(pr.get("seconds_per_image"), 3)),
                             ("objectness AUC", H.num(pr.get("objectness_auc"), 3))])]
        if rows:
            parts.append(H.table(["Recall (percent)", *(f"top {k}" for k in ks)], rows))
    if rf := metrics.get("refine"):
        parts += ["<h3>Refinement (WISE+Refine)</h3>", H.kv_table([
            ("predictions", rf.get("predictions")),
            ("replaced by a proposal", rf.get("refined")),
            ("kept (no proposal with enough IoU)", rf.get("kept")),
            ("mean best proposal IoU", H.num(rf.get("mean_best_iou"), 3))])]
    return "".join(parts)


def _breakdowns(run_dir: Path, metrics: dict) -> str:
    pngs = [run_dir / "evaluate" / n for n in ("ap50_by_size.png", "ap50_by_count.png")]
    found = [p for p in pngs if p.is_file()]
    if not found:
        return H.note("Skipped: RUN/evaluate/ap50_by_size.png and ap50_by_count.png are absent "
                      "(no evaluation).")
    parts = ['<div class="row">' + "".join(H.png_file_img(p, p.stem) for p in found) + "</div>"]
    methods = {k: v for k, v in (metrics.get("methods") or {}).items()
               if v.get("by_size") and v.get("by_count")}
    if methods:
        first = next(iter(methods.values()))
        bins = [("by_size", b) for b in first["by_size"]] + \
               [("by_count", b) for b in first["by_count"]]
        head = [f"{b} ({'size' if k == 'by_size' else 'objects'})" for k, b in bins]
        rows = [(label, *(H.pct((m[k].get(b) or {}).get("mAP50")) for k, b in bins))
                for label, m in methods.items()]
        parts.append(H.table(["AP50 (percent)", *head], rows))
    parts.append(H.note("Size: instance area as a fraction of the image; objects: instances "
                        "per image."))
    return "".join(parts)


def _curves(metrics: dict) -> str:
    titles = {"classifier": "classifier (PeakCAM)", "wise": "WISE Mask R-CNN (pseudo masks)",
              "reference": "Mask R-CNN (GT masks)"}
    png = curves_png(metrics.get("curves") or {}, titles)
    if png is None:
        return H.note("No training curves (no metrics.jsonl with a loss).")
    return H.png_img(png, "training loss vs step")


def _duration(seconds: float) -> str:
    m, s = divmod(float(seconds), 60)
    return f"{seconds:.1f} s" if m == 0 else f"{seconds:.1f} s ({int(m)} min {s:02.0f} s)"


def _timing(metrics: dict) -> str:
    stages = metrics.get("stages") or {}
    order = [s for s in STAGE_ORDER if s in stages] + [s for s in stages if s not in STAGE_ORDER]
    secs = {s: float(stages[s].get("seconds") or 0) for s in order}
    if not secs:
        return H.note("No stage has finished.")
    longest = max(secs.values()) or 1.0
    # Bars as inline CSS widths: crisp at any zoom and no image to embed.
    bars = {s: f'<td class="barcell"><span class="bar" style="width:'
               f'{300 * secs[s] / longest:.0f}px"></span></td>' for s in order}
    rows = [(H.esc(s), f"{secs[s]:.1f}", bars[s],
             "done" if stages[s].get("complete") else "incomplete") for s in order]
    total = metrics.get("total_seconds", sum(secs.values()))
    rows.append(("<b>total</b>", f"<b>{total:.1f}</b>", "", H.esc(_duration(total))))
    out = H.table(["Stage", "seconds", "", "status"], rows, raw=True)
    skipped = (metrics.get("run") or {}).get("skipped")
    if skipped:
        out += H.note(f"Stages not run: {', '.join(map(str, skipped))}.")
    return out + H.note("Seconds of the run that computed each stage (cached stages keep the "
                        "time of the run that made them).")


def _environment(run_dir: Path, metrics: dict, cfg: dict) -> str:
    env = dict(metrics.get("environment") or {})
    env.setdefault("cpu_count", str(os.cpu_count()))
    out = H.kv_table(sorted(env.items())) if env else H.note("Unknown.")
    cfg_path = run_dir / "config.yaml"
    text = cfg_path.read_text() if cfg_path.is_file() else yaml.safe_dump(cfg, sort_keys=False)
    auto = (metrics.get("auto") or {}).get("notes")
    if auto:
        out += H.details("settings chosen from the data (auto.json)", H.pre("\n".join(auto)))
    return out + H.details("merged configuration (config.yaml)", H.pre(text))


# ----------------------------------------------------------------------------- galleries
def pick_records(records: tuple[ImageRecord, ...], n: int) -> list[ImageRecord]:
    """``n`` records evenly spaced over the split (deterministic, covers all of it)."""
    if n <= 0 or not records:
        return []
    if n >= len(records):
        return list(records)
    idx = np.linspace(0, len(records) - 1, n).round().astype(int)
    return [records[i] for i in dict.fromkeys(idx.tolist())]


def _predictions(path: Path, min_score: float) -> dict[int, list[dict]] | None:
    if not path.is_file():
        return None
    return group_by_image([p for p in read_json(path, "predictions")
                           if float(p.get("score", 0)) >= min_score])


def _gt_instances(ds: Dataset, split: str, records: list[ImageRecord]) -> dict[int, list[dict]]:
    """Ground truth of the gallery images in the shape of predictions (category ids)."""
    cids, gts = ds.category_ids, ds.ground_truth(split)
    return {r.id: [{"segmentation": i.segmentation, "category_id": cids[i.category]}
                   for i in gts[r.id].instances] for r in records if r.id in gts}


def _gt_column(ds: Dataset, split: str, records: list[ImageRecord], names: dict[int, str],
               columns: list[Column], notes: list[str]) -> None:
    if ds.has_ground_truth(split):
        columns.append(Column("ground truth", instances_panel(
            _gt_instances(ds, split, records), names, with_scores=False)))
    else:
        notes.append(f"No ground-truth column: split {split!r} has no masks.")


def _render_gallery(rows: list[tuple[ImageRecord, np.ndarray]], columns: list[Column],
                    notes: list[str], progress: bool, what: str) -> str:
    bar = tqdm(total=len(rows), desc=f"report {what}", unit="img", disable=not progress)
    png = gallery_png(rows, [Column("image", image_panel), *columns], tick=lambda: bar.update())
    bar.close()
    return (H.png_img(png, f"{what} gallery")
            + H.note(f"{len(rows)} images evenly spaced over the split; predictions of "
                     f"score ≥ {GALLERY_MIN_SCORE}.") + "".join(H.note(n) for n in notes))


def _train_columns(run_dir: Path, ds: Dataset, split: str,
                   rows: list[tuple[ImageRecord, np.ndarray]]) -> tuple[list[Column], list[str]]:
    """The training gallery's columns after "image": CAM + peaks, pseudo masks, WISE, GT."""
    records = [r for r, _ in rows]
    names = dict(zip(ds.category_ids, ds.classes))
    columns, notes = [], []
    model_path = run_dir / "classifier" / "model.pt"
    if model_path.is_file():
        peaks_path = run_dir / "peaks" / f"peaks_{split}.json"
        peaks = None
        if peaks_path.is_file():
            from wiseseg.classifier.peaks import read_peaks

            peaks = read_peaks(peaks_path)["by_id"]
        else:
            notes.append(f"CAMs without peaks: {peaks_path.relative_to(run_dir)} is missing.")
        columns.append(Column("CAM + peaks", cam_panel(_cams(model_path, rows), peaks)))
    else:
        notes.append("No CAM column: classifier/model.pt is missing.")
    pseudo_path = run_dir / "pseudo" / "pseudo.json"
    if pseudo_path.is_file():
        anns = [a for a in read_json(pseudo_path, "pseudo labels")["annotations"]
                if not a.get("ignore", 0)]
        columns.append(Column("pseudo masks", instances_panel(group_by_image(anns), names,
                                                              with_scores=False)))
    else:
        notes.append("No pseudo-mask column: pseudo/pseudo.json is missing.")
    wise = _predictions(run_dir / "pseudo_quality" / "wise_train.json", GALLERY_MIN_SCORE)
    if wise is not None:
        columns.append(Column("WISE prediction", instances_panel(wise, names, True)))
    else:
        notes.append("No WISE column: pseudo_quality/wise_train.json is missing (that stage "
                     "runs when the training split has ground-truth masks).")
    _gt_column(ds, split, records, names, columns, notes)
    return columns, notes


def pipeline_figure(run_dir: str | Path, ds: Dataset, split: str, records: list[ImageRecord]
                    ) -> bytes:
    """PNG of training images through the pipeline (the README's picture): image | CAM +
    peaks | pseudo masks | WISE prediction | ground truth."""
    rows = [(r, load_image(r.path)) for r in records]
    columns, _ = _train_columns(Path(run_dir), ds, split, rows)
    return gallery_png(rows, [Column("image", image_panel), *columns])


def _train_gallery(run_dir: Path, ds: Dataset, split: str, n: int, progress: bool) -> str:
    if split not in ds.splits:
        return H.note(f"No split {split!r} in the dataset.")
    records = pick_records(ds.records(split), n)
    if not records:
        return H.note("No gallery (report.gallery is 0).")
    rows = [(r, load_image(r.path)) for r in records]
    columns, notes = _train_columns(run_dir, ds, split, rows)
    if not columns:
        return H.note("Nothing to show: " + " ".join(notes))
    return _render_gallery(rows, columns, notes, progress, "train")


def _cams(model_path: Path, rows: list[tuple[ImageRecord, np.ndarray]]
          ) -> dict[int, tuple[np.ndarray, tuple[float, float, float, float]]]:
    """The classifier's CAMs (``C×h×w``) of the gallery images with the extent that puts
    their cells where the peaks' geometry does; on the CPU (a handful of images; keeps the
    report independent of the training device)."""
    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.classifier.peaks import cam_geometry, image_cams

    model, ccfg, _ = load_classifier(model_path, "cpu")
    size = int(ccfg["input_size"])
    cams = image_cams(model, [im for _, im in rows], size, "cpu")
    return {r.id: (c.numpy(), cam_geometry(model, c, size).image_extent((r.height, r.width)))
            for (r, _), c in zip(rows, cams)}


def _val_gallery(run_dir: Path, ds: Dataset, split: str, n: int, progress: bool) -> str:
    if split not in ds.splits:
        return H.note(f"No split {split!r} in the dataset.")
    records = pick_records(ds.records(split), n)
    if not records:
        return H.note("No gallery (report.gallery is 0).")
    rows = [(r, load_image(r.path)) for r in records]
    names = dict(zip(ds.category_ids, ds.classes))
    files = {"PRM": "prm/prm.json", "WISE": "predict_wise/wise.json",
             "WISE+Refine": "predict_wise/wise_refine.json",
             "Mask R-CNN (GT)": "predict_reference/reference.json"}
    columns, notes = [], []
    for label, rel in files.items():
        preds = _predictions(run_dir / rel, GALLERY_MIN_SCORE)
        if preds is None:
            notes.append(f"No {label} column: {rel} is missing.")
        else:
            columns.append(Column(label, instances_panel(preds, names, True)))
    _gt_column(ds, split, records, names, columns, notes)
    if not columns:
        return H.note("Nothing to show: " + " ".join(notes))
    return _render_gallery(rows, columns, notes, progress, "validation")
