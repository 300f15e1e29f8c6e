"""The sam: proposal source, on a tiny randomly initialised SAM (no real weights here)."""

from __future__ import annotations

import pickle
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from wiseseg import rle
from wiseseg.errors import ConfigError, DataError, WisesegError
from wiseseg.proposals import build_proposal_source, compute_proposals

torch = pytest.importorskip("torch")
segment_anything = pytest.importorskip("segment_anything")

from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from wiseseg.proposals.sam import (  # noqa: E402
    OFFICIAL,
    SamSource,
    build_sam,
    infer_architecture,
)

#: A few prompts and no filtering: an untrained model passes no quality threshold, and its
#: masks barely depend on the point, so box NMS at 1.0 keeps them apart.
FAST = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0}


def tiny_sam():
    """A SAM from the package's own modules, as its ``_build_sam`` puts them together, with a
    32-wide 2-block ViT on 64-px inputs (one windowed block, one global)."""
    torch.manual_seed(0)
    img, patch, dim = 64, 16, 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=32, img_size=img, mlp_ratio=4, num_heads=2, patch_size=patch,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=[1], window_size=2, out_chans=dim),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(4, 4),
                                     input_image_size=(img, img), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=8),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    with torch.no_grad():  # varied masks and predicted IoUs from random weights
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(0.7)
        for p in sam.mask_decoder.output_hypernetworks_mlps.parameters():
            p.mul_(4)
        sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(3)
    return sam.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(tiny_sam().state_dict(), path)
    return path


def scene(h: int = 48, w: int = 80) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 30, (h, w, 3), dtype=np.uint8)
    image[10:30, 20:50] += 180
    return image


def test_masks_scores_and_settings(checkpoint):
    src = build_proposal_source(f"sam:{checkpoint}", top_k=10, **FAST)
    assert src.model_type == "custom" and src.architecture.embed_dim == 32
    assert src.architecture.global_attn_indexes == (1,) and src.architecture.window_size == 2
    image = scene()
    props = src.propose(image)
    assert 1 < len(props) <= 10 and props.size == (48, 80)
    for m in props.masks:
        assert m["size"] == [48, 80] and rle.problem(m) is None
    assert props.decode().shape == (len(props), 48, 80) and props.decode().any(axis=(1, 2)).all()
    assert np.all((props.scores >= 0) & (props.scores <= 1))
    assert np.all(np.diff(props.scores) <= 0)

    # Objectness is predicted IoU × stability, clipped: the generator's own numbers, sorted.
    anns = [a for a in src._generator().generate(image) if a["area"] > 0]
    expected = sorted((np.clip(a["predicted_iou"] * a["stability_score"], 0, 1) for a in anns),
                      reverse=True)[:10]
    assert props.scores.tolist() == pytest.approx(expected, abs=1e-6)

    # The settings rebuild the same source; each generator setting enters the fingerprint.
    settings = src.settings()
    assert settings["checkpoint_sha256"] and settings["points_per_side"] == 4
    again = SamSource(**settings)
    assert again.settings() == settings and again.fingerprint() == src.fingerprint()
    other = build_proposal_source(f"sam:{checkpoint}", top_k=10, **{**FAST,
                                                                    "points_per_side": 5})
    assert other.fingerprint() != src.fingerprint()
    # Worker processes get the source without its model and load it themselves.
    clone = pickle.loads(pickle.dumps(src))
    assert clone._model is None and clone.propose(image).masks == props.masks


def test_store_caches_sam_proposals(checkpoint, tmp_path):
    from wiseseg.data import open_dataset

    records = open_dataset("shapes:train=2,val=2,size=48", progress=False).records("val")
    src = build_proposal_source(f"sam:{checkpoint}", top_k=5, **FAST)
    store = compute_proposals(records, src, tmp_path, workers=2, progress=False, top_k=5)
    assert store.manifest["counts"]["computed"] == 2 and store.manifest["source"] == "sam"
    assert store.manifest["timings"]["workers"] == 1  # one process holds the model
    first = store.get(records[0].id, size=(48, 48))
    assert 0 < len(first) <= 5
    again = compute_proposals(records, build_proposal_source(f"sam:{checkpoint}", top_k=5,
                                                             **FAST),
                              tmp_path, progress=False, top_k=5)
    assert again.manifest["counts"]["reused"] == 2
    assert again.get(records[0].id).masks == first.masks


def test_cli(checkpoint, tmp_path, run_cli):
    args = ("proposals", "--data", "shapes:train=2,val=2,size=48", "--split", "val", "--out",
            tmp_path / "p", "--method", f"sam:{checkpoint}", "-q", "--top-k", "5",
            *(f"--set={k}={v}" for k, v in FAST.items()))
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "proposals (sam): 2 images (2 computed" in out
    code, out, _ = run_cli(*args)
    assert code == 0 and "0 computed, 2 reused" in out
    code, _, err = run_cli(*args, "--set", "points_per_sid=3")
    assert code == 2 and err.count("\n") == 1 and "points_per_sid" in err
    code, _, err = run_cli(*args, "--score-map", "rank")
    assert code == 2 and "--score-map" in err


def test_official_architectures_are_recognised():
    """The three official builders' tensors (on the meta device: no memory, no weights) give
    back their architecture, and build_sam of it has exactly their tensors."""
    from segment_anything import sam_model_registry

    for name, arch in OFFICIAL.items():
        with torch.device("meta"):
            official = sam_model_registry[name]().state_dict()
            ours = build_sam(arch).state_dict()
        inferred = infer_architecture(official)
        assert inferred == arch and inferred.model_type == name
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in official.items()}


def test_bad_checkpoints(checkpoint, tmp_path):
    with pytest.raises(DataError, match="nowhere.pth: SAM checkpoint not found"):
        build_proposal_source(f"sam:{tmp_path / 'nowhere.pth'}")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(DataError, match="notes.pth: not a PyTorch checkpoint"):
        build_proposal_source(f"sam:{text}")
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(DataError, match="not a SAM checkpoint"):
        build_proposal_source(f"sam:{other}")
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": torch.load(checkpoint, weights_only=True)}, wrapped)
    assert build_proposal_source(f"sam:{wrapped}", **FAST).model_type == "custom"
    with pytest.raises(DataError, match="holds a custom SAM .*not vit_b"):
        build_proposal_source(f"sam:vit_b:{checkpoint}")
    assert build_proposal_source(f"sam:custom:{checkpoint}").model_type == "custom"
    with pytest.raises(ConfigError, match="unknown SAM model type 'vit_x'"):
        build_proposal_source(f"sam:vit_x:{checkpoint}")
    with pytest.raises(ConfigError, match="no setting"):
        build_proposal_source(f"sam:{checkpoint}", score_map="rank")
    with pytest.raises(ConfigError, match="pred_iou_thresh"):
        build_proposal_source(f"sam:{checkpoint}", pred_iou_thresh=1.5)
    with pytest.raises(ConfigError, match="whole number"):
        build_proposal_source(f"sam:{checkpoint}", points_per_side=2.5)
    with pytest.raises(DataError, match="SHA-256"):
        build_proposal_source(f"sam:{checkpoint}", checkpoint_sha256="0" * 64)


def test_missing_package(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # import fails
    with pytest.raises(WisesegError, match="needs the segment-anything package.*wiseseg\\[sam\\]"):
        build_proposal_source(f"sam:{checkpoint}")
