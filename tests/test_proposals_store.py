"""The proposal cache (reuse, invalidation, interruption), parallel runs, quality and the CLI."""

from __future__ import annotations

import json
import re
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
    with pytest.raises(WisesegError, match="other settings .* use a new --out, or --overwrite"):
        compute_proposals(records, changed, tmp_path, progress=False)  # never a silent swap
    store = compute_proposals(records, changed, tmp_path, progress=False, overwrite=True)
    assert len(changed.calls) == 4 and len(store.get(records[0].id)) == 9
    assert len(list(tmp_path.glob("items-*"))) == 1  # the old settings' folder is gone

    truncated = GridSource(cells=3)
    store = compute_proposals(records, truncated, tmp_path, progress=False, top_k=2,
                              overwrite=True)
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
    code, _, err = run_cli("proposals", "--data", SPEC, "--out", out, "--set", "nms_iou")
    assert code == 2 and err.count("\n") == 1 and "expected KEY=VALUE" in err
    code, _, err = run_cli("proposals", "--data", SPEC, "--out", out, "--set", "bogus=1")
    assert code == 2 and err.count("\n") == 1 and "no setting(s) bogus" in err
    code, _, err = run_cli("proposals", "--data", SPEC, "--out", out, "--method",
                           f"json:{tmp_path / 'nowhere'}")
    assert code == 2 and "nowhere" in err
    # The built-in generator's qualities: bad ones are one-line errors, good ones run.
    for method, sets, needle in [("builtin:best", [], "unknown quality"),
                                 ("builtin:fast", ["--set", "quality=accurate"], "disagree"),
                                 ("builtin", ["--set", "deep_layer=c9"], "deep_layer"),
                                 ("builtin", ["--set", "strategies=[[lab, XQ]]"], "strategy")]:
        code, _, err = run_cli("proposals", "--data", SPEC, "--out", out, "--method", method,
                               *sets)
        assert code == 2 and err.count("\n") == 1 and needle in err, err
    code, stdout, _ = run_cli("proposals", "--data", SPEC, "--split", "val", "--out",
                              tmp_path / "acc", "--method", "builtin:accurate", "--top-k", "50",
                              "-q", "--workers", "1")
    assert code == 0 and "4 computed" in stdout
    manifest = json.loads((tmp_path / "acc" / "manifest.json").read_text())
    assert manifest["settings"]["quality"] == "accurate" and manifest["top_k"] == 50


# --------------------------------------------------------------------------- shards


def test_parse_shard_and_partition(tiny):
    from wiseseg.errors import ConfigError
    from wiseseg.proposals import parse_shard, shard_records

    assert parse_shard("0/1") == (0, 1) and parse_shard(" 9/10 ") == (9, 10)
    for bad, needle in [("3/2", "0..1"), ("2/2", "0..1"), ("-1/2", "0..1"),
                        ("0/0", "N must be ≥ 1"), ("a/b", "I/N"), ("1", "I/N"), ("", "I/N"),
                        ("1.5/3", "I/N")]:
        with pytest.raises(ConfigError, match=needle):
            parse_shard(bad)
    records = tiny.records("train")  # 6 images
    parts = [shard_records(records, i, 4) for i in range(4)]
    assert [[r.id for r in p] for p in parts] == [[records[k].id for k in range(i, 6, 4)]
                                                   for i in range(4)]
    assert sorted(r.id for p in parts for r in p) == sorted(r.id for r in records)


