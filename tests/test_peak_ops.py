"""Peak stimulation on hand-made maps, the loss against torch's, negatives, extraction, PRM."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wiseseg.models.cam_geometry import make_geometry
from wiseseg.models.peak_ops import (
    Peak,
    class_balance_weights,
    extract_peaks,
    local_peaks,
    multilabel_loss,
    peak_stimulation,
)


def _bowl(size: int = 7, centre: tuple[int, int] = (5, 5)) -> torch.Tensor:
    """−0.01·d² around ``centre``: a single local maximum, no plateaus."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    d2 = (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2
    return (-0.01 * d2.float()).view(1, 1, size, size)


def _map(points: dict[tuple[int, int], float]) -> torch.Tensor:
    m = _bowl()
    for (y, x), v in points.items():
        m[0, 0, y, x] = v
    return m


def test_peaks_found_and_score_is_their_mean():
    m = _map({(1, 1): 3.0, (5, 5): 1.0})
    scores, peaks = peak_stimulation(m, window=3, median_filter=True)
    assert peaks[0, 0].nonzero().tolist() == [[1, 1], [5, 5]]
    assert scores.item() == pytest.approx(2.0)


def test_median_filter_drops_low_local_maxima():
    m = _bowl()
    m[0, 0, 0, 0] = -0.30  # above its neighbours (−0.41, −0.32) but far below the median
    without = local_peaks(m, 3, median_filter=False)[0, 0]
    with_filter = local_peaks(m, 3, median_filter=True)[0, 0]
    assert without.nonzero().tolist() == [[0, 0], [5, 5]]
    assert with_filter.nonzero().tolist() == [[5, 5]]


def test_window_size_matters():
    m = _map({(2, 2): 2.0, (2, 4): 1.5})
    assert local_peaks(m, 3, False)[0, 0, 2, 4]  # 2 apart: separate peaks with r=3
    assert not local_peaks(m, 5, False)[0, 0, 2, 4]  # inside the 5×5 window of the stronger
    with pytest.raises(ValueError, match="odd"):
        local_peaks(m, 4)


@pytest.mark.parametrize("gradient, per_peak", [("mean", 0.5), ("prm", 1.0)])
def test_gradient_flows_only_through_peaks(gradient, per_peak):
    m = _map({(1, 1): 3.0, (5, 5): 1.0})
    m.requires_grad_(True)
    scores, _ = peak_stimulation(m, gradient=gradient)
    assert scores.item() == pytest.approx(2.0)  # the value is the mean either way
    scores.sum().backward()
    g = m.grad[0, 0]
    # the mean's gradient gives each of the N = 2 peaks 1/N; PRM's backward gives each 1
    assert g[1, 1] == pytest.approx(per_peak) and g[5, 5] == pytest.approx(per_peak)
    g[1, 1] = g[5, 5] = 0
    assert torch.count_nonzero(g) == 0
    with pytest.raises(ValueError, match="gradient"):
        peak_stimulation(m, gradient="sum")


def test_one_peak_per_window_on_ties():
    m = torch.full((1, 1, 5, 6), -1.0)
    m[0, 0, 2, 2:4] = 2.0  # a plateau of two equal cells: PRM keeps the first only
    m[0, 0, 0, 5] = 1.0
    # the flat background yields one peak too, at its first cell (as PRM's does)
    assert local_peaks(m, 3, False)[0, 0].nonzero().tolist() == [[0, 0], [0, 5], [2, 2]]


def test_constant_map_still_has_a_peak():
    m = torch.zeros(2, 3, 4, 4)
    scores, peaks = peak_stimulation(m)
    # every cell ties with its neighbours: only the first of each window's maximum counts
    assert peaks[..., 0, 0].all() and peaks.sum() == 2 * 3
    assert torch.all(scores == 0)
    assert local_peaks(torch.zeros(1, 2, 0, 0)).shape == (1, 2, 0, 0)


def test_loss_matches_torch_and_negatives_push_scores_down():
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.3, 0.3, 0.3]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])  # second image is a negative
    loss = multilabel_loss(scores, labels)
    assert loss.item() == pytest.approx(F.multilabel_soft_margin_loss(scores, labels).item())
    loss.backward()
    assert torch.all(scores.grad[1] > 0)  # gradient descent lowers every score of a negative


def test_class_balance_weights_count_known_labels_only():
    labels = torch.tensor([[1.0, 0.0, -1.0, 0.0],
                           [0.0, 0.0, 1.0, 0.0],
                           [0.0, 1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0]])  # the last image is a negative
    w = class_balance_weights(labels, 1.0)
    # class 0: 1 positive, 3 negatives; class 2: 1 positive, 2 negatives (one unknown);
    # class 3 has no positive: nothing to balance
    assert w.tolist() == pytest.approx([3.0, 3.0, 2.0, 1.0])
    assert class_balance_weights(labels, 0.5).tolist() == pytest.approx(
        [3 ** 0.5, 3 ** 0.5, 2 ** 0.5, 1.0])
    assert class_balance_weights(labels, 0.0) is None
    assert class_balance_weights(torch.zeros(0, 3), 1.0).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="1.5"):
        class_balance_weights(labels, 1.5)


