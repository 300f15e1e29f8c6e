"""Mask R-CNN inference → COCO results (``image_id, category_id, segmentation (RLE), bbox
(xywh), score``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord
from wiseseg.data.images import load_image
from wiseseg.data.transforms import to_tensor


def detections_to_results(output: dict[str, torch.Tensor], image_id: int,
                          category_ids: Sequence[int], mask_threshold: float = 0.5,
                          min_score: float = 0.0) -> list[dict]:
    """One image's torchvision detections → COCO result dicts (empty masks dropped, counted
    by the caller through the difference in length if needed)."""
    scores = output["scores"].detach().cpu().numpy()
    keep = scores >= min_score
    if not keep.any():
        return []
    masks = (output["masks"][keep, 0] >= mask_threshold).cpu().numpy()
    labels = output["labels"][keep].cpu().numpy()
    rles = rle.encode_many(masks)
    boxes = rle.to_bbox(rles)
    out = []
    for r, b, lab, s, m in zip(rles, boxes, labels, scores[keep], masks):
        if not m.any():
            continue  # a detection whose mask vanished at the threshold has no segmentation
        out.append({"image_id": int(image_id), "category_id": int(category_ids[int(lab) - 1]),
                    "segmentation": r, "bbox": [float(v) for v in b], "score": float(s)})
    return out


def predict(model, items: Iterable[tuple[int, np.ndarray]], category_ids: Sequence[int],
            device: torch.device | str = "cpu", batch_size: int = 4,
            mask_threshold: float = 0.5, min_score: float = 0.0, total: int | None = None,
            progress: bool = True, flip: bool = False) -> list[dict]:
    """Run Mask R-CNN on ``(image_id, RGB uint8 H×W×3)`` items; any size, batched.
    ``flip``: on each image and its mirror image, merged
    (:func:`~wiseseg.models.flip_tta.detect_with_flip`)."""
    from tqdm import tqdm

    from wiseseg.models.flip_tta import detect_with_flip

    model.eval()
    results: list[dict] = []
    bar = tqdm(total=total, desc="predict", unit="img", disable=not progress)
    batch: list[tuple[int, np.ndarray]] = []

    def flush():
        ims = [to_tensor(im).to(device) for _, im in batch]
        with torch.no_grad():
            outs = detect_with_flip(model, ims) if flip else model(ims)
        for (iid, _), o in zip(batch, outs):
            results.extend(detections_to_results(o, iid, category_ids, mask_threshold,
                                                 min_score))
        bar.update(len(batch))
        batch.clear()

    for item in items:
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    return results


def uniform_size(records: Sequence[ImageRecord]) -> bool:
    """Every image has one size (then a batch is never padded beyond any of its images, and
    predictions from each image's own body features are those of the batched forward)."""
    return len({(r.height, r.width) for r in records}) == 1


def body_cache(model, records: Sequence[ImageRecord], device, path: Path | None,
               progress: bool = True):
    """The float32 maps of the body's fixed levels (:func:`~wiseseg.models.maskrcnn.
    fixed_levels`: all four, or c2–c4 when the upper stages were trained) of ``records`` at
    the model's inference size, with that size (``"size"``: float ``2``), computed once and
    kept in ``path`` — every Mask R-CNN with these fixed levels (WISE's rounds, the
    reference) predicts from them instead of running them again. Keyed by the fixed
    levels' weights, the transform and the images."""
    from wiseseg import __version__
    from wiseseg.config import config_hash
    from wiseseg.engine.feature_cache import FeatureCache, cache_batch_size
    from wiseseg.models.freezing import fold_batchnorm
    from wiseseg.models.maskrcnn import body_features_sized, fixed_levels

    levels = fixed_levels(model)
    if not levels:
        raise ValueError("no level of this Mask R-CNN's body is fixed: nothing to cache")
    body = model.backbone.body
    if len(levels) == 4:  # the whole body (as the caches of earlier versions were keyed)
        state = body.state_dict()
    else:  # the fixed levels' modules only: Mask R-CNNs with other upper stages share it
        state = {f"{lv}.{i}.{k}": v for lv in levels
                 for i, m in enumerate(body.level_modules(lv)) for k, v in m.state_dict().items()}
    fingerprint = config_hash({
        "body": {k: [list(v.shape), float(v.double().sum())] for k, v in state.items()},
        **({"levels": list(levels)} if len(levels) < 4 else {}),
        "transform": [model.transform.min_size, model.transform.max_size,
                      model.transform.image_mean, model.transform.image_std,
                      model.transform.size_divisible],
        "images": [(str(r.path), r.height, r.width) for r in records],
        "dtype": "float32", "version": __version__,
    })

    folded = fold_batchnorm(model.backbone.body).eval()  # the same maps, 1.2–1.3× faster on a CPU

    def compute(indices, flip):
        ims = [to_tensor(load_image(records[i].path)).to(device) for i in indices]
        feats, sizes = body_features_sized(model, ims, folded, levels)
        return [{**f, "size": torch.tensor(sz, dtype=torch.float32)}
                for f, sz in zip(feats, sizes)]

    model.eval()
    return FeatureCache.build(len(records), compute, fingerprint, flips=False,
                              batch_size=cache_batch_size(device), dtype=torch.float32,
                              path=path, progress=progress, desc="body features")


def predict_from_body(model, records: Sequence[ImageRecord], cache,
                      category_ids: Sequence[int], device: torch.device | str = "cpu",
                      batch_size: int = 4, mask_threshold: float = 0.5, min_score: float = 0.0,
                      progress: bool = True, positions: Sequence[int] | None = None
                      ) -> list[dict]:
    """:func:`predict` on ``records`` from their cached body maps (:func:`body_cache`): the
    same results when the images share one size (:func:`uniform_size`), without running
    the body. ``positions``: each record's place in the cache (default: its own place in
    ``records``), when the cache holds more images than are predicted."""
    from tqdm import tqdm

    from wiseseg.models.maskrcnn import detect_from_body

    model.eval()
    results: list[dict] = []
    bar = tqdm(total=len(records), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(records), batch_size):
        idx = range(start, min(len(records), start + batch_size))
        items = [cache.get(i if positions is None else positions[i]) for i in idx]
        feats = [{k: v.to(device) for k, v in f.items() if k != "size"} for f in items]
        sizes = [tuple(int(v) for v in f["size"].tolist()) for f in items]
        with torch.no_grad():
            outs = detect_from_body(model, feats, sizes,
                                    [(records[i].height, records[i].width) for i in idx])
        for i, o in zip(idx, outs):
            results.extend(detections_to_results(o, records[i].id, category_ids,
                                                 mask_threshold, min_score))
        bar.update(len(idx))
    bar.close()
    return results


def records_as_items(records: Iterable[ImageRecord]):
    for r in records:
        yield r.id, load_image(r.path)


def paths_as_items(paths: Sequence[str | Path]) -> tuple[list[dict], Iterable]:
    """Images given on the command line: ids 1..N in the given order (``images`` entries
    record the mapping, as a COCO ``images`` list)."""
    entries = [{"id": i + 1, "file_name": str(p)} for i, p in enumerate(paths)]

    def gen():
        for e in entries:
            img = load_image(e["file_name"])
            e["height"], e["width"] = img.shape[:2]
            yield e["id"], img

    return entries, gen()
