"""Images labelled for some classes only (COCO ``unlabelled_classes``): which of them Mask R-CNN
may train on.

Such an image says which of its labelled classes are present but nothing about the others,
so an object of an unlabelled class in it would be taught as background. Stage 1 trains on
it with those classes left out of its loss; after stage 1 the classifier can say whether
any unlabelled class is present. ``pseudo.partial_labels``:

- ``predict`` (``cpu`` preset): the image joins Mask R-CNN training, with the pseudo masks
  of its labelled classes, when stage 1 scores every unlabelled class below
  ``peaks.class_threshold``; otherwise it stays with stage 1 only.
- ``skip`` (``paper`` preset): stage 1 only, always (the paper's data is fully labelled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from wiseseg.data.dataset import ImageRecord

#: pseudo.partial_labels values (config.CHOICES lists the same)
MODES = ("predict", "skip")


@dataclass
class PartialDecision:
    """What :func:`decide_partial` chose: ids of the images Mask R-CNN trains on, and for the
    others the unlabelled classes (0-based) stage 1 predicted present."""

    kept: set[int] = field(default_factory=set)
    excluded: dict[int, list[int]] = field(default_factory=dict)

    def as_dict(self, classes: Sequence[str]) -> dict:
        return {"kept": len(self.kept), "excluded": len(self.excluded),
                "excluded_images": {str(i): [classes[c] for c in cs]
                                    for i, cs in sorted(self.excluded.items())}}


def decide_partial(records: Sequence[ImageRecord], class_scores: Mapping[int, Sequence[float]],
                   threshold: float, mode: str = "predict") -> PartialDecision:
    """Which partially labelled images may train Mask R-CNN (see the module docstring).

    Args:
        records: images with unlabelled classes (``ImageRecord.unknown`` non-empty; others
            are ignored). None is fine: nothing is kept.
        class_scores: image id → stage 1's class probabilities in [0, 1], one per class
            (``peaks_<split>.json``'s ``class_scores``).
        threshold: a class with probability ≥ this is predicted present.
        mode: ``predict`` or ``skip`` (every image excluded, none listed as predicted).

    Raises:
        ValueError: an unknown mode, or an image without scores or with too few of them.
    """
    if mode not in MODES:
        raise ValueError(f"pseudo.partial_labels must be one of {', '.join(MODES)}, "
                         f"got {mode!r}")
    out = PartialDecision()
    for r in records:
        if not r.unknown:
            continue
        if mode == "skip":
            out.excluded[r.id] = []
            continue
        scores = class_scores.get(r.id)
        if scores is None or len(scores) <= max(r.unknown):
            raise ValueError(f"image {r.id} ({r.name}): stage 1 gave no class scores for its "
                             f"unlabelled classes (got {scores!r})")
        present = sorted(c for c in r.unknown if float(scores[c]) >= threshold)
        if present:
            out.excluded[r.id] = present
        else:
            out.kept.add(r.id)
    return out
