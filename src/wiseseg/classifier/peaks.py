"""Peaks of a trained classifier over a split → ``peaks.json``.

``peaks.json``: ``{"classes": [...], "source": {...}, "images": [{"image_id", "file_name",
"height", "width", "labels": [class indices], "peaks": [{"class", "category_id", "y", "x",
"score", "cell"}]}]}`` with ``y``/``x`` in original-image pixels (integers: the pixel holding
the peak's position, see :mod:`wiseseg.models.cam_geometry`) and ``cell`` the CAM cell
``[i, j]`` the peak came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from wiseseg.data.dataset import ImageRecord, WeakSplit
from wiseseg.data.images import load_image
from wiseseg.data.transforms import resize_image, to_tensor
from wiseseg.io import atomic_write_json, read_json
from wiseseg.models.cam_geometry import CamGeometry
from wiseseg.models.peak_ops import Peak, extract_peaks
from wiseseg.models.peakcam import PeakCAM


def image_cams(model: PeakCAM, images: list, input_size: int, device,
               flip: bool = False, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """CAMs ``B×C×h×w`` (float, CPU) of RGB uint8 images resized to the classifier input;
    ``flip``: averaged with the CAM of the mirrored image, mirrored back (test-time
    augmentation; the geometry is unchanged, every convention being symmetric up to a
    sub-pixel offset). ``scales``: with more than ``(1.0,)``, the mean of the CAMs of the
    images resized to ``scale × input_size`` (each resampled bilinearly, corners aligned, onto
    the ``input_size`` CAM grid, which keeps its geometry): :func:`multiscale_cams`."""
    def at(size: int) -> torch.Tensor:
        x = torch.stack([to_tensor(resize_image(im, (size, size))) for im in images])
        with torch.no_grad():
            cams = model.cams(x.to(device)).float()
            if flip:
                cams = (cams + model.cams(x.flip(-1).to(device)).float().flip(-1)) / 2
        return cams.cpu()

    base = at(input_size)
    return multiscale_cams(base, [at(scaled_size(input_size, s)) for s in scales if s != 1.0],
                           1.0 in scales)


def scaled_size(input_size: int, scale: float) -> int:
    """The input side for ``scale`` (a multiple of 32, at least 32)."""
    return max(32, int(round(input_size * float(scale) / 32)) * 32)


def multiscale_cams(base: torch.Tensor, others: list[torch.Tensor],
                    keep_base: bool = True) -> torch.Tensor:
    """Mean of ``base`` (``B×C×h×w``) and ``others`` (``B×C×h'×w'`` each) resampled onto
    ``base``'s grid; ``keep_base=False`` leaves ``base`` out of the mean (its grid only)."""
    if not others:
        return base
    import torch.nn.functional as F

    grid = base.shape[-2:]
    maps = ([base] if keep_base else []) + [
        F.interpolate(c, size=grid, mode="bilinear", align_corners=True) for c in others]
    return torch.stack(maps).mean(0)


def cam_geometry(model: PeakCAM, cam: torch.Tensor, input_size: int) -> CamGeometry:
    """Where the cells of ``cam`` (``C×h×w``, from an ``input_size``² input) sit."""
    return model.geometry((input_size, input_size), tuple(cam.shape[-2:]))


def peaks_for_image(model: PeakCAM, cam: torch.Tensor, record: ImageRecord, cfg: dict,
                    use_labels: bool, score: torch.Tensor | None = None,
                    input_size: int | None = None) -> list[Peak]:
    """Peaks of the labelled classes (``use_labels``) or of the classes the classifier
    predicts (class probability ≥ ``cfg['class_threshold']``), in the record's pixels.

    ``cam`` is the CAM of the image resized to ``input_size``² (the classifier's input).
    """
    if use_labels:
        classes = sorted(record.labels)
    else:
        assert score is not None
        classes = [int(c) for c in torch.nonzero(score >= cfg["class_threshold"]).flatten()]
    if input_size is None:
        raise ValueError("peaks_for_image needs the classifier's input size")
    return extract_peaks(cam, classes, (record.height, record.width),
                         cam_geometry(model, cam, input_size),
                         window=int(cfg.get("window") or model.peak_window),
                         median_filter=model.median_filter,
                         min_score=peak_threshold(cfg), relative=cfg["relative"],
                         max_per_class=cfg.get("max_per_class"),
                         exclusive=bool(cfg.get("exclusive", False)),
                         min_per_class=int(cfg.get("min_per_class") or 0))


def peak_threshold(cfg: dict) -> float:
    """``peaks.min_score`` (PRM's ``peak_threshold``); null means none."""
    v = cfg.get("min_score")
    return float("-inf") if v is None else float(v)


def cached_cams(model: PeakCAM, features, indices: list[int], device,
                flip: bool = False) -> torch.Tensor:
    """CAMs of samples ``indices`` of a training :class:`~wiseseg.engine.feature_cache.
    FeatureCache` (the backbone features of the resized images, plain and flipped), as
    :func:`image_cams` computes them from the images."""
    dtype = next(model.parameters()).dtype

    def run(flipped: bool) -> torch.Tensor:
        x = torch.stack([features.get(i, flipped)["x"] for i in indices]).to(device, dtype)
        return model.cams_from_features(x).float()

    with torch.no_grad():
        cams = run(False)
        if flip:
            cams = (cams + run(True).flip(-1)) / 2
    return cams.cpu()


