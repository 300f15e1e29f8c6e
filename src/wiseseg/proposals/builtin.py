"""The built-in proposal generator: selective-search grouping with masks and objectness.

Per image:

1. Large images are downscaled to at most ``work_pixels`` pixels (masks come back at full
   size by nearest-neighbour upsampling of the region label map).
2. Felzenszwalb–Huttenlocher over-segmentations, one per ``(colour space, scale)`` entry of
   ``segmentations``.
3. On each over-segmentation, one hierarchy per ``strategies`` entry (the colour space of the
   colour histogram and the similarity terms, e.g. ``CTSF``: colour, texture, size, fill); see
   :mod:`wiseseg.proposals.grouping`. Every region formed is a candidate mask.
4. Objectness of each candidate (:mod:`wiseseg.proposals.objectness`), a number in [0, 1].
5. Candidates that are the same region are merged (exact duplicates within an
   over-segmentation), near-duplicates across all of them are removed greedily by mask IoU
   (``nms_iou``), and the best ``top_k`` are returned.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import sparse

from wiseseg.data.dataset import ImageRecord
from wiseseg.errors import ConfigError
from wiseseg.proposals.base import Proposals, ProposalSource
from wiseseg.proposals.grouping import Problem, Strategy, group
from wiseseg.proposals.masks import encode_regions
from wiseseg.proposals.objectness import merge_contrast, objectness
from wiseseg.proposals.superpixels import (
    COLOUR_SPACES,
    Superpixels,
    colour_histograms,
    colour_space,
    describe,
    orientation_responses,
    segment,
    texture_histograms,
)


@dataclass(frozen=True)
class BuiltinSettings:
    """Settings of the built-in generator (all of them enter the cache fingerprint).

    Attributes:
        segmentations: ``(colour space, Felzenszwalb scale k)`` per over-segmentation.
        strategies: ``(colour space of the colour histogram, similarity letters)`` per
            hierarchy, letters from ``C`` colour, ``T`` texture, ``S`` size, ``F`` fill
            (without ``C`` the colour space plays no part).
        sigma: Gaussian pre-smoothing of the Felzenszwalb segmentation.
        min_size: smallest superpixel, as a fraction of the working image (at least 4 px).
        work_pixels: images with more pixels are downscaled to this many for the grouping.
        nms_iou: a candidate whose mask IoU with a better one reaches this is dropped.
        top_k: at most this many proposals per image.
    """

    segmentations: tuple[tuple[str, float], ...] = (("rgb", 50.0), ("hsv", 100.0))
    strategies: tuple[tuple[str, str], ...] = (("lab", "CTSF"), ("lab", "TSF"), ("rgb", "CTSF"))
    sigma: float = 0.8
    min_size: float = 6e-4
    work_pixels: int = 65_536
    nms_iou: float = 0.8
    top_k: int = 300

    def validate(self) -> None:
        if not self.segmentations or not self.strategies:
            raise ConfigError("builtin proposals: need at least one segmentation and strategy")
        for cs, k in self.segmentations:
            if cs not in COLOUR_SPACES or not k > 0:
                raise ConfigError(f"builtin proposals: bad segmentation ({cs!r}, {k}); colour "
                                  f"space one of {', '.join(COLOUR_SPACES)} and scale > 0")
        for cs, letters in self.strategies:
            if cs not in COLOUR_SPACES or not letters or set(letters) - set("CTSF"):
                raise ConfigError(f"builtin proposals: bad strategy ({cs!r}, {letters!r}); "
                                  f"colour space one of {', '.join(COLOUR_SPACES)} and "
                                  f"similarity letters from CTSF")
        if not 0 < self.nms_iou <= 1:
            raise ConfigError(f"builtin proposals: nms_iou={self.nms_iou} must be in (0, 1]")
        if self.top_k < 1 or self.work_pixels < 64 or self.sigma < 0 or self.min_size < 0:
            raise ConfigError("builtin proposals: top_k ≥ 1, work_pixels ≥ 64, sigma ≥ 0 and "
                              "min_size ≥ 0 are required")


class BuiltinSource(ProposalSource):
    """Hierarchical grouping over superpixels (see the module docstring)."""

    name = "builtin"

    def __init__(self, settings: BuiltinSettings | None = None, **overrides):
        base = asdict(settings or BuiltinSettings())
        base.update(overrides)
        base["segmentations"] = tuple((str(c), float(k)) for c, k in base["segmentations"])
        base["strategies"] = tuple((str(c), str(s)) for c, s in base["strategies"])
        self.config = BuiltinSettings(**base)
        self.config.validate()

    def settings(self) -> dict:
        out = asdict(self.config)
        out["segmentations"] = [list(s) for s in self.config.segmentations]
        out["strategies"] = [list(s) for s in self.config.strategies]
        return out

    def propose(self, image: np.ndarray, record: ImageRecord | None = None) -> Proposals:
        """Proposals of an H×W×3 uint8 image; masks at full size, scores in [0, 1]."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"builtin proposals: need an H×W×3 uint8 image, got "
                             f"{image.shape} {image.dtype}")
        size = (image.shape[0], image.shape[1])
        atoms, member, scores = generate(working_image(image, self.config.work_pixels),
                                         self.config)
        return Proposals.from_masks(encode_regions(atoms, member, size), scores, size)


