"""The RLE helpers against dense NumPy on random masks (pycocotools does the work)."""

import numpy as np
import pytest

from wiseseg import rle


def _masks(n=40, h=23, w=31, seed=0):
    rng = np.random.default_rng(seed)
    masks = rng.random((n, h, w)) < rng.random((n, 1, 1))  # sparse to dense
    masks[0] = False
    masks[1] = True
    return masks


def test_decode_many_is_the_inverse_of_encode_many():
    masks = _masks()
    back = rle.decode_many(rle.encode_many(masks))
    assert back.dtype == bool and back.flags.c_contiguous
    np.testing.assert_array_equal(back, masks)
    assert rle.decode_many([], (5, 7)).shape == (0, 5, 7)


def test_contains_reads_pixels_without_decoding():
    masks = _masks()
    h, w = masks.shape[1:]
    points = [(0, 0), (h - 1, w - 1), (0, w - 1), (h - 1, 0), (7, 11), (12, 3)]
    got = rle.contains(rle.encode_many(masks), points, (h, w))
    want = np.stack([masks[:, y, x] for y, x in points], axis=1)
    assert got.dtype == bool and got.shape == (len(masks), len(points))
    np.testing.assert_array_equal(got, want)
    assert rle.contains([], points, (h, w)).shape == (0, len(points))
    assert rle.contains(rle.encode_many(masks), [], (h, w)).shape == (len(masks), 0)
    with pytest.raises(ValueError, match=r"pixel \(23, 0\) is outside the 23×31 image"):
        rle.contains(rle.encode_many(masks), [(h, 0)], (h, w))