def _without_seconds(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("seconds")
    return data


def test_shards_merge_into_the_unsharded_store(tiny, tmp_path, run_cli):
    base = ("proposals", "--data", SPEC, "--split", "train", "-q", "--workers", "1")
    code, _, err = run_cli(*base, "--out", tmp_path / "whole")
    assert code == 0, err
    out = tmp_path / "sharded"
    for i in range(4):  # 6 images in 4 shards: 2, 2, 1, 1
        code, stdout, err = run_cli(*base, "--out", out, "--shard", f"{i}/4")
        assert code == 0, err
        assert f"shard {i}/4 of 6" in stdout
        assert (out / f"shard-{i}-of-4" / "manifest.json").is_file()
    code, stdout, _ = run_cli(*base, "--out", out, "--shard", "1/4")  # resumable as before
    assert code == 0 and "0 computed, 2 reused" in stdout
    code, stdout, err = run_cli("proposals-merge", "--out", out)
    assert code == 0, err
    assert "merged 4 shards, 6 images" in stdout

    whole, merged = ProposalStore.open(tmp_path / "whole"), ProposalStore.open(out)
    assert merged.complete and merged.items_dir.name == whole.items_dir.name
    for key in ("source", "settings", "fingerprint", "top_k", "key", "format"):
        assert merged.manifest[key] == whole.manifest[key], key
    for key in ("images", "proposals", "per_image"):
        assert merged.manifest["counts"][key] == whole.manifest["counts"][key], key
    counts = merged.manifest["counts"]  # of the shards' last runs: shard 1 was rerun
    assert (counts["computed"], counts["reused"]) == (4, 2)
    assert list(merged.manifest["images"]) == list(whole.manifest["images"])  # split order
    assert merged.image_ids() == whole.image_ids() == sorted(r.id for r in tiny.records("train"))
    for i in whole.image_ids():
        assert _without_seconds(merged.path(i)) == _without_seconds(whole.path(i))
        w = {k: v for k, v in whole.manifest["images"][str(i)].items() if k != "seconds"}
        m = {k: v for k, v in merged.manifest["images"][str(i)].items() if k != "seconds"}
        assert m == w

    # Merging again is harmless; an unsharded run on the merged store reuses every file.
    code, _, _ = run_cli("proposals-merge", "--out", out, *sorted(out.glob("shard-*")))
    assert code == 0 and ProposalStore.open(out).image_ids() == whole.image_ids()
    code, stdout, _ = run_cli(*base, "--out", out)
    assert code == 0 and "0 computed, 6 reused" in stdout


def _shards(tiny, root: Path, n: int = 2, source=None) -> list[Path]:
    dirs = []
    for i in range(n):
        d = root / f"shard-{i}-of-{n}"
        compute_proposals(tiny.records("val"), source or GridSource(), d, progress=False,
                          shard=(i, n))
        dirs.append(d)
    return dirs


def test_merge_refuses_incomplete_or_foreign_shards(tiny, tmp_path):
    from wiseseg.proposals import merge_shards

    a, b = _shards(tiny, tmp_path / "s")
    out = tmp_path / "out"
    with pytest.raises(WisesegError, match="shard\\(s\\) 1/2 missing"):
        merge_shards([a], out)
    with pytest.raises(WisesegError, match="given twice"):
        merge_shards([a, a], out)
    with pytest.raises(WisesegError, match="no shard stores"):
        merge_shards([], out)
    other = _shards(tiny, tmp_path / "o", source=GridSource(cells=3))
    with pytest.raises(WisesegError, match="other settings"):
        merge_shards([a, other[1]], out)
    three = _shards(tiny, tmp_path / "t", n=3)
    with pytest.raises(WisesegError, match="another split or shard count"):
        merge_shards([a, three[1]], out)
    train = tmp_path / "train" / "shard-1-of-2"
    compute_proposals(tiny.records("train"), GridSource(), train, progress=False, shard=(1, 2))
    with pytest.raises(WisesegError, match="another split"):
        merge_shards([a, train], out)
    plain = compute_proposals(tiny.records("val"), GridSource(), tmp_path / "plain",
                              progress=False)
    with pytest.raises(DataError, match="not a shard store"):
        merge_shards([a, plain.root], out)
    manifest = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(WisesegError, match="shard 1/2 is not finished"):
        merge_shards([a, b], out)
    (b / "manifest.json").write_text(json.dumps(manifest))
    assert merge_shards([b, a], out).image_ids() == sorted(r.id for r in tiny.records("val"))
    many = _shards(tiny, tmp_path / "many", n=6)  # more shards than images: two are empty
    merged = merge_shards(many, tmp_path / "many")
    assert merged.manifest["counts"]["images"] == 4 and len(merged.image_ids()) == 4


def test_merge_copies_where_hard_links_fail(tiny, tmp_path, monkeypatch):
    from wiseseg.proposals import merge_shards

    shards = _shards(tiny, tmp_path / "out")

    def no_links(src, dst):
        raise OSError("hard links not supported")

    monkeypatch.setattr(store_mod.os, "link", no_links)
    merged = merge_shards(shards, tmp_path / "out")
    for i in merged.image_ids():
        assert merged.path(i).stat().st_nlink == 1
        assert merged.path(i).read_text() == next(
            ProposalStore.open(d).path(i).read_text() for d in shards
            if i in ProposalStore.open(d))
    assert not list(merged.items_dir.glob(".*"))  # no temporary files left


def test_merge_checks_every_file(tiny, tmp_path, run_cli):
    a, b = _shards(tiny, tmp_path / "out")
    store_b = ProposalStore.open(b)
    # A proposal file for an image that is not one of the shard's images of the split.
    stray = store_b.items_dir / "999.json"
    stray.write_text(store_b.path(store_b.image_ids()[0]).read_text())
    code, _, err = run_cli("proposals-merge", "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {stray}: ")
    assert "image id 999, which is not one of shard 1/2's images" in err
    stray.unlink()

    target = store_b.path(store_b.image_ids()[0])
    good = target.read_text()
    for change, needle in [
        (lambda d: d["scores"].__setitem__(0, float("nan")), "objectness nan of proposal 0"),
        (lambda d: d["scores"].__setitem__(1, float("inf")), "objectness inf of proposal 1"),
        (lambda d: d["scores"].__setitem__(3, -0.5), "objectness -0.5 of proposal 3"),
        (lambda d: d["masks"][2].__setitem__("size", [7, 7]), "mask 2 has size [7, 7]"),
        (lambda d: d["masks"][1].__setitem__("counts", "!!"), "mask 1: counts"),
        (lambda d: d.__setitem__("image_id", 12345), "image id 12345"),
    ]:
        data = json.loads(good)
        change(data)
        target.write_text(json.dumps(data))
        code, _, err = run_cli("proposals-merge", "--out", tmp_path / "out")
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"error: {target}: ") and needle in err, err
    target.write_text(good)
    code, _, err = run_cli("proposals-merge", "--out", tmp_path / "out")
    assert code == 0, err

    _shards(tiny, tmp_path / "out", n=3)  # stale shards of another count beside them
    code, _, err = run_cli("proposals-merge", "--out", tmp_path / "out")
    assert code == 2 and "different shard counts (N = 2, 3)" in err
    code, _, err = run_cli("proposals", "--data", SPEC, "--out", tmp_path / "x",
                           "--shard", "0/2", "--eval")
    assert code == 2 and "proposals-merge" in err


