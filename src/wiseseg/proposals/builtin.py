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

from wiseseg.data.dataset import ImageRecord
from wiseseg.errors import ConfigError
from wiseseg.proposals.base import Proposals, ProposalSource
from wiseseg.proposals.dedup import (
    common_refinement,
    region_boxes,
    suppress_duplicates,
    unique_rows,
)
from wiseseg.proposals.grouping import Problem, Strategy, group
from wiseseg.proposals.masks import encode_regions
from wiseseg.proposals.objectness import merge_contrast, objectness
from wiseseg.proposals.superpixels import (
    COLOUR_SPACES,
    Superpixels,
    colour_histograms,
    colour_spaces,
    describe,
    orientation_responses,
    segment,
    texture_codes,
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
            if cs not in COLOUR_SPACES or not letters or set(letters) - set("CTSFBD"):
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
    """The image downscaled to at most ``work_pixels`` pixels (area averaging, aspect kept).

    Returns:
        h×w×3 uint8 with h ≤ H, w ≤ W (the input itself when small enough).
    """
    big_h, big_w = image.shape[:2]
    if big_h * big_w <= work_pixels:
        return image
    scale = np.sqrt(work_pixels / (big_h * big_w))
    h, w = max(1, int(big_h * scale)), max(1, int(big_w * scale))
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize(
        (w, h), Image.Resampling.BOX))


def _strategy(letters: str) -> Strategy:
    return Strategy(*(float(c in letters) for c in "CTSFBD"))


_BACKBONE = {}


def deep_features(image: np.ndarray, layer: str = "c4") -> np.ndarray:
    """ImageNet features of the image upsampled to stride 4: (h/4)×(w/4)×F float32."""
    import torch
    import torch.nn.functional as F

    from wiseseg.models.backbones import build_backbone
    if "bb" not in _BACKBONE:
        _BACKBONE["bb"] = build_backbone("efficientnet_lite0").eval()
    bb = _BACKBONE["bb"]
    h, w = image.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        f = bb(bb.normalize(x), layer)[layer]
        f = F.interpolate(f, size=((h + 3) // 4, (w + 3) // 4), mode="bilinear",
                          align_corners=False)
    return f[0].permute(1, 2, 0).numpy()


def superpixel_features(labels: np.ndarray, n: int, feat: np.ndarray) -> np.ndarray:
    """Mean of the stride-4 features over each superpixel's samples (its centre cell when it
    has none)."""
    h, w = labels.shape
    sub = labels[2::4, 2::4] if h > 2 and w > 2 else labels[::4, ::4]
    fh, fw = sub.shape
    f = feat[:fh, :fw].reshape(-1, feat.shape[2])
    cnt = np.bincount(sub.ravel(), minlength=n).astype(np.float32)
    out = np.zeros((n, feat.shape[2]), np.float32)
    np.add.at(out, sub.ravel(), f)
    out /= np.maximum(cnt, 1)[:, None]
    miss = np.flatnonzero(cnt == 0)
    if len(miss):
        from scipy import ndimage
        cy, cx = (np.array(c) for c in zip(*ndimage.center_of_mass(
            np.ones_like(labels), labels, miss)))
        out[miss] = feat[np.minimum(cy.astype(int) // 4, feat.shape[0] - 1),
                         np.minimum(cx.astype(int) // 4, feat.shape[1] - 1)]
    return out


def edge_map(lab01: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    g = np.zeros(lab01.shape[:2], np.float32)
    for c in range(3):
        g += ndimage.gaussian_gradient_magnitude(lab01[..., c], 1.0) ** 2
    g = np.sqrt(g)
    q = float(np.percentile(g, 99)) or 1.0
    return np.minimum(g / q, 1.0)


def generate(image: np.ndarray, cfg: BuiltinSettings) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Ranked, de-duplicated candidate regions of a working image.

    Args:
        image: h×w×3 uint8 RGB (already at working resolution).
        cfg: settings.

    Returns:
        ``(atoms, member, scores)``: an h×w int32 atom map (the common refinement of all
        over-segmentations), K×A bool regions over atoms and K float32 objectness values,
        sorted descending, K ≤ ``cfg.top_k``.
    """
    h, w = image.shape[:2]
    names = {c for c, _ in cfg.segmentations} | {c for c, _ in cfg.strategies} | {"lab", "rgb"}
    spaces = colour_spaces(image, names)
    codes = texture_codes(orientation_responses(spaces["rgb"]))
    min_size = max(4, int(round(cfg.min_size * h * w)))
    letters = "".join(s for _, s in cfg.strategies)
    edges = edge_map(spaces["lab"]) if "B" in letters else None
    feat = deep_features(image) if "D" in letters else None

    segs: list[tuple[Superpixels, dict[str, np.ndarray]]] = []
    problems = []
    for cs, k in cfg.segmentations:
        sp = describe(segment(spaces[cs], k, cfg.sigma, min_size), edges)
        spf = superpixel_features(sp.labels, sp.n, feat) if feat is not None else None
        texture = texture_histograms(sp.labels, sp.n, codes)
        counts = {c: colour_histograms(sp.labels, sp.n, spaces[c], normalise=False)
                  for c in sorted({c for c, _ in cfg.strategies} | {"lab"})}
        hists = {c: h / np.maximum(h.sum(axis=1, keepdims=True), 1.0)
                 for c, h in counts.items()}
        segs.append((sp, counts))
        problems += [Problem(sp, hists[c], texture, _strategy(s), spf)
                     for c, s in cfg.strategies]
    hierarchies = group(problems)

    regions, scores, boxes = [], [], []
    per_seg = len(cfg.strategies)
    for i, (sp, counts) in enumerate(segs):
        hs = hierarchies[i * per_seg:(i + 1) * per_seg]
        member = np.concatenate([hh.member for hh in hs])
        c_merge = np.concatenate([merge_contrast(hh, counts["lab"]) for hh in hs])
        # A region formed in several hierarchies is one candidate with its best C_merge.
        first, inverse = unique_rows(member)
        best = np.zeros(len(first), np.float32)
        np.maximum.at(best, inverse, c_merge)
        unique = member[first]
        regions.append(unique)
        scores.append(objectness(unique, sp, counts["lab"], best))
        boxes.append(region_boxes(unique, sp.boxes))

    atoms, to_label = common_refinement([sp.labels for sp, _ in segs])
    atom_area = np.bincount(atoms.ravel(), minlength=len(to_label[0])).astype(np.float64)
    member = np.concatenate([r[:, lab] for r, lab in zip(regions, to_label)])
    score = np.concatenate(scores)
    box = np.concatenate(boxes)
    order = np.argsort(-score, kind="stable")
    member, score, box = member[order], score[order], box[order]
    # Only the best few hundred can make the cut; look further only if suppression thins
    # them out below top_k.
    pool = 2 * cfg.top_k
    while True:
        keep = suppress_duplicates(member[:pool], atom_area, cfg.nms_iou)
        if len(keep) >= cfg.top_k or pool >= len(member):
            break
        pool *= 2
    keep = keep[: cfg.top_k]
    return atoms, member[keep], score[keep]
