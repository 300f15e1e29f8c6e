"""Gradient-free backbone passes in a reduced type (``amp``): where it applies and what it
returns (wiseseg.engine.precision, Backbone.forward)."""

from __future__ import annotations

import pytest
import torch

from wiseseg import api
from wiseseg.classifier.model_io import build_peakcam
from wiseseg.engine import precision
from wiseseg.models.backbones import build_backbone
from wiseseg.segmenter.model_io import build_segmenter


def _cpuinfo(tmp_path, flags: str):
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nflags\t\t: fpu sse2 avx2 {flags}\n\n"
                 f"processor\t: 1\nflags\t\t: fpu sse2 avx2 {flags}\n")
    return str(p)


@pytest.mark.parametrize("flags, native", [
    ("avx512f avx512_bf16", True), ("amx_bf16 amx_tile", True),
    ("avx512f avx512bw avx512vl", False), ("", False)])
def test_native_bfloat16_only_from_its_cpu_flags(tmp_path, flags, native) -> None:
    assert precision.cpu_has_native_bfloat16(_cpuinfo(tmp_path, flags)) is native


def test_no_cpuinfo_means_float32(tmp_path) -> None:
    assert precision.cpu_has_native_bfloat16(str(tmp_path / "absent")) is False


@pytest.mark.parametrize("native", [True, False])
def test_reduced_types_follow_amp_and_the_cpu(monkeypatch, native) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: native)
    assert precision.gradient_free_dtypes(False) == {}
    dtypes = precision.gradient_free_dtypes(True)
    assert dtypes["cuda"] is torch.float16
    assert dtypes.get("cpu") is (torch.bfloat16 if native else None)


def _pair():
    torch.manual_seed(0)
    bb = build_backbone("efficientnet_lite0", "none", output_stride=16).eval()
    x = bb.normalize(torch.rand(2, 3, 64, 64))
    return bb, x


def test_gradient_free_pass_runs_reduced_and_returns_float32() -> None:
    bb, x = _pair()
    with torch.no_grad():
        full = bb(x, "c4")
        bb.gradient_free_dtypes = {"cpu": torch.bfloat16}
        low = bb(x, "c4")
    for k in full:
        assert low[k].dtype is torch.float32
        err = float((low[k] - full[k]).norm() / full[k].norm())
        assert 0 < err < 0.1, (k, err)  # bfloat16's rounding, not another computation


def test_passes_with_gradients_stay_float32() -> None:
    bb, x = _pair()
    with torch.no_grad():
        full = bb(x, "c4")
    bb.gradient_free_dtypes = {"cpu": torch.bfloat16}
    with torch.enable_grad():  # PRM's backward and a trained body's steps
        out = bb(x, "c4")
    for k in full:
        torch.testing.assert_close(out[k], full[k], rtol=1e-5, atol=1e-5)


def test_identity_names_the_reduced_type() -> None:
    bb, _ = _pair()
    before = bb.identity()
    bb.gradient_free_dtypes = {"cpu": torch.bfloat16}
    assert bb.identity() != before  # a float32 feature cache is not taken for a bfloat16 one
    assert bb.identity()["weights"] == before["weights"]


@pytest.mark.parametrize("amp", [True, False])
def test_builders_set_the_type_from_amp(monkeypatch, amp) -> None:
    monkeypatch.setattr(precision, "cpu_has_native_bfloat16", lambda: True)
    cfg = api.load_config("cpu", [f"classifier.amp={str(amp).lower()}",
                              f"segmenter.amp={str(amp).lower()}"])
    ccfg = {**cfg["classifier"], "backbone": "efficientnet_lite0", "input_size": 64,
            "pretrained": "none"}
    expected = {"cuda": torch.float16, "cpu": torch.bfloat16} if amp else {}
    assert build_peakcam(ccfg, 3, pretrained=False).backbone.gradient_free_dtypes == expected
    scfg = {**cfg["segmenter"], "backbone": "efficientnet_lite0", "pretrained": "none",
            "anchor_sizes": [16, 32, 64, 128, 256], "min_size": 64, "max_size": 64}
    model = build_segmenter(scfg, 3, pretrained=False)
    assert model.backbone.body.gradient_free_dtypes == expected
