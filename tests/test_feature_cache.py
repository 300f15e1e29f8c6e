"""Training on cached features of a fixed backbone: the same losses as the full forward, the
cache file reused, stale or damaged files recomputed, the maps read back bit for bit."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from wiseseg.config import apply_overrides, load_preset
from wiseseg.data import open_dataset
from wiseseg.data.transforms import to_tensor
from wiseseg.engine.checkpoint import load_checkpoint
from wiseseg.engine.feature_cache import DiskItems, FeatureCache
from wiseseg.errors import WisesegError
from wiseseg.models.backbones import LEVELS, backbone_names, build_backbone
from wiseseg.models.maskrcnn import (
    MaskRCNNOnFeatures,
    body_features,
    body_is_fixed,
    cacheable,
    fixed_levels,
)
from wiseseg.segmenter.data import CachedSegmenterData, SegmenterData
from wiseseg.segmenter.model_io import build_segmenter
from wiseseg.segmenter.train import cache_name, feature_cache_for
from wiseseg.tensors import pad_stack

SPEC = "shapes:train=4,val=1,size=64,seed=3"


@pytest.fixture(scope="module")
def ds():
    return open_dataset(SPEC, progress=False)


def _cfg(*extra):
    return apply_overrides(load_preset("cpu"), ["segmenter.backbone=efficientnet_lite0",
                                                "segmenter.frozen_stages=4",
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
    path = tmp_path / "feats"
    cache = feature_cache_for(model, data, "cpu", path, progress=False)
    assert (tmp_path / "feats.features").is_file() and (tmp_path / "feats.index").is_file()
    assert cache.flips and len(cache) == len(recs)
    cached = CachedSegmenterData(data, cache)
    for i in range(len(recs)):
        for s in range(3):
            img, t_plain = data.load(i, np.random.default_rng([s, i]))
            f, size, t_cached = cached.load(i, np.random.default_rng([s, i]))
            assert size == (64, 64)
            assert torch.equal(t_plain["masks"], t_cached["masks"])
            flipped = not torch.equal(img, to_tensor(data.training_image(i)))
            want = cache.get(i, flipped)
            assert f.keys() == want.keys() and all(torch.equal(f[k], want[k]) for k in f)

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
    assert fixed_levels(model) == ("c2", "c3") and not cacheable(model)


@pytest.mark.parametrize("frozen, levels", [(0, ()), (1, ("c2",)), (2, ("c2", "c3")),
                                            (3, ("c2", "c3", "c4")), (4, LEVELS)])
@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_fixed_levels_follow_the_frozen_stages(ds, frozen, levels, backbone):
    model = build_segmenter(_cfg(f"segmenter.frozen_stages={frozen}",
                                 f"segmenter.backbone={backbone}", "segmenter.pretrained=none"),
                            len(ds.classes))
    assert fixed_levels(model) == levels
    assert cacheable(model) == (frozen >= 3)


@pytest.mark.parametrize("name", backbone_names())
def test_backbone_continues_a_pass_from_a_level(name):
    torch.manual_seed(0)
    bb = build_backbone(name, pretrained="none").eval()
    x = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        full = bb(x)
        for i, after in enumerate(LEVELS[:-1]):
            rest = bb(full[after], after=after)
            assert list(rest) == list(LEVELS[i + 1:])
            for k in rest:
                assert torch.allclose(rest[k], full[k], atol=1e-5), (after, k)
        assert list(bb(full["c3"], upto="c4", after="c3")) == ["c4"]
    with pytest.raises(ValueError, match="below"):
        bb(full["c4"], upto="c4", after="c4")


def test_cached_lower_levels_train_the_upper_stages_like_the_full_forward(ds):
    """frozen_stages 3: c2–c4 cached, c5 computed from c4 by the trained upper stages — the
    same losses and the same gradients of those stages as the forward on the images."""
    torch.manual_seed(0)
    model = build_segmenter(_cfg("segmenter.frozen_stages=3"), len(ds.classes))
    assert cacheable(model) and not body_is_fixed(model)
    recs = list(ds.records("train"))
    data = SegmenterData(recs, dict(ds.ground_truth("train")), 64, 64, hflip=True)
    samples = [data.load(i, np.random.default_rng([7, i])) for i in range(len(recs))]
    images, targets = data.collate(samples)
    model.train()
    model.transform.eval()  # see test_cached_forward_matches_full_forward
    upper = [p for m in model.backbone.body.level_modules("c5") for p in m.parameters()]
    assert upper and all(p.requires_grad for p in upper)

    def run(fn):
        model.zero_grad()
        torch.manual_seed(1)
        losses = fn()
        sum(losses.values()).backward()
        return losses, [p.grad.clone() for p in upper]

    full, g_full = run(lambda: model(images, targets))
    with torch.no_grad():
        feats = body_features(model, images, levels=fixed_levels(model))
    assert sorted(feats[0]) == ["c2", "c3", "c4"]
    cached, g_cached = run(lambda: MaskRCNNOnFeatures(model)(feats, [(64, 64)] * len(recs),
                                                             targets))
    assert list(cached) == list(full)
    for k in full:
        assert torch.allclose(full[k], cached[k], rtol=1e-4, atol=1e-5), k
    assert any(g.abs().sum() > 0 for g in g_full)
    for a, b in zip(g_full, g_cached):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


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


@pytest.mark.parametrize("name", backbone_names())
def test_folded_batchnorm_gives_the_same_maps_and_leaves_the_original(name):
    """fold_batchnorm: every (convolution, constant BatchNorm) pair of a registered backbone
    becomes one convolution; the maps agree to float rounding, the original is untouched,
    and a BatchNorm still learning its statistics (train mode) is never folded."""
    from wiseseg.models.backbones import build_backbone
    from wiseseg.models.freezing import FixedBatchNorm2d, fold_batchnorm, freeze_batchnorm

    torch.manual_seed(0)
    bb = freeze_batchnorm(build_backbone(name, pretrained="none")).eval()
    for m in bb.modules():  # non-trivial statistics and affine terms
        if isinstance(m, FixedBatchNorm2d):
            m.weight.uniform_(-1.5, 1.5)   # negative scales too
            m.bias.uniform_(-1, 1)
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    folded = fold_batchnorm(bb)
    n_bn = sum(isinstance(m, FixedBatchNorm2d) for m in bb.modules())
    assert n_bn > 0 and not any(isinstance(m, FixedBatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.Identity) for m in folded.modules()) >= n_bn
    assert not any(p.requires_grad for p in folded.parameters())
    x = torch.rand(2, 3, 96, 80)
    with torch.no_grad():
        want = bb(bb.normalize(x), upto="c4")
        got = folded(folded.normalize(x), upto="c4")
    for k in want:
        scale = float(want[k].abs().max())
        assert scale > 0 and torch.allclose(got[k], want[k], atol=1e-4 * scale), k
    assert all(torch.equal(v, bb.state_dict()[k]) for k, v in before.items())

    learning = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    assert isinstance(fold_batchnorm(learning)[1], torch.nn.BatchNorm2d)
    ev = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3),
                                torch.nn.BatchNorm2d(4, affine=False)).eval()
    with torch.no_grad():
        ev[1].running_mean.uniform_(-1, 1)
        plain[1].running_var.uniform_(0.5, 2)
        y = torch.randn(1, 3, 8, 8)
        assert torch.allclose(fold_batchnorm(ev)(y), ev(y), atol=1e-5)
        assert torch.allclose(fold_batchnorm(plain)(y), plain(y), atol=1e-5)


def _maps(indices, flip):
    """Deterministic maps of several shapes and a 1-d entry, different per sample and flip."""
    out = []
    for i in indices:
        g = torch.Generator().manual_seed(100 * i + int(flip))
        out.append({"a": torch.randn(3, 5, 7, generator=g), "b": torch.randn(2, 4, generator=g),
                    "size": torch.tensor([5.0, 7.0 + i])})
    return out


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cache_on_disk_reads_back_what_memory_holds(tmp_path, dtype):
    memory = FeatureCache.build(6, _maps, "fp", flips=True, batch_size=4, dtype=dtype,
                                progress=False)
    (tmp_path / "c.pt").write_bytes(b"the one-file format before")  # replaced, not read
    disk = FeatureCache.build(6, _maps, "fp", flips=True, batch_size=4, dtype=dtype,
                              path=tmp_path / "c", progress=False)
    assert not (tmp_path / "c.pt").exists()
    assert disk.nbytes() == memory.nbytes() == (tmp_path / "c.features").stat().st_size
    for i in range(6):
        for flip in (False, True):
            got, want = disk.get(i, flip), memory.get(i, flip)
            assert got.keys() == want.keys()
            for k in got:
                assert got[k].dtype == dtype and torch.equal(got[k], want[k]), (i, flip, k)
    got = disk.get(3, True)
    got["a"].zero_()  # a fresh tensor each read: the caller may change it
    assert torch.equal(disk.get(3, True)["a"], memory.get(3, True)["a"])
    # data-loader workers get a copy without the open file, and open their own
    items = pickle.loads(pickle.dumps(disk.items[True]))
    assert torch.equal(items[5]["b"], memory.get(5, True)["b"])


def test_damaged_or_stale_cache_files_are_recomputed(tmp_path):
    calls = []

    def counted(indices, flip):
        calls.append(len(indices))
        return _maps(indices, flip)

    def build(fingerprint="fp", n=4):
        return FeatureCache.build(n, counted, fingerprint, flips=False, path=tmp_path / "c",
                                  progress=False)

    first = build()
    assert sum(calls) == 4
    build()
    assert sum(calls) == 4  # opened, not recomputed
    data, index = tmp_path / "c.features", tmp_path / "c.index"
    data.write_bytes(data.read_bytes()[:-10])  # a cut data file
    again = build()
    assert sum(calls) == 8 and torch.equal(again.get(3)["a"], first.get(3)["a"])
    index.write_bytes(b"not a torch file")  # a damaged index
    build()
    assert sum(calls) == 12
    build("other")  # other features
    build("other", n=5)  # more samples
    assert sum(calls) == 12 + 4 + 5
    # a data file cut behind the index's back fails in one line naming it
    build("other", n=5)
    data.write_bytes(data.read_bytes()[:300])  # a sample takes 230 bytes
    items = DiskItems(data, load_checkpoint(index)["plain"])
    assert torch.equal(items[0]["size"], first.get(0)["size"])  # within what is left
    with pytest.raises(WisesegError, match=r"c\.features: the feature cache file ends before"):
        items[4]


def test_segmenter_caches_are_named_by_their_images(ds):
    recs = list(ds.records("train"))
    gt = dict(ds.ground_truth("train"))
    all_images = SegmenterData(recs, gt, 64, 64, hflip=True)
    # the same images and sizes: one name (WISE and the reference share the cache) ...
    assert cache_name(all_images) == cache_name(SegmenterData(recs, gt, 64, 64, hflip=False))
    assert cache_name(all_images).startswith("segmenter_features_")
    # ... other images or sizes: another file, so neither replaces the other's
    assert cache_name(all_images) != cache_name(SegmenterData(recs[:-1], gt, 64, 64))
    assert cache_name(all_images) != cache_name(SegmenterData(recs, gt, 64, 96))
