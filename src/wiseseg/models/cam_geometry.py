"""Where a class-activation-map cell sits in the image: the one definition every user of peaks
shares (peak extraction, the seeds of peak backpropagation, the PRM baseline, the figures).

Coordinates are in pixels of the image they refer to, with the centre of pixel ``(r, c)`` at
``(r, c)`` (so pixel ``r`` covers ``[r − 0.5, r + 0.5)``). Three maps are involved:

1. **image → network input**: the classifier sees the image resized to ``input_size``
   (H_in × W_in; aspect not kept), so an input position ``y_in`` is the image position
   ``(y_in + 0.5) · H / H_in − 0.5`` (pixel edges map to pixel edges).
2. **backbone cell → network input**, by a *convention* (``CONVENTIONS``) for cell ``k`` of an
   ``n``-cell axis over ``N`` input pixels with backbone stride ``s``:

   - ``uniform``: the cells tile the input evenly, cell ``k`` is centred at
     ``(k + 0.5) · N / n − 0.5`` (what a stride-cell picture suggests);
   - ``receptive``: the centre of the cell's receptive field, ``s · k + o``, with the offset
     ``o`` measured on the network itself (:func:`receptive_offset`): 0 for torchvision's
     ResNets, ``s − 1`` for EfficientNet-Lite with TF "SAME" padding on inputs whose sizes
     divide evenly, other values on odd sizes;
   - ``corners``: the first and last cells sit on the first and last pixels,
     ``k · (N − 1) / (n − 1)`` (the ``align_corners=True`` picture).

   Which convention puts peaks inside their objects is a matter of measurement, not of
   geometry — a trained CAM need not peak at the receptive-field centre of the object's cells
   (``benchmarks/cam_geometry.py``; docs/cpu-preset.md reports what was measured).
3. **sub-pixel cell → backbone cell**: PRM upsamples the CAM by ``u`` with bilinear
   ``align_corners=True``, so cell ``k'`` of the ``u·n``-cell map is the backbone coordinate
   ``k' · (n − 1) / (u·n − 1)``.

All three are affine per axis, so :class:`CamGeometry` is a scale and an offset per axis for
cell → image, and its inverse for image → cell (nearest cell, clipped to the map).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CONVENTIONS = ("uniform", "receptive", "corners")


@dataclass(frozen=True)
class CamGeometry:
    """Cell ↔ pixel mapping for one network input size (see the module docstring).

    Attributes:
        input_size: ``(H_in, W_in)`` of the network input.
        base_size: ``(h, w)`` cells of the backbone's feature map (before upsampling).
        upsample: the sub-pixel factor ``u``; the CAM has ``(u·h, u·w)`` cells.
        scale, offset: per axis ``(y, x)``: backbone cell ``k`` → input position
            ``scale · k + offset``.
    """

    input_size: tuple[int, int]
    base_size: tuple[int, int]
    upsample: int
    scale: tuple[float, float]
    offset: tuple[float, float]

    @property
    def cam_size(self) -> tuple[int, int]:
        return (self.base_size[0] * self.upsample, self.base_size[1] * self.upsample)

    def _sub(self, axis: int) -> float:
        """Backbone cells per CAM cell along ``axis`` (align_corners=True upsampling)."""
        n, u = self.base_size[axis], self.upsample
        return (n - 1) / (u * n - 1) if u > 1 and n > 1 else 1.0 / u

    def cell_to_input(self, i: float, j: float) -> tuple[float, float]:
        """CAM cell ``(i, j)`` (may be fractional) → network-input position ``(y, x)``."""
        return tuple(self.scale[a] * (k * self._sub(a)) + self.offset[a]
                     for a, k in ((0, i), (1, j)))  # type: ignore[return-value]

    def input_to_cell(self, y: float, x: float) -> tuple[int, int]:
        """Network-input position → the nearest CAM cell (clipped to the map)."""
        out = []
        for a, v in ((0, y), (1, x)):
            k = (v - self.offset[a]) / self.scale[a] / self._sub(a)
            out.append(int(min(self.cam_size[a] - 1, max(0, round(k)))))
        return out[0], out[1]

    def cell_to_image(self, i: float, j: float, image_size: tuple[int, int]
                      ) -> tuple[float, float]:
        """CAM cell → position in the original image of ``image_size = (H, W)``."""
        y, x = self.cell_to_input(i, j)
        return (input_to_image(y, self.input_size[0], image_size[0]),
                input_to_image(x, self.input_size[1], image_size[1]))

    def cell_to_pixel(self, i: float, j: float, image_size: tuple[int, int]) -> tuple[int, int]:
        """CAM cell → the image pixel ``(row, column)`` holding its position (clipped)."""
        y, x = self.cell_to_image(i, j, image_size)
        return (int(min(image_size[0] - 1, max(0, round(y)))),
                int(min(image_size[1] - 1, max(0, round(x)))))

    def image_extent(self, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` in image coordinates for drawing the CAM as an
        image (matplotlib's ``extent``) so that each cell's centre lands where this geometry
        puts it."""
        h, w = self.cam_size
        y0, x0 = self.cell_to_image(0, 0, image_size)
        y1, x1 = self.cell_to_image(h - 1, w - 1, image_size)
        dy = (y1 - y0) / (h - 1) if h > 1 else float(image_size[0])
        dx = (x1 - x0) / (w - 1) if w > 1 else float(image_size[1])
        return (x0 - dx / 2, x1 + dx / 2, y1 + dy / 2, y0 - dy / 2)

    def to_image(self, cam: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Resample a CAM onto the pixels of the original image.

        ``cam``: float ``C×h×w`` with ``(h, w) == cam_size``. Returns float ``C×H×W`` for
        ``image_size = (H, W)``: at each pixel centre, the bilinear interpolation of the cells
        around the position this geometry gives it (the value of the border cells beyond the
        outermost cell centres), so a peak's pixel (:meth:`cell_to_pixel`) reads its cell's
        value up to the rounding of its position.
        """
        import torch.nn.functional as F

        if tuple(cam.shape[-2:]) != self.cam_size:
            raise ValueError(f"CAM of {tuple(cam.shape[-2:])} cells, geometry has "
                             f"{self.cam_size}")
        axes = []
        for a, n_img in ((0, image_size[0]), (1, image_size[1])):
            n_in, n = self.input_size[a], self.cam_size[a]
            pos = (torch.arange(n_img, dtype=torch.float64) + 0.5) * n_in / n_img - 0.5
            k = (pos - self.offset[a]) / self.scale[a] / self._sub(a)
            # grid_sample's align_corners=True: -1 and 1 are the first and last cell centres
            axes.append((2 * k / (n - 1) - 1) if n > 1 else torch.zeros_like(k))
        gy, gx = torch.meshgrid(axes[0], axes[1], indexing="ij")
        grid = torch.stack([gx, gy], -1).to(torch.float32)[None]
        return F.grid_sample(cam[None].float(), grid, mode="bilinear", padding_mode="border",
                             align_corners=True)[0]

    def pixel_to_cell(self, y: float, x: float, image_size: tuple[int, int]) -> tuple[int, int]:
        """Image position → the nearest CAM cell."""
        return self.input_to_cell(image_to_input(y, image_size[0], self.input_size[0]),
                                  image_to_input(x, image_size[1], self.input_size[1]))


def input_to_image(v: float, n_in: int, n_img: int) -> float:
    """Position along an axis of ``n_in`` input pixels → along ``n_img`` image pixels."""
    return (v + 0.5) * n_img / n_in - 0.5


def image_to_input(v: float, n_img: int, n_in: int) -> float:
    return (v + 0.5) * n_in / n_img - 0.5


def make_geometry(convention: str, input_size: tuple[int, int], base_size: tuple[int, int],
                  stride: int, upsample: int = 1,
                  receptive: tuple[float, float] | None = None) -> CamGeometry:
    """The geometry of a CAM under ``convention`` (one of :data:`CONVENTIONS`).

    Args:
        input_size: ``(H_in, W_in)``.
        base_size: ``(h, w)`` of the backbone map the CAM is computed from.
        stride: the backbone's stride at that map.
        upsample: sub-pixel factor.
        receptive: for ``receptive``, the measured offsets ``(o_y, o_x)``
            (:func:`receptive_offset`).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown CAM geometry convention {convention!r} "
                         f"(known: {', '.join(CONVENTIONS)})")
    scale, offset = [], []
    for a in (0, 1):
        n_in, n = input_size[a], base_size[a]
        if convention == "uniform":
            scale.append(n_in / n)
            offset.append(0.5 * n_in / n - 0.5)
        elif convention == "corners":
            scale.append((n_in - 1) / (n - 1) if n > 1 else 1.0)
            offset.append(0.0 if n > 1 else (n_in - 1) / 2)
        else:
            if receptive is None:
                raise ValueError("the receptive convention needs the measured offsets")
            scale.append(float(stride))
            offset.append(float(receptive[a]))
    return CamGeometry(tuple(input_size), tuple(base_size), int(upsample),  # type: ignore[arg-type]
                       tuple(scale), tuple(offset))  # type: ignore[arg-type]


