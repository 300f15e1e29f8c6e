"""What every proposal source produces (:class:`Proposals`) and the interface it implements."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord
from wiseseg.rle import RLE

#: Bumped whenever any source's output for the same settings changes; part of every
#: fingerprint, so caches made by older code are recomputed.
PROPOSALS_VERSION = 2


@dataclass
class Proposals:
    """Object proposals of one image, best first.

    Attributes:
        masks: N COCO RLEs (``counts`` str, ``size`` [h, w]).
        boxes: N×4 float32 tight boxes ``xyxy`` in pixels (x2, y2 exclusive: a one-pixel mask
            at (x, y) has box (x, y, x+1, y+1)).
        scores: N float32 objectness ≥ 0, sorted descending (each source documents its scale).
        size: (h, w) of the image.
    """

    masks: list[RLE]
    boxes: np.ndarray
    scores: np.ndarray
    size: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.masks)
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.size = (int(self.size[0]), int(self.size[1]))
        if len(self.boxes) != n or len(self.scores) != n:
            raise ValueError(f"Proposals: {n} masks, {len(self.boxes)} boxes and "
                             f"{len(self.scores)} scores must agree")
        if n and (not np.all(np.isfinite(self.scores)) or self.scores.min() < 0):
            raise ValueError("Proposals: scores must be finite and ≥ 0")
        if n > 1 and np.any(np.diff(self.scores) > 0):
            raise ValueError("Proposals: scores must be sorted in descending order")
        for m in self.masks:
            if tuple(m["size"]) != self.size:
                raise ValueError(f"Proposals: mask of size {m['size']} in an image of size "
                                 f"{list(self.size)}")

    def __len__(self) -> int:
        return len(self.masks)

    @classmethod
    def from_masks(cls, masks: Sequence[RLE], scores: Sequence[float] | np.ndarray,
                   size: tuple[int, int], top_k: int | None = None) -> Proposals:
        """Sort by score (stable: ties keep their order), keep the top ``top_k``, add boxes."""
        scores = np.asarray(scores, np.float64).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        kept = [rle.normalize(masks[i]) for i in order]
        return cls(kept, xyxy_boxes(kept), scores[order], size)

    def top(self, k: int | None) -> Proposals:
        """The first ``k`` proposals (all when ``k`` is None)."""
        if k is None or k >= len(self):
            return self
        return Proposals(self.masks[:k], self.boxes[:k], self.scores[:k], self.size)

    def decode(self) -> np.ndarray:
        """N×h×w bool masks."""
        return rle.decode_many(self.masks, size=self.size)

    def to_json(self) -> dict:
        return {"size": list(self.size), "masks": self.masks,
                "scores": [float(s) for s in self.scores],
                "boxes": [[float(v) for v in b] for b in self.boxes]}

    @classmethod
    def from_json(cls, data: dict) -> Proposals:
        return cls(list(data["masks"]), np.asarray(data["boxes"], np.float32),
                   np.asarray(data["scores"], np.float32), tuple(data["size"]))


def xyxy_boxes(masks: Sequence[RLE]) -> np.ndarray:
    """Tight ``xyxy`` boxes (N×4 float32) of RLE masks; an empty mask gives (0, 0, 0, 0)."""
    xywh = rle.to_bbox(list(masks)).astype(np.float32)
    xywh[:, 2:] += xywh[:, :2]
    return xywh


class ProposalSource(ABC):
    """Something that turns an image into :class:`Proposals`.

    Subclasses set ``name`` and implement :meth:`settings` and :meth:`propose`. Instances are
    pickled into worker processes, so they hold plain data only.
    """

    name: str = "source"
    #: At most this many worker processes (None: no limit); a source holding a large model
    #: sets 1 and computes in the calling process.
    max_workers: int | None = None

    @abstractmethod
    def settings(self) -> dict:
        """Everything that changes the output, JSON-serialisable."""

    @abstractmethod
    def propose(self, image: np.ndarray, record: ImageRecord) -> Proposals:
        """Proposals of one image.

        Args:
            image: H×W×3 uint8 RGB, upright (as :func:`wiseseg.data.load_image` gives).
            record: the image's record; precomputed sources find their file by
                ``record.name``.
        """

    def fingerprint(self) -> str:
        """Hash of name, settings and :data:`PROPOSALS_VERSION` (16 hex digits)."""
        blob = json.dumps({"name": self.name, "settings": self.settings(),
                           "version": PROPOSALS_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def needs_image(self) -> bool:
        """Whether :meth:`propose` reads the pixels (precomputed loaders only check the size)."""
        return True

    def source_file(self, record: ImageRecord) -> Path | None:
        """The file :meth:`propose` reads ``record``'s proposals from (precomputed loaders),
        or None. A store records its size, time and digest, so that a re-exported file is
        never answered with the proposals of the old one."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings()})"
