"""Image transforms for training: resize, flip, scale jitter, colour jitter (numpy, seeded).

Every random choice draws from the ``rng`` passed in, so a sample's augmentation is fixed by
(seed, epoch, index) — see :mod:`wiseseg.engine.data`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``H×W×3 uint8`` to ``size = (h, w)``."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a ``H×W`` bool/uint8 mask to ``size = (h, w)``."""
    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    out = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)
    return np.asarray(out) > 127


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation, each by a factor in [1−s, 1+s]."""
    if strength <= 0:
        return image
    img = image.astype(np.float32)
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    img = img * b
    mean = img.mean()
    img = (img - mean) * c + mean
    gray = img.mean(axis=2, keepdims=True)
    img = (img - gray) * s + gray
    return np.clip(img, 0, 255).astype(np.uint8)


def scale_into_canvas(image: np.ndarray, scale: float, rng: np.random.Generator
                      ) -> np.ndarray:
    """Shrink by ``scale`` ≤ 1 and paste at a random place on a mean-grey canvas of the same
    size (never crops, so no labelled object is cut away)."""
    if scale >= 1.0:
        return image
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = resize_image(image, (nh, nw))
    canvas = np.empty_like(image)
    canvas[:] = image.reshape(-1, 3).mean(axis=0).astype(np.uint8)
    y, x = rng.integers(0, h - nh + 1), rng.integers(0, w - nw + 1)
    canvas[y:y + nh, x:x + nw] = small
    return canvas


def to_tensor(image: np.ndarray):
    """``H×W×3 uint8`` → float ``3×H×W`` in [0, 1]."""
    import torch

    arr = np.ascontiguousarray(image)
    if not arr.flags.writeable:  # PIL-backed arrays are read-only; torch wants to own memory
        arr = arr.copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)
