"""The PRM baseline (Zhou et al., CVPR 2018): peaks → peak response maps → proposal retrieval.

For every peak of a predicted class (class probability ≥ ``class_threshold``; no labels at
test time), the proposal ``G`` maximising PRM's retrieval score is taken:

    score(G) = balance · Σ_{p ∈ G} R(p) + Σ_{p ∈ ∂G} R(p) − penalty · Σ_{p ∈ G} B(p)

with ``R`` the peak's response map (resized to the image), ``∂G`` the proposal's contour (a
morphological gradient of width ``contour_width``), and ``B`` the background: 1 where the
class's CAM, upsampled to the image, is below ``bg_factor`` × its mean. PRM's defaults:
balance 0.8, penalty 1e-5, bg_factor 0.95, contour width 5, the 100 best proposals with area
in [0.00002, 0.85] of the image. The instances are then suppressed class-agnostically in order
of score (mask IoU ≥ ``nms_iou`` = 0.3 with a kept one). The retrieval score is the result's
``score``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord
from wiseseg.data.transforms import resize_image, to_tensor
from wiseseg.models.peak_ops import Peak, extract_peaks, peak_stimulation
from wiseseg.models.peak_response import peak_response_maps


@dataclass(frozen=True)
class RetrievalSettings:
    balance: float = 0.8
    penalty: float = 1e-5
    bg_factor: float = 0.95
    contour_width: int = 5
    proposal_count: int = 100
    min_area_frac: float = 0.00002
    max_area_frac: float = 0.85
    nms_iou: float = 0.3
    class_threshold: float = 0.5


def contours(masks: np.ndarray, width: int) -> np.ndarray:
    """Morphological gradient (dilation minus erosion, ``width×width`` square) of each mask in
    ``N×H×W`` bool, vectorised over N."""
    if masks.size == 0:
        return masks.copy()
    st = np.zeros((1, width, width), bool)
    st[0] = True
    return ndimage.binary_dilation(masks, st) & ~ndimage.binary_erosion(masks, st)


def retrieve(prms: np.ndarray, peaks: Sequence[Peak], cams: np.ndarray,
             proposal_masks: Sequence[dict], size: tuple[int, int],
             s: RetrievalSettings = RetrievalSettings()) -> list[dict]:
    """Pure retrieval + NMS for one image.

    Args:
        prms: float ``N×H×W`` response maps at image size (one per peak).
        peaks: the N peaks (``category`` used).
        cams: float ``C×H×W`` class activation maps upsampled to the image size.
        proposal_masks: RLEs sorted by objectness (the first ``proposal_count`` are used).

    Returns:
        instances ``{"category", "segmentation", "score"}`` after NMS, best first.
    """
    h, w = size
    if not peaks or not proposal_masks:
        return []
    cand = list(proposal_masks[: s.proposal_count])
    areas = rle.area(cand)
    ok = (areas >= s.min_area_frac * h * w) & (areas < s.max_area_frac * h * w)
    cand = [c for c, k in zip(cand, ok) if k]
    if not cand:
        return []
    masks = rle.decode_many(cand, size)
    inner = masks.reshape(len(cand), -1).astype(np.float32)
    rim = contours(masks, s.contour_width).reshape(len(cand), -1).astype(np.float32)
    found = []
    for prm, peak in zip(prms, peaks):
        cam = cams[peak.category]
        bg = (cam < s.bg_factor * cam.mean()).astype(np.float32).ravel()
        r = prm.ravel().astype(np.float32)
        val = s.balance * (inner @ r) + rim @ r - s.penalty * (inner @ bg)
        j = int(np.argmax(val))
        found.append({"category": peak.category, "segmentation": cand[j],
                      "score": float(val[j])})
    found.sort(key=lambda d: -d["score"])
    kept: list[dict] = []
    for f in found:
        if kept and rle.iou([f["segmentation"]], [k["segmentation"] for k in kept]).max() \
                >= s.nms_iou:
            continue
        kept.append(f)
    return kept


def prm_instances(model, image: np.ndarray, record: ImageRecord, proposal_masks: list[dict],
                  input_size: int, peak_cfg: dict, s: RetrievalSettings = RetrievalSettings(),
                  device="cpu") -> tuple[list[dict], dict]:
    """The PRM baseline on one image; also returns the CAMs / peaks / PRMs for figures."""
    x = to_tensor(resize_image(image, (input_size, input_size))).to(device)
    with torch.no_grad():
        cam = model.cams(x[None]).float()
    scores, _ = peak_stimulation(cam, model.peak_window, model.median_filter)
    probs = torch.sigmoid(scores[0])
    classes = [int(c) for c in torch.nonzero(probs >= s.class_threshold).flatten()]
    # peaks in the network input's pixels (PRMs are computed there), then mapped to the image
    in_peaks = extract_peaks(cam[0].cpu(), classes, (input_size, input_size),
                             window=model.peak_window, median_filter=model.median_filter,
                             min_score=peak_cfg["min_score"], relative=peak_cfg["relative"],
                             max_per_class=peak_cfg.get("max_per_class"))
    h, w = record.height, record.width
    cams_img = F.interpolate(cam, size=(h, w), mode="bicubic", align_corners=False)[0]
    if not in_peaks:
        return [], {"peaks": [], "cams": cams_img.cpu().numpy(), "probs": probs.cpu().numpy()}
    prms = peak_response_maps(model, x, in_peaks)
    prms = F.interpolate(prms[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    peaks = [Peak(p.category, min(h - 1, int(p.y * h / input_size)),
                  min(w - 1, int(p.x * w / input_size)), p.score) for p in in_peaks]
    inst = retrieve(prms.cpu().numpy(), peaks, cams_img.cpu().numpy(), proposal_masks, (h, w),
                    s)
    return inst, {"peaks": peaks, "cams": cams_img.cpu().numpy(), "probs": probs.cpu().numpy()}


def prm_baseline(model, records: Sequence[ImageRecord], store, input_size: int, peak_cfg: dict,
                 category_ids: Sequence[int], s: RetrievalSettings = RetrievalSettings(),
                 device="cpu", progress: bool = True) -> list[dict]:
    """COCO results of the PRM baseline over ``records`` (proposals from ``store``)."""
    from tqdm import tqdm

    from wiseseg.data.images import load_image

    model.eval()
    results = []
    for rec in tqdm(records, desc="PRM baseline", unit="img", disable=not progress):
        masks = store.get(rec.id, size=(rec.height, rec.width)).masks
        inst, _ = prm_instances(model, load_image(rec.path), rec, masks, input_size, peak_cfg,
                                s, device)
        for d in inst:
            results.append({"image_id": rec.id, "category_id": int(category_ids[d["category"]]),
                            "segmentation": d["segmentation"],
                            "bbox": [float(v) for v in rle.to_bbox([d["segmentation"]])[0]],
                            "score": d["score"]})
    return results
