"""Image-level-only images in a COCO layout (``image_labels``) and classes of unknown presence."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from wiseseg import rle
from wiseseg.data.coco import read_coco
from wiseseg.errors import DataError
from wiseseg.models.peak_ops import multilabel_loss


def _layout(tmp_path, weak_entry):
    (tmp_path / "train").mkdir()
    for n in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / n)
    m = np.zeros((8, 8), bool)
    m[2:5, 2:5] = True
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8},
                       {"id": 2, "file_name": "b.png", "height": 8, "width": 8, **weak_entry}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "segmentation": rle.encode(m), "iscrowd": 0}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(data))
    return tmp_path


def test_image_labels_are_weak_only(tmp_path):
    ds = read_coco(_layout(tmp_path, {"image_labels": ["dog"], "unlabelled_classes": ["cat"]}))
    assert [r.id for r in ds.records("train")] == [1]
    assert set(ds.ground_truth("train")) == {1}
    weak = ds.weak("train")
    assert [r.id for r in weak] == [1, 2]
    assert weak[1].labels == frozenset({1}) and weak[1].unknown == frozenset({0})
    # carved calibration parts: mask-free images train only
    assert 2 in {r.id for r in ds.weak("train-fit")}
    assert 2 not in {r.id for r in ds.records("train-calib")}


def test_image_labels_bad_class_names_the_file(tmp_path):
    with pytest.raises(DataError, match="'bird', not a category"):
        read_coco(_layout(tmp_path, {"image_labels": ["bird"]}))


def test_unknown_classes_left_out_of_the_loss():
    scores = torch.tensor([[2.0, -1.0, 0.5]])
    full = multilabel_loss(scores, torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.isclose(full, F.multilabel_soft_margin_loss(scores, torch.tensor([[1.0, 0, 0]])))
    part = multilabel_loss(scores, torch.tensor([[1.0, 0.0, -1.0]]))
    per = F.binary_cross_entropy_with_logits(scores, torch.tensor([[1.0, 0.0, 0.0]]),
                                             reduction="none")[0]
    assert torch.isclose(part, (per[0] + per[1]) / 3)


def test_classifier_labels_of_unchecked_classes(tmp_path):
    """``classifier.unlabelled_classes``: ``ignore`` marks an unchecked class -1 (left out of
    the loss), ``absent`` teaches it as not present (0); labelled classes are 1 either way."""
    from wiseseg.classifier.train import ClassifierData

    weak = read_coco(_layout(tmp_path, {"image_labels": ["dog"],
                                        "unlabelled_classes": ["cat"]})).weak("train")
    ignore = ClassifierData(weak, 8, cache=False)
    absent = ClassifierData(weak, 8, cache=False, unlabelled_classes="absent")
    assert ignore.labels(1).tolist() == [-1.0, 1.0]
    assert absent.labels(1).tolist() == [0.0, 1.0]
    # the fully labelled image is the same under both
    assert ignore.labels(0).tolist() == absent.labels(0).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="got 'negative'"):
        ClassifierData(weak, 8, unlabelled_classes="negative")