def working_image(image: np.ndarray, work_pixels: int) -> np.ndarray:
    """The image as float32 RGB in [0, 1], downscaled to at most ``work_pixels`` pixels.

    Returns:
        h×w×3 float32 with h ≤ H, w ≤ W (area-averaging downscale; aspect kept).
    """
    big_h, big_w = image.shape[:2]
    if big_h * big_w > work_pixels:
        scale = np.sqrt(work_pixels / (big_h * big_w))
        h, w = max(1, int(big_h * scale)), max(1, int(big_w * scale))
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BOX))
    return image.astype(np.float32) / 255.0


def _strategy(letters: str) -> Strategy:
    return Strategy(*(float(c in letters) for c in "CTSF"))


def generate(rgb01: np.ndarray, cfg: BuiltinSettings) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Ranked, de-duplicated candidate regions of a working image.

    Args:
        rgb01: h×w×3 float32 RGB in [0, 1].
        cfg: settings.

    Returns:
        ``(atoms, member, scores)``: an h×w int32 atom map (the common refinement of all
        over-segmentations), K×A bool regions over atoms and K float32 objectness values,
        sorted descending, K ≤ ``cfg.top_k``.
    """
    h, w = rgb01.shape[:2]
    names = {c for c, _ in cfg.segmentations} | {c for c, _ in cfg.strategies} | {"lab"}
    spaces = {c: colour_space(rgb01, c) for c in sorted(names)}
    responses = orientation_responses(spaces["rgb"])
    min_size = max(4, int(round(cfg.min_size * h * w)))

    segs: list[tuple[Superpixels, dict[str, np.ndarray]]] = []
    problems = []
    for cs, k in cfg.segmentations:
        sp = describe(segment(spaces[cs], k, cfg.sigma, min_size))
        texture = texture_histograms(sp.labels, sp.n, responses)
        hists = {c: colour_histograms(sp.labels, sp.n, spaces[c])
                 for c in sorted({c for c, _ in cfg.strategies} | {"lab"})}
        segs.append((sp, hists))
        problems += [Problem(sp, hists[c], texture, _strategy(s)) for c, s in cfg.strategies]
    hierarchies = group(problems)

    regions, scores, boxes = [], [], []
    per_seg = len(cfg.strategies)
    for i, (sp, hists) in enumerate(segs):
        hs = hierarchies[i * per_seg:(i + 1) * per_seg]
        member = np.concatenate([hh.member for hh in hs])
        c_merge = np.concatenate([merge_contrast(hh, sp.sizes, hists["lab"]) for hh in hs])
        # A region formed in several hierarchies is one candidate with its best C_merge.
        first, inverse = _unique_rows(member)
        best = np.zeros(len(first))
        np.maximum.at(best, inverse, c_merge)
        unique = member[first]
        regions.append(unique)
        scores.append(objectness(unique, sp, hists["lab"], best))
        boxes.append(_region_boxes(unique, sp.boxes))

    atoms, to_label = _common_refinement([sp.labels for sp, _ in segs])
    atom_area = np.bincount(atoms.ravel(), minlength=len(to_label[0])).astype(np.float64)
    member = np.concatenate([r[:, lab] for r, lab in zip(regions, to_label)])
    score = np.concatenate(scores)
    box = np.concatenate(boxes)
    order = np.argsort(-score, kind="stable")
    member, score, box = member[order], score[order], box[order]
    # Only the best few hundred can make the cut; look further only if suppression thins
    # them out below top_k.
    pool = 3 * cfg.top_k
    while True:
        keep = _suppress_duplicates(member[:pool], box[:pool], atom_area, cfg.nms_iou)
        if len(keep) >= cfg.top_k or pool >= len(member):
            break
        pool *= 2
    keep = keep[: cfg.top_k]
    return atoms, member[keep], score[keep]


def _region_boxes(member: np.ndarray, sp_boxes: np.ndarray) -> np.ndarray:
    """R×4 ``(y0, x0, y1, x1)`` boxes of regions from their superpixels' boxes."""
    big = np.iinfo(np.int64).max
    return np.stack([np.where(member, sp_boxes[:, 0], big).min(axis=1),
                     np.where(member, sp_boxes[:, 1], big).min(axis=1),
                     np.where(member, sp_boxes[:, 2], -1).max(axis=1),
                     np.where(member, sp_boxes[:, 3], -1).max(axis=1)], axis=1)


