"""The report's figures as PNG bytes: gallery grids (paper Figs. 1 and 4) and training curves.

Figures are built on :class:`matplotlib.figure.Figure` rather than pyplot, so nothing is left
in pyplot's global figure list, and the panels reuse :mod:`wiseseg.report.overlays`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from wiseseg import rle
from wiseseg.data.dataset import ImageRecord
from wiseseg.report.overlays import draw_cam, draw_instances

#: Draws one gallery cell: ``(axes, record, image as H×W×3 uint8)``.
PanelFn = Callable[[Axes, ImageRecord, np.ndarray], None]

#: Gallery cell size in inches (at 100 dpi: 190 px, enough for labels to stay legible).
PANEL_INCHES = 1.9


@dataclass(frozen=True)
class Column:
    """One gallery column: its heading and how to draw a cell."""

    title: str
    draw: PanelFn


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def image_panel(ax: Axes, record: ImageRecord, image: np.ndarray) -> None:
    ax.imshow(image)
    ax.set_axis_off()


def instances_panel(by_image: Mapping[int, Sequence[dict]], names: Mapping[int, str],
                    with_scores: bool) -> PanelFn:
    """Cells of COCO-style instances (``segmentation``, ``category_id``, maybe ``score``);
    the caller has already filtered them (score threshold, ignored pseudo labels)."""
    def draw(ax: Axes, record: ImageRecord, image: np.ndarray) -> None:
        # Weakest first so the most confident mask ends up on top.
        shown = sorted(by_image.get(record.id, ()), key=lambda p: p.get("score", 1.0))
        masks = rle.decode_many([p["segmentation"] for p in shown], image.shape[:2])
        draw_instances(ax, image, masks, [names.get(p["category_id"], "?") for p in shown],
                       [p["score"] for p in shown] if with_scores else None)

    return draw


def combined_cam(cams: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """One map for a multi-label image: each class's CAM scaled to its own maximum (a weak
    class would vanish next to a strong one otherwise), then the pixel-wise maximum."""
    chosen = cams[list(classes)] if len(classes) else cams
    chosen = np.clip(chosen, 0, None)
    peak = chosen.reshape(len(chosen), -1).max(axis=1)
    return (chosen / np.where(peak > 0, peak, 1)[:, None, None]).max(axis=0)


def cam_panel(cams: Mapping[int, tuple[np.ndarray, tuple[float, float, float, float]]],
              peaks: Mapping[int, Sequence[dict]] | None) -> PanelFn:
    """Cells of the labelled classes' CAM (per image id: ``C×h×w`` and the extent placing
    its cells, see :func:`~wiseseg.report.overlays.draw_cam`) with the peaks as crosses."""
    def draw(ax: Axes, record: ImageRecord, image: np.ndarray) -> None:
        pts = [(p["y"], p["x"]) for p in (peaks or {}).get(record.id, ())]
        cam, extent = cams[record.id]
        draw_cam(ax, image, combined_cam(cam, sorted(record.labels)), pts, extent=extent)

    return draw


def gallery_png(rows: Sequence[tuple[ImageRecord, np.ndarray]], columns: Sequence[Column],
                tick: Callable[[], None] | None = None) -> bytes:
    """A grid: one row per image, the columns' titles on top, the image name at the left."""
    fig = Figure(figsize=(PANEL_INCHES * len(columns), PANEL_INCHES * len(rows)))
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    fig.subplots_adjust(wspace=0.04, hspace=0.06)
    for r, (record, image) in enumerate(rows):
        for c, col in enumerate(columns):
            col.draw(axes[r, c], record, image)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(col.title, fontsize=9)
        axes[r, 0].text(-0.04, 0.5, record.name, transform=axes[r, 0].transAxes, rotation=90,
                        ha="right", va="center", fontsize=7, color="#444444")
        if tick:
            tick()
    return png_bytes(fig)


def curves_png(curves: Mapping[str, Sequence[dict]], titles: Mapping[str, str]) -> bytes | None:
    """Loss vs step, one panel per training run that logged a loss; None if none did."""
    runs = {k: [(r["step"], r["loss"]) for r in v if "loss" in r and "step" in r]
            for k, v in curves.items()}
    runs = {k: v for k, v in runs.items() if v}
    if not runs:
        return None
    fig = Figure(figsize=(3.6 * len(runs), 2.8), layout="constrained")
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, (name, pts) in zip(axes, runs.items()):
        steps, losses = zip(*pts)
        # Markers so that a run that logged one or two points is still visible.
        ax.plot(steps, losses, marker="o" if len(pts) < 30 else None, markersize=3,
                linewidth=1.2, color="#33508a")
        ax.set_title(titles.get(name, name), fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return png_bytes(fig)
