"""Dataset summary for ``wiseseg data-stats``: counts per class, per image, and object sizes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import Dataset, ImageRecord

#: Object-size bins as a fraction of the image area (also used by the evaluator's breakdown).
SIZE_BINS = (("small", 0.0, 0.01), ("medium", 0.01, 0.1), ("large", 0.1, 1.0 + 1e-9))
#: Objects-per-image bins (the paper's Figure 5).
COUNT_BINS = (("1", 1, 1), ("2", 2, 2), ("3-4", 3, 4), (">4", 5, 10**9))


def size_bin(fraction: float) -> str:
    for name, lo, hi in SIZE_BINS:
        if lo <= fraction < hi:
            return name
    return SIZE_BINS[-1][0]


def count_bin(n: int) -> str | None:
    for name, lo, hi in COUNT_BINS:
        if lo <= n <= hi:
            return name
    return None


def classes_everywhere(records: Sequence[ImageRecord], classes: Sequence[str]) -> list[str]:
    """Names of the classes labelled in every one of ``records`` (none for an empty list).

    Such a class cannot be localised from image-level labels: "the image contains it" is true
    of every image, so nothing contrasts the object with its background."""
    if not records:
        return []
    common = set(range(len(classes)))
    for r in records:
        common &= set(r.labels)
        if not common:
            return []
    return [classes[c] for c in sorted(common)]


def everywhere_warning(names: Sequence[str], split: str, n_images: int) -> str:
    """The one-line warning for :func:`classes_everywhere`'s answer, with the fix."""
    which = ", ".join(repr(n) for n in names)
    return (f"warning: class {which} is in every one of the {n_images} images of split "
            f"{split!r}: image-level labels cannot localise it (stage 1 learns the scene, "
            f"not the object). Add images without it: --negatives DIR (any folder of images "
            f"containing none of the classes), or images of other classes")


def classes_absent(records: Sequence[ImageRecord], classes: Sequence[str]) -> list[str]:
    """Names of the classes labelled in none of ``records``: nothing teaches them (an empty
    class folder listed in ``classes.txt``, a category without annotations)."""
    seen = {c for r in records for c in r.labels}
    return [name for c, name in enumerate(classes) if c not in seen]


def absent_warning(names: Sequence[str], split: str) -> str:
    """The one-line warning for :func:`classes_absent`'s answer."""
    which = ", ".join(repr(n) for n in names)
    return (f"warning: class {which} has no image in split {split!r}: nothing teaches it, "
            f"so it is never predicted and scores 0 AP; add images of it or drop it from the "
            f"class list")


def split_stats(ds: Dataset, split: str) -> dict:
    """Numbers for one split (JSON-serialisable); the image-level counts include the split's
    image-level-only images and negatives (:meth:`Dataset.weak`)."""
    recs = ds.records(split)
    weak = ds.weak(split).records
    out: dict = {"images": len(recs), "has_masks": ds.has_ground_truth(split),
                 "image_level_only_images": len(weak) - len(recs)}
    out["images_per_class"] = {
        ds.classes[c]: n for c, n in sorted(Counter(c for r in weak for c in r.labels).items())
    }
    out["negative_images"] = sum(1 for r in weak if not r.labels)
    # labelled for some classes only: stage 1 decides whether Mask R-CNN trains on them
    out["partially_labelled_images"] = len(ds.partially_labelled(split))
    out["unlabelled_per_class"] = {
        ds.classes[c]: n for c, n in sorted(Counter(c for r in weak for c in r.unknown).items())
    }
    # only a training split is harmed (a validation split of one class is fine)
    out["classes_in_every_image"] = classes_everywhere(weak, ds.classes) \
        if split.startswith("train") else []
    out["classes_without_images"] = classes_absent(weak, ds.classes) \
        if split.startswith("train") else []
    if not out["has_masks"]:
        return out
    gt = ds.ground_truth(split)
    per_class: Counter = Counter()
    per_image: Counter = Counter()
    sizes: Counter = Counter()
    fractions = []
    for r in recs:
        g = gt[r.id]
        per_image[len(g.instances)] += 1
        per_class.update(i.category for i in g.instances)
        areas = rle.area([i.segmentation for i in g.instances]) / float(r.height * r.width)
        fractions.extend(areas.tolist())
        sizes.update(size_bin(a) for a in areas)
    out["instances"] = int(sum(per_class.values()))
    out["instances_per_class"] = {ds.classes[c]: per_class.get(c, 0)
                                  for c in range(len(ds.classes))}
    out["instances_per_image"] = {str(k): v for k, v in sorted(per_image.items())}
    out["object_size"] = {name: sizes.get(name, 0) for name, _, _ in SIZE_BINS}
    if fractions:
        q = np.quantile(np.asarray(fractions), [0.1, 0.5, 0.9])
        out["object_area_fraction_quantiles"] = {"p10": q[0], "p50": q[1], "p90": q[2]}
    return out


def format_stats(ds: Dataset, stats: dict[str, dict]) -> str:
    """Human-readable summary."""
    lines = [f"dataset {ds.name} ({ds.layout}) at {ds.root}", f"classes ({len(ds.classes)}): "
             + ", ".join(ds.classes)]
    for split, s in stats.items():
        extra = s.get("image_level_only_images", 0)
        lines.append(f"\n[{split}] {s['images']} images, "
                     + ("with masks" if s["has_masks"] else "image-level labels only")
                     + (f", {extra} more with image-level labels only" if extra else "")
                     + f", {s['negative_images']} negative"
                     + (f", {s['partially_labelled_images']} with unlabelled classes (Mask R-CNN "
                        f"trains on those stage 1 finds none of them in: pseudo.partial_labels)"
                        if s.get("partially_labelled_images") else ""))
        lines.append("  images per class:    " + "  ".join(
            f"{k}={v}" for k, v in s["images_per_class"].items()))
        if s.get("unlabelled_per_class"):
            lines.append("  unchecked per class: " + "  ".join(
                f"{k}={v}" for k, v in s["unlabelled_per_class"].items()))
            lines.append("  note: stage 1 learns an unchecked class from the other images only, "
                         "and its objects in these images get no pseudo mask; labels that "
                         "check every class help most (the VOC sample: "
                         "docs/real-photographs.md)")
        if s.get("classes_in_every_image"):
            lines.append("  " + everywhere_warning(s["classes_in_every_image"], split,
                                                   s["images"] + extra))
        if s.get("classes_without_images"):
            lines.append("  " + absent_warning(s["classes_without_images"], split))
        if not s["has_masks"]:
            continue
        lines.append(f"  instances: {s['instances']}")
        lines.append("  instances per class: " + "  ".join(
            f"{k}={v}" for k, v in s["instances_per_class"].items()))
        hist = s["instances_per_image"]
        top = max(hist.values()) if hist else 1
        lines.append("  instances per image:")
        for k, v in hist.items():
            lines.append(f"    {k:>3} | {'#' * max(1, round(30 * v / top))} {v}")
        sz = s["object_size"]
        lines.append("  object size (area / image area): " + "  ".join(
            f"{name} [{lo:g}, {min(hi, 1):g})={sz[name]}" for name, lo, hi in SIZE_BINS))
        if "object_area_fraction_quantiles" in s:
            q = s["object_area_fraction_quantiles"]
            lines.append(f"    area fraction p10={q['p10']:.4f} p50={q['p50']:.4f} "
                         f"p90={q['p90']:.4f}")
    if ds.skipped:
        lines.append(f"\nskipped {len(ds.skipped)} bad item(s):")
        lines.extend(f"  {s.path}: {s.problem}" for s in ds.skipped)
    return "\n".join(lines)