def receptive_offset(features: nn.Module, input_size: tuple[int, int], stride: int,
                     channels: int = 3, period: int = 64, limit: int = 2048
                     ) -> tuple[float, float]:
    """Offsets ``o`` such that the receptive field of backbone cell ``k`` is centred on input
    position ``stride · k + o``, measured on ``features`` (a callable image → one map).

    The receptive field of a cell is the set of input pixels with a non-zero gradient of that
    cell; its extent depends only on the architecture (kernels, strides, padding), so random
    input is enough. It is measured at the middle cell of an input enlarged by a multiple of
    ``period`` pixels until the field no longer reaches the border: a multiple of 64 keeps the
    parity of every feature map's size up to stride 32, and with it TF "SAME" padding's
    choice of side, so the offset is the one of ``input_size``.
    """
    grow = 0
    while True:
        h, w = input_size[0] + grow, input_size[1] + grow
        x = torch.rand(1, channels, h, w, requires_grad=True)
        with torch.enable_grad():
            out = features(x)
            ci, cj = out.shape[-2] // 2, out.shape[-1] // 2
            (grad,) = torch.autograd.grad(out[0, :, ci, cj].sum(), x)
        support = grad[0].abs().sum(dim=0) > 0
        rows = torch.nonzero(support.any(dim=1)).flatten()
        cols = torch.nonzero(support.any(dim=0)).flatten()
        if rows.numel() == 0:
            return ((stride - 1) / 2, (stride - 1) / 2)
        inside = rows[0] > 0 and cols[0] > 0 and rows[-1] < h - 1 and cols[-1] < w - 1
        if inside or max(h, w) + period > limit:
            break
        grow += period * max(1, (max(h, w) // period) // 2)
    cy = (float(rows[0]) + float(rows[-1])) / 2
    cx = (float(cols[0]) + float(cols[-1])) / 2
    return (cy - stride * ci, cx - stride * cj)
