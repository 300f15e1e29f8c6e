"""benchmarks/data/voc_samples.py: VOC's image-level labels of all 20 classes (--all-labels)."""

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "data"))
import voc_samples  # noqa: E402

N = len(voc_samples.VOC_CLASSES)


def test_imagesets_main_folder(tmp_path):
    for c in voc_samples.VOC_CLASSES:
        flags = {"sofa": ("1", "-1"), "tvmonitor": ("0", "1")}.get(c, ("-1", "-1"))
        (tmp_path / f"{c}_trainval.txt").write_text(
            f"2008_000001 {flags[0]}\n2008_000002 {flags[1]}\n")
    labels = voc_samples.read_all_labels(tmp_path)
    # 0: only difficult objects of the class: present all the same
    assert labels == {"2008_000001": {"sofa", "tvmonitor"}, "2008_000002": {"tvmonitor"}}


def test_imagesets_main_folder_missing_class(tmp_path):
    (tmp_path / "aeroplane_trainval.txt").write_text("2008_000001 1\n")
    with pytest.raises(SystemExit, match="no bicycle_trainval.txt"):
        voc_samples.read_all_labels(tmp_path)


def test_imagesets_main_bad_line_names_the_file(tmp_path):
    for c in voc_samples.VOC_CLASSES:
        (tmp_path / f"{c}_trainval.txt").write_text("2008_000001 1\n")
    (tmp_path / "cat_trainval.txt").write_text("2008_000001 1\n2008_000002 yes\n")
    with pytest.raises(SystemExit, match=r"cat_trainval.txt: line 2 is '2008_000002 yes'"):
        voc_samples.read_all_labels(tmp_path)


def test_cls_labels_npy(tmp_path):
    row = np.zeros(N, np.float32)
    row[[0, 17]] = 1.0
    np.save(tmp_path / "cls_labels.npy", {"2008_000001": row, "2008_000002": np.zeros(N)})
    labels = voc_samples.read_all_labels(tmp_path / "cls_labels.npy")
    assert labels == {"2008_000001": {"aeroplane", "sofa"}, "2008_000002": set()}


def test_cls_labels_npy_of_wrong_length(tmp_path):
    np.save(tmp_path / "l.npy", {"2008_000001": np.ones(3)})
    with pytest.raises(SystemExit, match="2008_000001 has 3 values"):
        voc_samples.read_all_labels(tmp_path / "l.npy")


class _Shell:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cls_labels_npy_runs_no_code(tmp_path, capsys):
    """A labels file is data: a pickle that would call a function is refused, not run."""
    bad = tmp_path / "bad.npy"
    with bad.open("wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(_Shell(), fh, protocol=2)
    with pytest.raises(SystemExit, match=r"print is not allowed in a labels file"):
        voc_samples.read_all_labels(bad)
    assert "never run" not in capsys.readouterr().out
