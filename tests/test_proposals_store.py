"""The proposal cache (reuse, invalidation, interruption), parallel runs, quality and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import wiseseg.io
from wiseseg import rle
from wiseseg.data import open_dataset
from wiseseg.data.dataset import ImageRecord
from wiseseg.errors import DataError, WisesegError
from wiseseg.proposals import (
    Proposals,
    ProposalSource,
    ProposalStore,
    compute_proposals,
    proposal_quality,
)
from wiseseg.proposals import store as store_mod
from wiseseg.proposals.builtin import BuiltinSource

SPEC = "shapes:train=6,val=4,size=64"


@pytest.fixture(scope="module")
def tiny():
    return open_dataset(SPEC, progress=False)


class GridSource(ProposalSource):
    """Cheap deterministic proposals: the image cut into cells×cells blocks."""

    name = "grid"

    def __init__(self, cells: int = 2, interrupt_on: int | None = None):
        self.cells = cells
        self.interrupt_on = interrupt_on
        self.calls: list[int] = []

    def settings(self) -> dict:
        return {"cells": self.cells}

    def propose(self, image: np.ndarray, record: ImageRecord) -> Proposals:
        if record.id == self.interrupt_on:
            raise KeyboardInterrupt
        self.calls.append(record.id)
        h, w = image.shape[:2]
        masks, scores = [], []
        for i in range(self.cells):
            for j in range(self.cells):
                m = np.zeros((h, w), np.uint8)
                m[i * h // self.cells:(i + 1) * h // self.cells,
                  j * w // self.cells:(j + 1) * w // self.cells] = 1
                masks.append(rle.encode(m))
                scores.append(1.0 / (1 + i * self.cells + j))
        return Proposals.from_masks(masks, scores, (h, w))


def item_files(out: Path) -> list[Path]:
    return sorted(p for d in out.glob("items-*") for p in d.iterdir())


def test_cache_reuse_and_invalidation(tiny, tmp_path):
    records = tiny.records("val")
    src = GridSource()
    store = compute_proposals(records, src, tmp_path, progress=False)
    assert sorted(src.calls) == sorted(r.id for r in records)
    assert store.manifest["counts"] == {"images": 4, "computed": 4, "reused": 0,
                                        "proposals": 16, "per_image": 4.0}
    first = {r.id: store.get(r.id) for r in records}

    again = GridSource()
    store = compute_proposals(records, again, tmp_path, progress=False)
    assert again.calls == [] and store.manifest["counts"]["reused"] == 4
    reopened = ProposalStore.open(tmp_path)
    assert reopened.complete and reopened.fingerprint == again.fingerprint()
    for r in records:
        assert reopened[r.id].masks == first[r.id].masks
        assert reopened.seconds(r.id) >= 0

    changed = GridSource(cells=3)
    store = compute_proposals(records, changed, tmp_path, progress=False)
    assert len(changed.calls) == 4 and len(store.get(records[0].id)) == 9
    assert len(list(tmp_path.glob("items-*"))) == 1  # the old settings' folder is gone

    truncated = GridSource(cells=3)
    store = compute_proposals(records, truncated, tmp_path, progress=False, top_k=2)
    assert len(truncated.calls) == 4 and len(store.get(records[0].id)) == 2


def test_interrupted_run_resumes(tiny, tmp_path):
    records = tiny.records("val")
    with pytest.raises(KeyboardInterrupt):
        compute_proposals(records, GridSource(interrupt_on=records[2].id), tmp_path,
                          progress=False)
    files = item_files(tmp_path)
    assert [p.name for p in files] == sorted(f"{r.id}.json" for r in records[:2])
    assert not ProposalStore.open(tmp_path).complete
    src = GridSource()
    store = compute_proposals(records, src, tmp_path, progress=False)
    assert sorted(src.calls) == sorted(r.id for r in records[2:])
    assert store.complete and store.manifest["counts"]["reused"] == 2


def test_killed_mid_write_leaves_no_file(tiny, tmp_path, monkeypatch):
    records = tiny.records("val")[:1]

    def killed(fd):  # the bytes are in the temp file, the rename has not happened
        raise KeyboardInterrupt

    monkeypatch.setattr(wiseseg.io.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        compute_proposals(records, GridSource(), tmp_path, progress=False)
    assert not (tmp_path / "manifest.json").exists()  # the very first write was cut too
    assert item_files(tmp_path) == []
    monkeypatch.undo()

    # A temp file left by a SIGKILLed run is not taken for a result and is cleaned up.
    items = tmp_path / f"items-{store_mod.store_key(GridSource(), None)}"
    stale = items / f".{records[0].id}.json.abc.tmp"
    stale.write_text('{"half')
    src = GridSource()
    compute_proposals(records, src, tmp_path, progress=False)
    assert src.calls == [records[0].id] and not stale.exists()


def test_store_errors(tiny, tmp_path):
    with pytest.raises(WisesegError, match="no proposals here"):
        ProposalStore.open(tmp_path)
    store = compute_proposals(tiny.records("val")[:1], GridSource(), tmp_path, progress=False)
    with pytest.raises(WisesegError, match="no proposals for image id 999"):
        store.get(999)
    path = store.path(tiny.records("val")[0].id)
    path.write_text("{not json")
    with pytest.raises(DataError, match="corrupt proposal file"):
        store.get(tiny.records("val")[0].id)


def test_bad_image_is_reported_with_its_path(tiny, tmp_path):
    good = tiny.records("val")[0]
    bad = ImageRecord(id=77, name="gone", path=tmp_path / "gone.jpg", height=64, width=64,
                      labels=frozenset())
    with pytest.raises(DataError, match="gone.jpg"):
        compute_proposals([good, bad], GridSource(), tmp_path / "out", progress=False)
    assert good.id in ProposalStore.open(tmp_path / "out")  # finished work is kept
    # In worker processes the error travels back as data and is rebuilt as a DataError.
    result = store_mod._compute_one(GridSource(), bad, tmp_path / "x.json", None)
    with pytest.raises(DataError, match="gone.jpg: file not found"):
        store_mod._raise_from(result)


def test_parallel_workers_match_serial(tiny, tmp_path):
    records = tiny.records("val")
    serial = compute_proposals(records, BuiltinSource(), tmp_path / "a", progress=False)
    parallel = compute_proposals(records, BuiltinSource(), tmp_path / "b", workers=2,
                                 progress=False)
    assert parallel.manifest["counts"]["computed"] == 4
    for r in records:
        assert parallel[r.id].masks == serial[r.id].masks
        assert np.array_equal(parallel[r.id].scores, serial[r.id].scores)


def write_gt_proposals(ds, split: str, out: Path) -> None:
    """Ground-truth masks as JSON proposals (score 0.9), plus a whole-image decoy (0.1)."""
    out.mkdir(parents=True, exist_ok=True)
    gts = ds.ground_truth(split)
    for r in ds.records(split):
        items = [{"segmentation": i.segmentation, "score": 0.9} for i in gts[r.id].instances]
        items.append({"segmentation": rle.encode(np.ones((r.height, r.width), np.uint8)),
                      "score": 0.1})
        (out / f"{r.name}.json").write_text(json.dumps(items))


def test_quality_of_perfect_proposals(tiny, tmp_path):
    from wiseseg.proposals import build_proposal_source

    write_gt_proposals(tiny, "val", tmp_path / "json")
    source = build_proposal_source(f"json:{tmp_path / 'json'}")
    store = compute_proposals(tiny.records("val"), source, tmp_path / "out", progress=False)
    q = proposal_quality(store, tiny, "val")
    n_inst = sum(len(g.instances) for g in tiny.ground_truth("val").values())
    assert q["instances"] == n_inst and q["images"] == 4
    assert q["abo"] == pytest.approx(1.0)
    assert q["recall"]["0.5"] == {"10": 1.0, "100": 1.0, "all": 1.0}
    assert q["objectness_auc"] == pytest.approx(1.0)
    assert q["proposals_per_image"] == pytest.approx(n_inst / 4 + 1)


def test_cli(tiny, tmp_path, run_cli):
    out = tmp_path / "props"
    code, stdout, _ = run_cli("proposals", "--data", SPEC, "--split", "val", "--out", out,
                              "--eval", "-q", "--workers", "1")
    assert code == 0, stdout
    assert "4 computed" in stdout and "recall@0.5" in stdout and "ABO" in stdout
    q = json.loads((out / "quality_val.json").read_text())
    assert q["source"] == "builtin" and q["images"] == 4 and 0 <= q["abo"] <= 1

    code, stdout, _ = run_cli("proposals", "--data", SPEC, "--split", "val", "--out", out,
                              "-q", "--workers", "1")
    assert code == 0 and "0 computed, 4 reused" in stdout

    write_gt_proposals(tiny, "val", tmp_path / "json")
    code, stdout, _ = run_cli("proposals", "--data", SPEC, "--split", "val", "--out",
                              tmp_path / "p2", "--method", f"json:{tmp_path / 'json'}",
                              "--eval", "-q", "--workers", "1")
    assert code == 0 and "ABO 100.0" in stdout and "top-all: 100.0" in stdout

    code, _, err = run_cli("proposals", "--data", SPEC, "--out", out, "--method", "mcg")
    assert code == 2 and err.count("\n") == 1 and "unknown proposal method" in err
    code, _, err = run_cli("proposals", "--data", SPEC, "--out", out, "--method",
                           f"json:{tmp_path / 'nowhere'}")
    assert code == 2 and "nowhere" in err
