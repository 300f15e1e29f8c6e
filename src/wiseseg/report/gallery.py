"""Prediction overlays (``predict --vis``) and the report's gallery rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt

from wiseseg import rle
from wiseseg.data.images import load_image
from wiseseg.report.overlays import draw_instances, save_figure


def group_by_image(preds: Sequence[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for p in preds:
        out.setdefault(int(p["image_id"]), []).append(p)
    return out


def write_prediction_overlays(preds: Sequence[dict], paths: dict[int, str | Path],
                              classes: Sequence[str], category_ids: Sequence[int],
                              out_dir: Path, min_score: float = 0.5) -> int:
    """One PNG per image: the image with its predictions of score ≥ ``min_score``."""
    by_image = group_by_image(preds)
    names = dict(zip(category_ids, classes))
    for iid, path in paths.items():
        image = load_image(path)
        shown = sorted((p for p in by_image.get(iid, []) if p["score"] >= min_score),
                       key=lambda p: p["score"])
        masks = rle.decode_many([p["segmentation"] for p in shown], image.shape[:2])
        fig, ax = plt.subplots(figsize=(4, 4 * image.shape[0] / max(1, image.shape[1])))
        draw_instances(ax, image, masks, [names.get(p["category_id"], "?") for p in shown],
                       [p["score"] for p in shown], title=f"{Path(str(path)).name}: "
                       f"{len(shown)} ≥ {min_score}")
        save_figure(fig, out_dir / f"{Path(str(path)).stem}.png")
    return len(paths)
