"""The stage commands chained by hand on the tiny run's outputs (what a user runs without
`wiseseg run`): pseudo-masks → train-segmenter → predict (--refine, --vis, --images) →
evaluate, prm-baseline, pseudo-quality, proposals --eval."""

from __future__ import annotations

import json

from PIL import Image

from .conftest import TINY_SPEC

SEG = ["segmenter.steps=1", "segmenter.batch_size=2", "segmenter.min_size=48",
       "segmenter.max_size=48"]


def test_stage_commands_chain(tiny_run, tmp_path, run_cli):
    cls = tiny_run / "classifier" / "model.pt"
    props = tiny_run / "proposals"
    pseudo = tmp_path / "pseudo.json"
    code, out, err = run_cli("pseudo-masks", "--classifier", cls, "--proposals", props,
                             "--data", TINY_SPEC, "--out", pseudo, "--mode", "argmax", "-q")
    assert code == 0, err
    assert "pseudo instances" in out and "no candidate proposal" in out
    assert json.loads(pseudo.read_text())["wiseseg"]["settings"]["mode"] == "argmax"

    seg = tmp_path / "seg"
    code, out, err = run_cli("train-segmenter", "--data", TINY_SPEC, "--pseudo", pseudo,
                             "--out", seg, "-q", *SEG)
    assert code == 0, err
    assert (seg / "model.pt").exists() and (seg / "config.yaml").exists()

    preds = tmp_path / "preds.json"
    code, out, err = run_cli("predict", "--checkpoint", seg / "model.pt", "--data", TINY_SPEC,
                             "--split", "val", "--out", preds, "--refine", "--proposals",
                             props, "--vis", tmp_path / "vis", "--vis-min-score", "0", "-q")
    assert code == 0, err
    assert "refined" in out and len(list((tmp_path / "vis").glob("*.png"))) == 4
    assert all("refined" in p for p in json.loads(preds.read_text()))

    code, out, err = run_cli("evaluate", "--data", TINY_SPEC, "--split", "val", "--pred",
                             preds, "--out", tmp_path / "m.json", "-q")
    assert code == 0, err
    assert "mAP50" in json.loads((tmp_path / "m.json").read_text())

    code, out, err = run_cli("prm-baseline", "--classifier", cls, "--proposals", props,
                             "--data", TINY_SPEC, "--split", "val", "--out",
                             tmp_path / "prm.json", "-q")
    assert code == 0, err
    code, out, err = run_cli("pseudo-quality", "--data", TINY_SPEC, "--pseudo", pseudo,
                             "--checkpoint", seg / "model.pt", "--out", tmp_path / "q.json",
                             "-q")
    assert code == 0, err
    q = json.loads((tmp_path / "q.json").read_text())
    assert {"pseudo_mAP50", "pseudo_count_error", "model_mAP50"} <= set(q)


def test_predict_on_image_files_of_any_mode(tiny_run, tmp_path, run_cli):
    files = []
    for mode, size in (("L", (40, 30)), ("RGBA", (64, 50)), ("P", (33, 47))):
        p = tmp_path / f"x_{mode}.png"
        Image.new(mode, size).save(p)
        files.append(p)
    out = tmp_path / "p.json"
    code, _, err = run_cli("predict", "--checkpoint", tiny_run / "reference" / "model.pt",
                           "--images", *files, "--out", out, "-q")
    assert code == 0, err
    for p in json.loads(out.read_text()):
        assert p["image_id"] in (1, 2, 3)
    code, _, err = run_cli("predict", "--checkpoint", tiny_run / "reference" / "model.pt",
                           "--images", tmp_path / "missing.jpg", "--out", out, "-q")
    assert code == 2 and "missing.jpg: file not found" in err


def test_make_shapes_cli(tmp_path, run_cli):
    code, out, err = run_cli("make-shapes", tmp_path / "s", "--train", "3", "--val", "2",
                             "--size", "40", "--seed", "5", "-q")
    assert code == 0, err
    assert len(list((tmp_path / "s" / "JPEGImages").glob("*.jpg"))) == 5
    code, _, err = run_cli("make-shapes", tmp_path / "s", "-q")
    assert code == 2 and "not empty" in err
