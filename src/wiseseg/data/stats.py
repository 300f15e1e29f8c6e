"""Dataset summary for ``wiseseg data-stats``: counts per class, per image, and object sizes."""

from __future__ import annotations

from collections import Counter

import numpy as np

from wiseseg import rle
from wiseseg.data.dataset import Dataset

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


def split_stats(ds: Dataset, split: str) -> dict:
    """Numbers for one split (JSON-serialisable)."""
    recs = ds.records(split)
    out: dict = {"images": len(recs), "has_masks": ds.has_ground_truth(split)}
    out["images_per_class"] = {
        ds.classes[c]: n for c, n in sorted(Counter(c for r in recs for c in r.labels).items())
    }
    out["negative_images"] = sum(1 for r in recs if not r.labels)
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
        lines.append(f"\n[{split}] {s['images']} images, "
                     + ("with masks" if s["has_masks"] else "image-level labels only")
                     + f", {s['negative_images']} negative")
        lines.append("  images per class:    " + "  ".join(
            f"{k}={v}" for k, v in s["images_per_class"].items()))
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
