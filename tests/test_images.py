"""Safe image decoding: every odd file gives RGB upright or a one-line error naming it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wiseseg.data.images import check_image, image_size, load_image
from wiseseg.errors import DataError

from .conftest import raw_png


def _assert_rgb(arr: np.ndarray, h: int, w: int) -> None:
    assert arr.shape == (h, w, 3) and arr.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1"])
def test_modes_decode_to_rgb(tmp_path, mode):
    img = Image.new("RGB", (7, 5), (200, 10, 30)).convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    p = tmp_path / f"x.{ext}"
    img.save(p)
    _assert_rgb(load_image(p), 5, 7)


def test_16bit_is_rescaled_not_truncated(tmp_path):
    arr = np.array([[0, 1000], [30000, 65535]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    out = load_image(p)
    _assert_rgb(out, 2, 2)
    assert out[0, 0, 0] == 0 and out[1, 1, 0] == 255 and 100 < out[1, 0, 0] < 130


def test_exif_rotated_jpeg_is_upright(tmp_path):
    # Stored 40 wide × 20 high with a red left half; orientation 6 = rotate 90° clockwise.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(p, exif=exif, quality=95)
    out = load_image(p)
    _assert_rgb(out, 40, 20)
    assert image_size(p) == (40, 20)
    assert out[:20, :, 0].mean() > 200 and out[20:, :, 0].mean() < 50  # red on top


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as e:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(e.value)


def test_non_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, I am not a picture")
    with pytest.raises(DataError, match="not an image"):
        load_image(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        load_image(p)


def test_zero_size(tmp_path):
    p = tmp_path / "zero.png"
    raw_png(p, 0, 10)
    with pytest.raises(DataError, match="zero size"):
        load_image(p)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_truncated(tmp_path, fmt):
    p = tmp_path / f"t.{fmt}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated|corrupt") as e:
        load_image(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="truncated|corrupt"):
        check_image(p)


def test_decompression_bomb_refused_before_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    raw_png(p, 20000, 20000)  # 400 MP claimed in a 60-byte file
    with pytest.raises(DataError, match="too large"):
        load_image(p)
    with pytest.raises(DataError, match="too large"):
        load_image(p.with_name("bomb.png"), max_pixels=10)