def peak_cams(model: PeakCAM, records: Sequence[ImageRecord], input_size: int,
              cfg: dict[str, Any], device, features=None,
              indices: Sequence[int] | None = None) -> torch.Tensor:
    """The CAMs ``B×C×h×w`` peaks are taken from (``cfg``: the ``peaks`` settings ``flip``
    and ``scales``): from ``features``, the classifier's feature cache, at its samples
    ``indices`` (the records' images at ``input_size``), else from the images."""
    flip = bool(cfg.get("flip", False))
    scales = tuple(float(s) for s in (cfg.get("scales") or (1.0,)))
    if features is None:
        return image_cams(model, [load_image(r.path) for r in records], input_size, device,
                          flip=flip, scales=scales)
    cams = cached_cams(model, features, list(indices), device, flip)
    if scales != (1.0,):  # the other scales from the images; the cache holds 1.0
        ims = [load_image(r.path) for r in records]
        cams = multiscale_cams(cams, [
            image_cams(model, ims, scaled_size(input_size, s), device, flip=flip)
            for s in scales if s != 1.0], 1.0 in scales)
    return cams


def cam_function(model: PeakCAM, input_size: int, cfg: dict[str, Any], device,
                 split: WeakSplit | None = None, features=None):
    """``fn(record) -> {class: H×W float32 array}``: the CAM of each labelled class of the
    record's image (as :func:`peak_cams` computes it for the peaks) resampled onto the
    image's pixels (:meth:`~wiseseg.models.cam_geometry.CamGeometry.to_image`). With
    ``features``, the classifier's feature cache of ``split``'s records in order, cached
    images are not run through the backbone again."""
    index = {r.id: i for i, r in enumerate(split.records)} \
        if features is not None and split is not None else {}
    model.eval()

    def fn(record: ImageRecord) -> dict[int, Any]:
        i = index.get(record.id)
        cam = peak_cams(model, [record], input_size, cfg, device,
                        features if i is not None else None, [i])[0]
        return cams_on_image(model, cam, input_size, record)

    return fn


def cams_on_image(model: PeakCAM, cam: torch.Tensor, input_size: int,
                  record: ImageRecord) -> dict[int, Any]:
    """``{class: H×W float32 array}``: the record's labelled classes of ``cam`` (``C×h×w``,
    from an ``input_size``² input) on the image's pixels."""
    classes = sorted(record.labels)
    if not classes:
        return {}
    maps = cam_geometry(model, cam, input_size).to_image(
        cam[classes], (record.height, record.width)).numpy()
    return {c: maps[k] for k, c in enumerate(classes)}


def compute_peaks(model: PeakCAM, split: WeakSplit, input_size: int, cfg: dict[str, Any],
                  use_labels: bool = True, device: str | torch.device = "cpu",
                  batch_size: int = 16, progress: bool = True,
                  category_ids: list[int] | None = None, features=None) -> dict:
    """Peaks for every image of ``split`` (see module docstring for the format).

    ``features``: the classifier's feature cache of exactly these images at ``input_size``
    (training reuses it: the backbone is not run again).
    """
    from tqdm import tqdm

    from wiseseg.models.peak_ops import peak_stimulation

    model.eval()
    cids = category_ids or list(range(1, len(split.classes) + 1))
    images_out = []
    recs = list(split.records)
    bar = tqdm(total=len(recs), desc="peaks", unit="img", disable=not progress)
    for start in range(0, len(recs), batch_size):
        chunk = recs[start:start + batch_size]
        cams = peak_cams(model, chunk, input_size, cfg, device, features,
                         list(range(start, start + len(chunk))))
        scores, _ = peak_stimulation(cams, model.peak_window, model.median_filter)
        probs = torch.sigmoid(scores)
        for r, cam, prob in zip(chunk, cams, probs):
            peaks = peaks_for_image(model, cam, r, cfg, use_labels, prob, input_size)
            images_out.append({
                "image_id": r.id, "file_name": r.name, "height": r.height, "width": r.width,
                "labels": sorted(r.labels),
                "class_scores": [round(float(p), 5) for p in prob],
                "peaks": [{"class": p.category, "category_id": cids[p.category], "y": p.y,
                           "x": p.x, "score": round(p.score, 5), "cell": list(p.cell)}
                          for p in peaks],
            })
        bar.update(len(chunk))
    bar.close()
    return {"classes": list(split.classes), "split": split.split,
            "use_labels": use_labels, "settings": dict(cfg), "images": images_out}


def write_peaks(path: str | Path, peaks: dict) -> Path:
    return atomic_write_json(path, peaks)


def read_peaks(path: str | Path) -> dict:
    """Load ``peaks.json``; returns the dict with ``by_id`` added (image id → peak dicts)."""
    from wiseseg.peaks_file import peaks_by_id

    data = read_json(path, "peaks")
    data["by_id"] = peaks_by_id(data, path)  # types and structure, one-line errors
    return data
