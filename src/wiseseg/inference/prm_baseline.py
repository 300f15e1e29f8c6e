"""The PRM baseline (Zhou et al., CVPR 2018): peaks → peak response maps → proposal retrieval.

For every peak of a predicted class (class probability ≥ ``class_threshold``, i.e. PRM's
logit ≥ 0; no labels at test time), the proposal ``G`` maximising PRM's retrieval score is
taken:

    score(G) = balance · Σ_{p ∈ G} R(p) + Σ_{p ∈ ∂G} R(p) − λ · |G ∩ B| / (H·W)

with ``R`` the peak's response map (computed at the network input, resized bilinearly to the
image and normalised to sum 1), ``∂G`` the proposal's contour (morphological gradient with a
``w × w`` square; as OpenCV's, it does not erode along the image border) and ``B`` the
background: the pixels where the class's CAM, resized bicubically to the image and min–max
scaled to [0, 1] (PRM's ``imresize`` byte-scales it), is below ``bg_factor`` × its mean.

PRM states its constants for its 448 × 448 input, where it does the retrieval: a penalty of
1e-5 per background pixel and a 5-pixel contour square. Here the retrieval runs at the
image's own size, so they are converted to mean the same at any resolution: the penalty per
*image* ``λ = 1e-5 · 448² ≈ 2.0`` (``penalty`` is still given per 448² pixel, PRM's number),
and the contour square ``w = contour_width · √(H·W) / 448`` pixels, made odd (``2⌊w/2⌋ + 1``,
so the band straddles the outline evenly; an even square shifts dilation and erosion to the
same side) and at least 3. The first
``proposal_count`` proposals (by objectness) with area in ``[min_area_frac, max_area_frac)``
of the image are candidates (PRM: 100, [0.00002, 0.85)); instances are then suppressed
class-agnostically in order of retrieval score (mask IoU ≥ ``nms_iou`` = 0.3 with a kept one).

PRM returns no confidence; wiseseg's evaluation needs one. ``score`` chooses it: ``peak``
(the peak's CAM value, the default), ``class`` (the class probability) or ``retrieval``
(the retrieval value, which compares proposals *of one peak* and is not made to rank
instances across images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from wiseseg import rle
from wiseseg.classifier.peaks import cam_geometry, peak_threshold
from wiseseg.data.dataset import ImageRecord
from wiseseg.data.transforms import resize_image, to_tensor
from wiseseg.models.peak_ops import Peak, extract_peaks, peak_stimulation
from wiseseg.models.peak_response import peak_response_maps

PRM_SIDE = 448  # the input side PRM's constants are stated for
SCORES = ("peak", "class", "retrieval")


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
    score: str = "peak"

    def __post_init__(self):
        if self.score not in SCORES:
            raise ValueError(f"prm.score must be one of {', '.join(SCORES)}, got {self.score!r}")

    def image_penalty(self) -> float:
        """λ: the penalty of a background region covering the whole image."""
        return self.penalty * PRM_SIDE * PRM_SIDE

    def contour_side(self, size: tuple[int, int]) -> int:
        """The contour square's side at an image of ``size`` (see the module docstring): odd,
        so that the band straddles the outline evenly, and at least 3."""
        w = self.contour_width * float(np.sqrt(size[0] * size[1])) / PRM_SIDE
        return max(3, 2 * int(w // 2) + 1)


def contours(masks: np.ndarray, width: int) -> np.ndarray:
    """Morphological gradient (dilation minus erosion, ``width×width`` square) of each mask in
    ``N×H×W`` bool, vectorised over N; the erosion treats outside the image as foreground (as
    OpenCV's default border does), so a mask is not outlined along the image border."""
    if masks.size == 0:
        return masks.copy()
    st = np.zeros((1, width, width), bool)
    st[0] = True
    return ndimage.binary_dilation(masks, st) & ~ndimage.binary_erosion(masks, st,
                                                                         border_value=1)


def background(cam: np.ndarray, bg_factor: float) -> np.ndarray:
    """PRM's background of one class: ``H×W`` bool, True where the min–max scaled CAM is
    below ``bg_factor`` × its mean."""
    lo, hi = float(cam.min()), float(cam.max())
    scaled = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    return scaled < bg_factor * scaled.mean()


def retrieve(prms: np.ndarray, peaks: Sequence[Peak], cams: np.ndarray,
             proposal_masks: Sequence[dict], size: tuple[int, int],
             s: RetrievalSettings = RetrievalSettings(),
             class_probs: Sequence[float] | None = None) -> list[dict]:
    """Pure retrieval + NMS for one image.

    Args:
        prms: float ``N×H×W`` response maps at image size (one per peak; each is
            renormalised to sum 1 here).
        peaks: the N peaks (``category`` and ``score`` used).
        cams: float ``C×H×W`` class activation maps at image size.
        proposal_masks: RLEs at ``size``, sorted by objectness (the first
            ``proposal_count`` are used).
        class_probs: per class, its probability (for ``score="class"``).

    Returns:
        instances ``{"category", "segmentation", "score", "retrieval"}`` after NMS, best
        retrieval first; empty for no peak or no usable proposal.
    """
    h, w = size
    if not len(peaks) or not len(proposal_masks):
        return []
    cand = list(proposal_masks[: s.proposal_count])
    areas = rle.area(cand)
    ok = (areas >= s.min_area_frac * h * w) & (areas < s.max_area_frac * h * w)
    cand = [c for c, k in zip(cand, ok) if k]
    if not cand:
        return []
    masks = rle.decode_many(cand, size)
    inner = masks.reshape(len(cand), -1).astype(np.float32)
    rim = contours(masks, s.contour_side(size)).reshape(len(cand), -1).astype(np.float32)
    per_pixel = s.image_penalty() / float(h * w)
    bg_of: dict[int, np.ndarray] = {}
    found = []
    for prm, peak in zip(prms, peaks):
        if peak.category not in bg_of:
            bg_of[peak.category] = background(cams[peak.category],
                                              s.bg_factor).astype(np.float32).ravel()
        r = prm.ravel().astype(np.float32)
        total = float(r.sum())
        if total > 0:
            r = r / total
        val = s.balance * (inner @ r) + rim @ r - per_pixel * (inner @ bg_of[peak.category])
        j = int(np.argmax(val))
        conf = {"peak": peak.score, "retrieval": float(val[j]),
                "class": float(class_probs[peak.category]) if class_probs is not None
                else float("nan")}[s.score]
        found.append({"category": peak.category, "segmentation": cand[j],
                      "score": float(conf), "retrieval": float(val[j])})
    found.sort(key=lambda d: -d["retrieval"])
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
    h, w = record.height, record.width
    geometry = cam_geometry(model, cam[0], input_size)
    # peaks in the image's pixels; each keeps its CAM cell, where its backpropagation starts
    peaks = extract_peaks(cam[0].cpu(), classes, (h, w), geometry,
                          window=model.peak_window, median_filter=model.median_filter,
                          min_score=peak_threshold(peak_cfg), relative=peak_cfg["relative"],
                          max_per_class=peak_cfg.get("max_per_class"))
    cams_img = F.interpolate(cam, size=(h, w), mode="bicubic", align_corners=False)[0]
    info = {"peaks": peaks, "cams": cams_img.cpu().numpy(), "probs": probs.cpu().numpy()}
    if not peaks:
        return [], info
    prms = peak_response_maps(model, x, peaks, geometry)
    prms = F.interpolate(prms[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    inst = retrieve(prms.cpu().numpy(), peaks, info["cams"], proposal_masks, (h, w), s,
                    class_probs=info["probs"].tolist())
    return inst, info


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