def test_store_get_checks_the_file(tiny, tmp_path):
    records = tiny.records("val")
    store = compute_proposals(records, GridSource(), tmp_path, progress=False)
    r = records[0]
    assert len(store.get(r.id, size=(r.height, r.width))) == 4
    with pytest.raises(DataError, match="proposals of a 64×64 image, but image id .* is 32×64"):
        store.get(r.id, size=(32, 64))
    good = json.loads(store.path(r.id).read_text())
    for change, needle in [
        (lambda d: d["scores"].__setitem__(0, float("nan")), "objectness nan"),
        (lambda d: d["scores"].__setitem__(0, -1.0), "objectness -1.0"),
        (lambda d: d["masks"][0].__setitem__("size", [64, 65]), "mask 0 has size [64, 65]"),
        (lambda d: d["masks"][3].__setitem__("counts", d["masks"][3]["counts"][:-2]),
         "mask 3"),
        (lambda d: d.__setitem__("scores", [0.1, 0.2, 0.3, 0.4]), "descending"),
        (lambda d: d.__setitem__("image_id", r.id + 1), f"not {r.id}"),
    ]:
        data = json.loads(json.dumps(good))
        change(data)
        store.path(r.id).write_text(json.dumps(data))
        with pytest.raises(DataError, match=re.escape(needle)) as e:
            store.get(r.id)
        assert str(e.value).startswith(str(store.path(r.id)))