def _unique_rows(member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a bool matrix without repeats.

    Returns:
        (index of the first occurrence of each distinct row, in order; for every row the
        position of its distinct row in that list).
    """
    # Hashing packed rows is exact and much faster than np.unique(axis=0)'s row sort.
    seen: dict[bytes, int] = {}
    inverse = np.empty(len(member), np.int64)
    first = []
    for i, row in enumerate(np.packbits(member, axis=1)):
        key = row.tobytes()
        j = seen.get(key)
        if j is None:
            j = seen[key] = len(first)
            first.append(i)
        inverse[i] = j
    return np.asarray(first, np.int64), inverse


def _common_refinement(label_maps: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Atoms: the pieces on which all label maps are constant.

    Returns:
        (h×w int32 atom ids 0..A-1, per label map an A-array of the label of each atom).
    """
    key = np.zeros(label_maps[0].size, np.int64)
    for lab in label_maps:
        key = key * (int(lab.max()) + 1) + lab.ravel()
        # Re-number after each step so the key never overflows.
        _, key = np.unique(key, return_inverse=True)
        key = key.ravel().astype(np.int64)
    _, first = np.unique(key, return_index=True)
    atoms = key.reshape(label_maps[0].shape).astype(np.int32)
    return atoms, [lab.ravel()[first] for lab in label_maps]


def _suppress_duplicates(member: np.ndarray, boxes: np.ndarray, atom_area: np.ndarray,
                         threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression by mask IoU.

    Args:
        member: K×A bool regions over atoms, best first.
        boxes: K×4 ``(y0, x0, y1, x1)`` region boxes.
        atom_area: A pixel counts.
        threshold: drop a region whose IoU with a kept, better one is ≥ this.

    Returns:
        Indices of the kept regions, in order.
    """
    k = len(member)
    area = member.astype(np.float64) @ atom_area
    # IoU ≥ t needs min(area) / max(area) ≥ t and |box ∩ box'| ≥ t · max(area): only pairs
    # passing both cheap bounds get the exact mask comparison.
    by_area = np.argsort(area, kind="stable")
    sorted_area = area[by_area]
    hi = np.searchsorted(sorted_area, sorted_area / threshold * (1 + 1e-9), side="right")
    count = hi - np.arange(k) - 1
    first = np.repeat(np.arange(k), count)
    second = first + 1 + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    a, b = by_area[first], by_area[second]
    lo = np.maximum(boxes[a, :2], boxes[b, :2])
    up = np.minimum(boxes[a, 2:], boxes[b, 2:])
    box_inter = np.clip(up - lo, 0, None).prod(axis=1)
    close = box_inter >= threshold * np.maximum(area[a], area[b])
    a, b = a[close], b[close]

    # Sparse rows: regions are small sets of atoms, so the pairwise intersections cost their
    # sizes, not the atom count.
    weighted = sparse.csr_matrix(member * atom_area)
    inter = np.asarray(weighted[a].multiply(sparse.csr_matrix(member)[b]).sum(axis=1)).ravel()
    hit = inter / np.maximum(area[a] + area[b] - inter, 1e-9) >= threshold
    pairs = np.stack([np.minimum(a[hit], b[hit]), np.maximum(a[hit], b[hit])], axis=1)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    suppressed = np.zeros(k, bool)
    # Rows are in rank order of the better region, whose fate is final by then.
    for better, worse in pairs.tolist():
        if not suppressed[better]:
            suppressed[worse] = True
    return np.flatnonzero(~suppressed)
