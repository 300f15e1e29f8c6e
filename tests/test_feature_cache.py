"""Training on cached features of a fixed backbone: the same losses as the full forward, the
cache file reused, stale files recomputed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wiseseg.config import apply_overrides, load_preset
from wiseseg.data import open_dataset
from wiseseg.data.transforms import to_tensor
from wiseseg.engine.feature_cache import FeatureCache
from wiseseg.models.maskrcnn import MaskRCNNOnFeatures, body_features, body_is_fixed
from wiseseg.segmenter.data import CachedSegmenterData, SegmenterData
from wiseseg.segmenter.model_io import build_segmenter
from wiseseg.segmenter.train import feature_cache_for
from wiseseg.tensors import pad_stack

SPEC = "shapes:train=4,val=1,size=64,seed=3"


@pytest.fixture(scope="module")
def ds():
    return open_dataset(SPEC, progress=False)


def _cfg(*extra):
    return apply_overrides(load_preset("cpu"), ["segmenter.backbone=efficientnet_lite0",
                                                "segmenter.min_size=64", "segmenter.max_size=64",
                                                "segmenter.anchor_sizes=[16,32,64,128,256]",
                                                *extra])["segmenter"]


def test_pad_stack_pads_bottom_right():
    a, b = torch.ones(2, 3, 4), torch.full((2, 2, 5), 2.0)
    out = pad_stack([a, b])
    assert out.shape == (2, 2, 3, 5)
    assert out[0, :, :, 4].abs().sum() == 0 and out[1, :, 2].abs().sum() == 0
    assert torch.equal(out[1, :, :2, :], b)


def test_cached_forward_matches_full_forward(ds):
    torch.manual_seed(0)
    model = build_segmenter(_cfg(), len(ds.classes))
    assert body_is_fixed(model)
    recs = list(ds.records("train"))
    data = SegmenterData(recs, dict(ds.ground_truth("train")), 64, 64, hflip=True)
    samples = [data.load(i, np.random.default_rng([7, i])) for i in range(len(recs))]
    images, targets = data.collate(samples)
    model.train()
    # in training mode the transform draws its min size from the global RNG, even when there
    # is only one to choose from; in eval mode it does not, and it is otherwise the same
    model.transform.eval()
    torch.manual_seed(1)
    full = model(images, targets)
    feats = body_features(model, images)
    assert feats[0]["c2"].shape[-2:] == (16, 16) and feats[0]["c5"].shape[-2:] == (2, 2)
    torch.manual_seed(1)
    cached = MaskRCNNOnFeatures(model)(feats, [(64, 64)] * len(recs), targets)
    assert list(cached) == list(full)
    for k in full:
        assert torch.allclose(full[k], cached[k], rtol=1e-4, atol=1e-5), k


def test_cached_data_draws_like_plain_data(ds, tmp_path):
    model = build_segmenter(_cfg(), len(ds.classes))
    recs = list(ds.records("train"))
    data = SegmenterData(recs, dict(ds.ground_truth("train")), 64, 64, hflip=True)
    path = tmp_path / "feats.pt"
    cache = feature_cache_for(model, data, "cpu", path, progress=False)
    assert path.is_file() and cache.flips and len(cache) == len(recs)
    cached = CachedSegmenterData(data, cache)
    for i in range(len(recs)):
        for s in range(3):
            img, t_plain = data.load(i, np.random.default_rng([s, i]))
            f, size, t_cached = cached.load(i, np.random.default_rng([s, i]))
            assert size == (64, 64)
            assert torch.equal(t_plain["masks"], t_cached["masks"])
            flipped = not torch.equal(img, to_tensor(data.training_image(i)))
            assert f is cache.get(i, flipped)

    # a second build with the same fingerprint loads the file instead of computing
    def boom(indices, flip):
        raise AssertionError("recomputed")

    again = FeatureCache.build(len(recs), boom, cache.fingerprint, path=path, progress=False)
    assert torch.equal(again.get(2, True)["c3"], cache.get(2, True)["c3"])
    # another fingerprint (other images, weights or sizes) is recomputed and replaced
    calls = []

    def small(indices, flip):
        calls.append(flip)
        return [{"c2": torch.zeros(1, 2, 2)} for _ in indices]

    other = FeatureCache.build(len(recs), small, "other", path=path, progress=False)
    assert calls and other.get(0)["c2"].dtype == torch.float16


def test_trainable_body_is_not_cached(ds):
    model = build_segmenter(_cfg("segmenter.frozen_stages=2"), len(ds.classes))
    assert not body_is_fixed(model)


def test_frozen_batchnorm_in_place_matches_the_out_of_place_one():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from wiseseg.models.freezing import FixedBatchNorm2d, freeze_batchnorm

    bn = torch.nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    net = freeze_batchnorm(torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), bn))
    assert type(net[1]) is FixedBatchNorm2d
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        conv = net[0](x)
        expected = bn(conv.clone())
        ref = FrozenBatchNorm2d(5)
        ref.load_state_dict(net[1].state_dict())
        assert torch.allclose(ref(conv.clone()), expected, atol=1e-6)
        out = net[1](conv)
    assert out.data_ptr() == conv.data_ptr()          # without autograd: in place
    assert torch.allclose(out, expected, atol=1e-6)
    y = net(x.requires_grad_())                         # with autograd: out of place, same values
    assert torch.allclose(y, expected, atol=1e-6)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
