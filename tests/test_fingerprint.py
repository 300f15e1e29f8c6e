"""Proposal stores and shards remember what they were computed from (issue 19): the image
files (size and SHA-256; the mtime is recorded, not trusted), the method and its settings.
A store is never reused for other data or settings: that is a one-line error pointing to a
new --out or --overwrite."""

from __future__ import annotations

import os

D1 = "shapes:train=2,val=3,size=32,seed=1"
D2 = "shapes:train=2,val=3,size=32,seed=2"  # same image names and ids, other pixels


def _proposals(run_cli, data, out, *extra):
    return run_cli("proposals", "--data", data, "--split", "val", "--out", out,
                   "--workers", "1", "-q", *extra)


def test_store_of_other_images_is_refused_then_overwritten(tmp_path, run_cli):
    out = tmp_path / "P"
    code, stdout, err = _proposals(run_cli, D1, out)
    assert code == 0, err
    code, stdout, _ = _proposals(run_cli, D1, out)
    assert code == 0 and "0 computed, 3 reused" in stdout
    code, _, err = _proposals(run_cli, D2, out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is not the image whose proposals" in err and "--overwrite" in err
    assert "new --out" in err and "Traceback" not in err
    code, stdout, _ = _proposals(run_cli, D2, out, "--overwrite")
    assert code == 0 and "3 computed, 0 reused" in stdout


def test_same_content_with_a_new_mtime_is_reused(tmp_path, run_cli):
    from wiseseg.data import open_dataset

    out = tmp_path / "P"
    assert _proposals(run_cli, D1, out)[0] == 0
    for r in open_dataset(D1, progress=False).records("val"):
        os.utime(r.path, ns=(1, 1))  # a copy or a touch: the hash decides
    code, stdout, _ = _proposals(run_cli, D1, out)
    assert code == 0 and "0 computed, 3 reused" in stdout


def test_other_pixels_with_the_same_size_and_mtime_are_refused(tmp_path, run_cli):
    """`cp -p` / `rsync -a` of other data keeps size and mtime: only the content tells."""
    import shutil

    from wiseseg.data import open_dataset

    out, d1 = tmp_path / "P", tmp_path / "d1"
    shutil.copytree(open_dataset(D1, progress=False).root, d1)
    assert _proposals(run_cli, str(d1), out)[0] == 0
    img = open_dataset(str(d1), progress=False).records("val")[1].path
    st = img.stat()
    data = bytearray(img.read_bytes())
    data[-40:-20] = bytes(255 - b for b in data[-40:-20])  # same length, other bytes
    img.write_bytes(bytes(data))
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    code, _, err = _proposals(run_cli, str(d1), out)
    assert code == 2 and "is not the image whose proposals" in err and img.name in err, err


def test_store_of_other_settings_is_refused(tmp_path, run_cli):
    out = tmp_path / "P"
    assert _proposals(run_cli, D1, out)[0] == 0
    code, _, err = _proposals(run_cli, D1, out, "--top-k", "5")
    assert code == 2 and "other settings" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1


def test_merge_refuses_a_shard_of_other_images(tmp_path, run_cli):
    out = tmp_path / "P"
    assert _proposals(run_cli, D1, out, "--shard", "0/2")[0] == 0
    assert _proposals(run_cli, D2, out, "--shard", "1/2")[0] == 0
    code, _, err = run_cli("proposals-merge", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "shard-1-of-2" in err and "other image files" in err
    assert _proposals(run_cli, D1, out, "--shard", "1/2", "--overwrite")[0] == 0
    code, stdout, err = run_cli("proposals-merge", "--out", out)
    assert code == 0 and "merged 2 shards, 3 images" in stdout, err