def test_weighted_loss_scales_the_positive_terms():
    scores = torch.tensor([[2.0, -1.0, 0.5], [0.3, -0.2, 0.7]])
    labels = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
    w = torch.tensor([4.0, 2.0, 0.5])
    p = torch.sigmoid(scores)
    per = -(w * labels.clamp(min=0) * torch.log(p) + (1 - labels.clamp(min=0)) * torch.log(1 - p))
    expected = ((per * (labels >= 0)).sum(1) / 3).mean()
    assert multilabel_loss(scores, labels, w).item() == pytest.approx(expected.item(), rel=1e-6)
    full = labels.clamp(min=0)
    assert multilabel_loss(scores, full, torch.ones(3)).item() == pytest.approx(
        F.multilabel_soft_margin_loss(scores, full).item(), rel=1e-6)
    # a heavier positive term pulls its score up harder
    s1 = scores.clone().requires_grad_(True)
    multilabel_loss(s1, full, torch.tensor([1.0, 1.0, 1.0])).backward()
    s2 = scores.clone().requires_grad_(True)
    multilabel_loss(s2, full, torch.tensor([1.0, 1.0, 3.0])).backward()
    assert s2.grad[1, 2] < s1.grad[1, 2] < 0 and s2.grad[0, 0] == s1.grad[0, 0]


def test_extract_peaks_coordinates_and_classes():
    cam = torch.full((3, 4, 4), -1.0)
    cam[0, 1, 2] = 2.0
    cam[0, 3, 0] = 0.5
    cam[2, 0, 0] = 1.0
    # a 4×4 CAM of a 32×32 input (stride 8), the image 40×80
    geo = make_geometry("uniform", (32, 32), (4, 4), stride=8)
    peaks = extract_peaks(cam, [0], (40, 80), geo, median_filter=False, min_score=0.0)
    # cell (1, 2): input centre (11.5, 19.5) → image ((12)·40/32 − 0.5, (20)·80/32 − 0.5)
    assert peaks[0] == Peak(category=0, y=round(14.5), x=round(49.5), score=2.0, cell=(1, 2))
    assert [p.category for p in peaks] == [0, 0]
    rel = extract_peaks(cam, [0], (40, 80), geo, median_filter=False, relative=0.5)
    assert len(rel) == 1
    assert extract_peaks(cam, [], (40, 80), geo) == []
    assert {p.category for p in extract_peaks(cam, None, (40, 80), geo, median_filter=False,
                                              min_score=0.9)} == {0, 2}
    # PRM's peak_threshold is strict: a peak equal to it is dropped
    assert len(extract_peaks(cam, [2], (40, 80), geo, median_filter=False, min_score=1.0)) == 0
    with pytest.raises(ValueError, match="geometry"):
        extract_peaks(cam, [0], (40, 80), make_geometry("uniform", (32, 32), (8, 8), 4))


def test_a_labelled_class_without_a_peak_gets_its_strongest_cell():
    geo = make_geometry("uniform", (32, 32), (4, 4), stride=8)
    cam = torch.full((2, 4, 4), -1.0)
    cam[0, 1, 1] = 3.0
    cam[1, 1, 1] = 2.0  # class 1's strongest cell, taken by class 0 where exclusive
    cam[1, 3, 3] = 0.5  # a local maximum of class 1 below min_score
    kw = dict(median_filter=False, min_score=1.0, exclusive=True)
    assert [p.category for p in extract_peaks(cam, [0, 1], (32, 32), geo, **kw)] == [0]
    forced = extract_peaks(cam, [0, 1], (32, 32), geo, min_per_class=1, **kw)
    assert [(p.category, p.cell, p.score) for p in forced] == [(0, (1, 1), 3.0),
                                                               (1, (1, 1), 2.0)]
    # a class with peaks of its own gets nothing more
    assert extract_peaks(cam, [0], (32, 32), geo, min_per_class=1, **kw) == \
        extract_peaks(cam, [0], (32, 32), geo, **kw)
    with pytest.raises(ValueError, match="min_per_class"):
        extract_peaks(cam, [0], (32, 32), geo, min_per_class=2)


def test_peak_response_maps_localise_each_peak():
    from wiseseg.models.backbones import build_backbone
    from wiseseg.models.peak_response import peak_response_maps
    from wiseseg.models.peakcam import PeakCAM

    torch.manual_seed(0)
    model = PeakCAM(build_backbone("resnet18", "none"), num_classes=2, feature="c3").eval()
    image = torch.rand(3, 64, 64)
    geo = model.geometry((64, 64), (8, 8))
    peaks = [Peak(0, 8, 8, 1.0), Peak(1, 56, 48, 1.0)]  # no cell: placed by the geometry
    maps = peak_response_maps(model, image, peaks, geo)
    assert maps.shape == (2, 64, 64) and (maps >= 0).all()
    for m, p in zip(maps, peaks):
        ys, xs = torch.nonzero(m > 0.2 * m.max(), as_tuple=True)
        assert abs(ys.float().mean() - p.y) < 16 and abs(xs.float().mean() - p.x) < 16
    assert peak_response_maps(model, image, []).shape == (0, 64, 64)
    with pytest.raises(ValueError, match="geometry"):
        peak_response_maps(model, image, peaks)
