"""Safe image decoding: every image the project reads goes through :func:`load_image`.

Decoding rules (all outputs are H×W×3 ``uint8`` RGB, upright):
- EXIF orientation is applied, so the array is what a viewer shows; ground-truth masks are
  expected to be aligned with that upright image.
- Grayscale, palette, RGBA/LA (alpha dropped), CMYK and YCbCr are converted to RGB; 16-bit and
  32-bit integer or float images are rescaled to 0–255 from their own value range, not
  truncated.
- Images with more than ``max_pixels`` pixels are refused before they are decoded
  (decompression bombs); zero-size, truncated and non-image files are refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wiseseg.errors import DataError

#: Default pixel limit: 8000×8000. A VOC image is 0.19 MP, a 50 MP camera image still passes.
MAX_PIXELS = 64_000_000

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm")

# EXIF orientations 5–8 swap width and height.
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


def _png_header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, or None; PIL refuses zero sizes before telling us."""
    with path.open("rb") as f:
        head = f.read(24)
    if len(head) == 24 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def _open(path: Path, max_pixels: int) -> Image.Image:
    if not path.exists():
        raise DataError(path, "file not found")
    if not path.is_file():
        raise DataError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError:
        dims = _png_header_size(path)
        if dims is not None and 0 in dims:
            raise DataError(path, f"image has zero size ({dims[0]}×{dims[1]})") from None
        raise DataError(path, "not an image file (no decoder recognises it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(path, "image too large (decompression bomb guard)") from None
    except OSError as e:
        raise DataError(path, f"truncated or corrupt image ({e})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise DataError(path, f"image has zero size ({w}×{h})")
    if w * h > max_pixels:
        raise DataError(
            path, f"image too large: {w}×{h} = {w * h:,} pixels exceeds the limit of "
            f"{max_pixels:,} (decompression bomb guard)"
        )
    return img


def image_size(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of the upright image, read from the header without decoding pixels."""
    path = Path(path)
    img = _open(path, max_pixels)
    with img:
        w, h = img.size
        try:
            orientation = img.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block should not hide a readable image
            orientation = 1
    if orientation in _TRANSPOSING_ORIENTATIONS:
        w, h = h, w
    return h, w


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = ((arr - lo) * scale).round().astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an image file to an upright RGB array.

    Args:
        path: image file.
        max_pixels: refuse images with more pixels than this (before decoding).

    Returns:
        H×W×3 ``uint8`` array, RGB, EXIF orientation applied.

    Raises:
        DataError: ``"<path>: <problem>"`` for a missing, empty, truncated, non-image, zero-size
            or too-large file.
    """
    path = Path(path)
    img = _open(path, max_pixels)
    try:
        with img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            rgb = _to_rgb(upright)
            arr = np.asarray(rgb, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"truncated or corrupt image ({e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise DataError(path, f"decoded to an unusable array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def load_label_png(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode an index PNG (VOC SegmentationObject/SegmentationClass) to its raw indices.

    Palette PNGs give their palette indices, not colours; grayscale PNGs give their values.

    Returns:
        H×W ``uint8`` array of indices (VOC: 0 background, 255 void).
    """
    path = Path(path)
    img = _open(path, max_pixels)
    try:
        with img:
            if img.mode not in ("P", "L", "I", "I;16", "1"):
                raise DataError(
                    path, f"label PNG must be palette or grayscale, got mode {img.mode!r}"
                )
            arr = np.asarray(img)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"truncated or corrupt label image ({e})") from None
    if arr.max(initial=0) > 255:
        raise DataError(path, f"label value {int(arr.max())} does not fit the 0–255 index range")
    return arr.astype(np.uint8)


def check_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Cheap integrity check at listing time; returns the upright (height, width).

    Reads the header (size, EXIF) and checks for truncation without decoding pixels: a JPEG
    must contain its end-of-image marker near the end of the file, a PNG must pass PIL's chunk
    CRC verification. A file that passes may still fail to decode later, where
    :func:`load_image` raises the same kind of error.
    """
    path = Path(path)
    size = image_size(path, max_pixels)
    with path.open("rb") as f:
        head = f.read(8)
        if head[:2] == b"\xff\xd8":
            f.seek(0, 2)
            n = f.tell()
            f.seek(max(0, n - 4096))
            if b"\xff\xd9" not in f.read():
                raise DataError(path, "truncated JPEG (no end-of-image marker)")
        elif head == b"\x89PNG\r\n\x1a\n":
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as e:
                raise DataError(path, f"truncated or corrupt PNG ({e})") from None
    return size
