"""Overlays drawn with matplotlib: CAMs with peaks, instance masks with class and score."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wiseseg.io import atomic_write  # noqa: E402


def _colours(n: int) -> np.ndarray:
    cmap = plt.get_cmap("tab20")
    return np.array([cmap(i % 20)[:3] for i in range(max(n, 1))])


def blend_masks(image: np.ndarray, masks: np.ndarray, colour_index: Sequence[int],
                alpha: float = 0.5) -> np.ndarray:
    """Colour each mask (``N×H×W`` bool) over ``image`` (``H×W×3`` uint8); later masks on top."""
    out = image.astype(np.float32) / 255.0
    cols = _colours(max(colour_index, default=0) + 1)
    for m, ci in zip(masks, colour_index):
        out[m] = (1 - alpha) * out[m] + alpha * cols[ci]
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def draw_instances(ax, image: np.ndarray, masks: np.ndarray, labels: Sequence[str],
                   scores: Sequence[float] | None = None, title: str | None = None) -> None:
    """Masks coloured per instance, outlined, with ``label score`` at each mask's top-left."""
    ax.imshow(blend_masks(image, masks, list(range(len(masks)))))
    cols = _colours(len(masks))
    for i, m in enumerate(masks):
        if not m.any():
            continue
        ax.contour(m.astype(float), levels=[0.5], colors=[cols[i]], linewidths=0.8)
        ys, xs = np.nonzero(m)
        text = labels[i] if scores is None else f"{labels[i]} {scores[i]:.2f}"
        ax.text(xs.min(), ys.min(), text, fontsize=6, color="white", va="bottom",
                bbox={"facecolor": cols[i], "alpha": 0.8, "pad": 0.5, "linewidth": 0})
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def draw_cam(ax, image: np.ndarray, cam: np.ndarray, peaks: Sequence[tuple[int, int]] = (),
             title: str | None = None,
             extent: tuple[float, float, float, float] | None = None) -> None:
    """A CAM (``h×w`` float, any size) over the image with its peaks as crosses; ``extent``
    (:meth:`~wiseseg.models.cam_geometry.CamGeometry.image_extent`) places its cells where
    the peaks' geometry puts them (default: stretched over the image)."""
    h, w = image.shape[:2]
    ax.imshow(image)
    ax.imshow(cam, cmap="jet", alpha=0.45, extent=extent or (-0.5, w - 0.5, h - 0.5, -0.5),
              interpolation="bilinear")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    if peaks:
        ys, xs = zip(*peaks)
        ax.scatter(xs, ys, marker="x", s=30, c="white", linewidths=1.8)
        ax.scatter(xs, ys, marker="x", s=18, c="black", linewidths=0.8)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a figure as PNG atomically and close it."""
    def write(f):
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")

    out = atomic_write(path, write)
    plt.close(fig)
    return out


def cam_figure(image: np.ndarray, cams: np.ndarray, classes: Sequence[str],
               shown: Sequence[int], peaks: Sequence[dict],
               extent: tuple[float, float, float, float] | None = None):
    """Image plus one CAM panel per shown class, with that class's peaks."""
    n = 1 + len(shown)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_axis_off()
    axes[0, 0].set_title("image", fontsize=8)
    for ax, k in zip(axes[0, 1:], shown):
        pts = [(p["y"], p["x"]) for p in peaks if p["class"] == k]
        draw_cam(ax, image, cams[k], pts, title=f"{classes[k]} ({len(pts)} peaks)",
                 extent=extent)
    return fig
