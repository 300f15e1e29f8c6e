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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from wiseseg import rle
from wiseseg.classifier.peaks import cam_geometry, peak_threshold
from wiseseg.data.dataset import ImageRecord
from wiseseg.data.transforms import resize_image, to_tensor
from wiseseg.models.peak_ops import Peak, extract_peaks, peak_stimulation
from wiseseg.models.peak_response import PeakBackprop, excitation_twin, peak_batch_size

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

    @classmethod
    def from_config(cls, prm: dict) -> RetrievalSettings:
        """The retrieval settings of a preset's ``prm`` section (less ``workers``, which says
        how the work is shared, not what it computes)."""
        return cls(**{k: v for k, v in prm.items() if k != "workers"})

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
    OpenCV's default border does), so a mask is not outlined along the image border.

    A square is the product of two lines, so for an odd ``width`` (the contour side always
    is) the dilation and erosion are running maxima and minima along rows, then columns — the
    same pixels as ``ndimage.binary_dilation`` / ``binary_erosion`` with the square, at a
    fraction of their cost (which grows with the square's area)."""
    if masks.size == 0:
        return masks.copy()
    if width % 2 == 0:  # an even square is not centred; keep scipy's own convention
        st = np.zeros((1, width, width), bool)
        st[0] = True
        return ndimage.binary_dilation(masks, st) & ~ndimage.binary_erosion(masks, st,
                                                                             border_value=1)
    m = masks.view(np.uint8) if masks.dtype == bool else masks.astype(np.uint8)
    grown = ndimage.maximum_filter1d(ndimage.maximum_filter1d(m, width, axis=1, cval=0,
                                                              mode="constant"),
                                     width, axis=2, cval=0, mode="constant")
    shrunk = ndimage.minimum_filter1d(ndimage.minimum_filter1d(m, width, axis=1, cval=1,
                                                               mode="constant"),
                                      width, axis=2, cval=1, mode="constant")
    return (grown > shrunk).astype(bool)


def background(cam: np.ndarray, bg_factor: float) -> np.ndarray:
    """PRM's background of one class: ``H×W`` bool, True where the min–max scaled CAM is
    below ``bg_factor`` × its mean."""
    lo, hi = float(cam.min()), float(cam.max())
    scaled = (cam - lo) / (hi - lo) if hi > lo else np.zeros_like(cam)
    return scaled < bg_factor * scaled.mean()


class RetrievalCandidates:
    """The proposals of one image prepared for PRM's retrieval: the first ``proposal_count``
    whose area passes the limits, as flat masks and contour bands (see the module docstring).

    Attributes:
        index: positions of the kept proposals in the list given.
        inner, rim: ``K×(H·W)`` float32 masks and contour bands.
    """

    def __init__(self, proposal_masks: Sequence[dict], size: tuple[int, int],
                 s: RetrievalSettings = RetrievalSettings()):
        h, w = size
        self.size, self.settings = size, s
        first = list(proposal_masks[: s.proposal_count])
        areas = rle.area(first) if first else np.zeros(0)
        ok = (areas >= s.min_area_frac * h * w) & (areas < s.max_area_frac * h * w)
        self.index = np.flatnonzero(ok)
        self.masks = [first[i] for i in self.index]
        decoded = rle.decode_many(self.masks, size).reshape(len(self.masks), h, w)
        self.inner = decoded.reshape(len(self.masks), h * w).astype(np.float32)
        self.rim = contours(decoded, s.contour_side(size)).reshape(
            len(self.masks), h * w).astype(np.float32)

    def __len__(self) -> int:
        return len(self.masks)

    def values(self, prm: np.ndarray, bg: np.ndarray) -> np.ndarray:
        """PRM's retrieval value of every candidate for one peak.

        Args:
            prm: float ``H×W`` response map at image size (renormalised to sum 1 here).
            bg: bool ``H×W`` background of the peak's class (:func:`background`).

        Returns:
            float32 ``K``.
        """
        s = self.settings
        r = prm.ravel().astype(np.float32)
        total = float(r.sum())
        if total > 0:
            r = r / total
        per_pixel = s.image_penalty() / float(self.size[0] * self.size[1])
        return (s.balance * (self.inner @ r) + self.rim @ r
                - per_pixel * (self.inner @ bg.ravel().astype(np.float32)))


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
    if not len(peaks) or not len(proposal_masks):
        return []
    cand = RetrievalCandidates(proposal_masks, size, s)
    if not len(cand):
        return []
    bg_of: dict[int, np.ndarray] = {}
    found = []
    for prm, peak in zip(prms, peaks):
        if peak.category not in bg_of:
            bg_of[peak.category] = background(cams[peak.category], s.bg_factor)
        val = cand.values(prm, bg_of[peak.category])
        j = int(np.argmax(val))
        conf = {"peak": peak.score, "retrieval": float(val[j]),
                "class": float(class_probs[peak.category]) if class_probs is not None
                else float("nan")}[s.score]
        found.append({"category": peak.category, "segmentation": cand.masks[j],
                      "score": float(conf), "retrieval": float(val[j])})
    found.sort(key=lambda d: -d["retrieval"])
    kept: list[dict] = []
    for f in found:
        if kept and rle.iou([f["segmentation"]], [k["segmentation"] for k in kept]).max() \
                >= s.nms_iou:
            continue
        kept.append(f)
    return kept


def response_maps_at(model, image: np.ndarray, peaks: Sequence[Peak], input_size: int,
                     device="cpu", cam: torch.Tensor | None = None,
                     backprop: PeakBackprop | None = None, peak_batch: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Peak response maps and class activation maps of one image at its own size.

    Args:
        image: ``H×W×3`` uint8.
        peaks: peaks in the image's pixels; seeded at their ``cell`` when they have one.
        cam: the image's CAM ``1×C×h×w`` when the caller has it already.
        backprop: the image's retained excitation pass when the caller has it already (no
            forward pass is made here then; its CAM is used unless ``cam`` is given).
        peak_batch: peaks per backward call (default: :func:`peak_batch_size` of ``device``).

    Returns:
        ``(prms float N×H×W, cams float C×H×W)``.
    """
    h, w = image.shape[:2]
    if backprop is None and (cam is None or peaks):
        x = to_tensor(resize_image(image, (input_size, input_size))).to(device)
        backprop = PeakBackprop(model, x)  # the one forward pass: CAM and response maps
    if cam is None:
        cam = backprop.cam.float()
    cams_img = F.interpolate(cam, size=(h, w), mode="bicubic", align_corners=False)[0]
    if not peaks:
        return np.zeros((0, h, w), np.float32), cams_img.cpu().numpy()
    geometry = cam_geometry(model, cam[0], input_size)
    in_input = [Peak(p.category, *_to_input(p, (h, w), input_size), p.score, p.cell)
                for p in peaks]
    batch = peak_batch or peak_batch_size(device)
    prms = backprop.maps(in_input, geometry, batch)
    prms = F.interpolate(prms[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return prms.cpu().numpy(), cams_img.cpu().numpy()


def retrieval_function(model, input_size: int, s: RetrievalSettings = RetrievalSettings(),
                       device="cpu") -> Callable:
    """``fn(record, peak dicts, proposal masks) -> per peak, the retrieval value of every
    proposal`` (``NaN`` for those outside PRM's area limits), for
    :func:`~wiseseg.pseudo.labels.build_pseudo_images`. Every proposal is scored, not only
    PRM's first ``proposal_count``."""
    from dataclasses import replace

    from wiseseg.data.images import load_image

    every = replace(s, proposal_count=10**9)
    model.eval()
    model = excitation_twin(model)  # the same maps, without the BatchNorms' passes

    def fn(record: ImageRecord, peaks: Sequence[dict], masks: Sequence[dict]):
        image = load_image(record.path)
        ps = [Peak(int(p["class"]), int(p["y"]), int(p["x"]), float(p["score"]),
                   tuple(p["cell"]) if p.get("cell") is not None else None) for p in peaks]
        prms, cams = response_maps_at(model, image, ps, input_size, device)
        cand = RetrievalCandidates(masks, (record.height, record.width), every)
        out = []
        for prm, peak in zip(prms, ps):
            vals = np.full(len(masks), np.nan)
            if len(cand):
                vals[cand.index] = cand.values(prm, background(cams[peak.category],
                                                               s.bg_factor))
            out.append(vals)
        return out

    return fn


def _to_input(p: Peak, size: tuple[int, int], input_size: int) -> tuple[int, int]:
    """A peak's pixel in the image → the network input's pixel (for peaks without a cell)."""
    from wiseseg.models.cam_geometry import image_to_input

    y = image_to_input(p.y, size[0], input_size)
    x = image_to_input(p.x, size[1], input_size)
    return (int(min(input_size - 1, max(0, round(y)))),
            int(min(input_size - 1, max(0, round(x)))))


def prm_instances(model, image: np.ndarray, record: ImageRecord, proposal_masks: list[dict],
                  input_size: int, peak_cfg: dict, s: RetrievalSettings = RetrievalSettings(),
                  device="cpu", peak_batch: int | None = None) -> tuple[list[dict], dict]:
    """The PRM baseline on one image; also returns the CAMs / peaks / PRMs for figures.

    The image goes forward once, under the excitation rule with its pass retained: the peaks
    are read from that CAM and backpropagated through that pass."""
    x = to_tensor(resize_image(image, (input_size, input_size))).to(device)
    backprop = PeakBackprop(model, x)
    cam = backprop.cam.float()
    scores, _ = peak_stimulation(cam, model.peak_window, model.median_filter)
    probs = torch.sigmoid(scores[0]).cpu().numpy()
    classes = [int(c) for c in np.flatnonzero(probs >= s.class_threshold)]
    # peaks in the image's pixels; each keeps its CAM cell, where its backpropagation starts
    # (the CAM of the image itself, not flip-averaged: the response maps backpropagate from it)
    peaks = extract_peaks(cam[0].cpu(), classes, (record.height, record.width),
                          cam_geometry(model, cam[0], input_size),
                          window=int(peak_cfg.get("window") or model.peak_window),
                          median_filter=model.median_filter,
                          min_score=peak_threshold(peak_cfg), relative=peak_cfg["relative"],
                          max_per_class=peak_cfg.get("max_per_class"),
                          exclusive=bool(peak_cfg.get("exclusive", False)),
                          min_per_class=int(peak_cfg.get("min_per_class") or 0))
    prms, cams = response_maps_at(model, image, peaks, input_size, device,
                                  backprop=backprop, peak_batch=peak_batch)
    del backprop  # frees the retained pass before the retrieval
    info = {"peaks": peaks, "cams": cams, "probs": probs}
    inst = retrieve(prms, peaks, cams, proposal_masks, (record.height, record.width), s,
                    class_probs=probs.tolist())
    return inst, info


def prm_baseline(model, records: Sequence[ImageRecord], store, input_size: int, peak_cfg: dict,
                 category_ids: Sequence[int], s: RetrievalSettings = RetrievalSettings(),
                 device="cpu", progress: bool = True, peak_batch: int | None = None,
                 workers: int = 1, model_path: str | Path | None = None) -> list[dict]:
    """COCO results of the PRM baseline over ``records`` (proposals from ``store``);
    ``peak_batch`` peaks per backward call (default: :func:`peak_batch_size`).

    ``workers > 1`` (with ``model_path``, the classifier file ``model`` was loaded from)
    shares the images among that many single-threaded processes on a CPU: a batch-1
    backward pass uses a second thread poorly, a second process better (on 2 cores 1.32×
    faster, ``benchmarks/prm_speed.py``). The results are those of one process, in the same
    order (float sums may differ in the last bits with the thread count)."""
    from tqdm import tqdm

    bar = tqdm(total=len(records), desc="PRM baseline", unit="img", disable=not progress)
    try:
        if workers > 1 and model_path is not None and len(records) > 1 \
                and torch.device(device).type == "cpu":
            return _prm_parallel(records, store, input_size, peak_cfg, category_ids, s,
                                 peak_batch, workers, model_path, bar)
        model.eval()
        model = excitation_twin(model)  # the same maps, without the BatchNorms' passes
        results = []
        for rec in records:
            results += _prm_image(model, rec, store, input_size, peak_cfg, category_ids, s,
                                  device, peak_batch)
            bar.update(1)
        return results
    finally:
        bar.close()


def _prm_image(model, rec: ImageRecord, store, input_size: int, peak_cfg: dict,
               category_ids: Sequence[int], s: RetrievalSettings, device,
               peak_batch: int | None) -> list[dict]:
    from wiseseg.data.images import load_image

    masks = store.get(rec.id, size=(rec.height, rec.width)).masks
    inst, _ = prm_instances(model, load_image(rec.path), rec, masks, input_size, peak_cfg,
                            s, device, peak_batch)
    return [{"image_id": rec.id, "category_id": int(category_ids[d["category"]]),
             "segmentation": d["segmentation"],
             "bbox": [float(v) for v in rle.to_bbox([d["segmentation"]])[0]],
             "score": d["score"]} for d in inst]


#: a worker process's classifier and proposal store (:func:`_prm_worker_init`)
_WORKER: dict = {}

#: images per task handed to a worker: small enough for an even share and a live progress bar
_PRM_CHUNK = 4


def _prm_worker_init(model_path: str, store_root: str) -> None:
    from wiseseg.classifier.model_io import load_classifier
    from wiseseg.proposals import ProposalStore

    torch.set_num_threads(1)
    model, _, _ = load_classifier(Path(model_path), "cpu")
    model.eval()
    _WORKER.update(model=excitation_twin(model), store=ProposalStore.open(store_root))


def _prm_worker_chunk(records, input_size, peak_cfg, category_ids, s, peak_batch):
    return [_prm_image(_WORKER["model"], rec, _WORKER["store"], input_size, peak_cfg,
                       category_ids, s, "cpu", peak_batch) for rec in records]


def _prm_parallel(records, store, input_size, peak_cfg, category_ids, s, peak_batch,
                  workers, model_path, bar) -> list[dict]:
    from wiseseg.workers import single_thread_pool

    chunks = [list(records[i:i + _PRM_CHUNK]) for i in range(0, len(records), _PRM_CHUNK)]
    with single_thread_pool(min(workers, len(chunks)), _prm_worker_init,
                            (str(model_path), str(store.root))) as pool:
        futures = [pool.submit(_prm_worker_chunk, c, input_size, dict(peak_cfg),
                               list(category_ids), s, peak_batch) for c in chunks]
        out: list[dict] = []
        for fut, chunk in zip(futures, chunks):  # in order: the results of one process
            for per_image in fut.result():
                out += per_image
            bar.update(len(chunk))
        return out
