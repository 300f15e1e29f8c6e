"""Evaluator: hand-computed AP / ABO cases, void and crowd, breakdowns, a dense reference, and
agreement with pycocotools' COCOeval where the two protocols coincide."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from wiseseg import rle
from wiseseg.data import open_dataset
from wiseseg.data.dataset import GroundTruth, ImageRecord, Instance
from wiseseg.evaluation import count_error, evaluate, evaluate_predictions
from wiseseg.evaluation.matching import average_precision
from wiseseg.evaluation.predictions import Prediction

CLASSES = ("a", "b", "c")


def box(y0, y1, x0, x1, h=10, w=10):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return rle.encode(m)


def record(i, h=10, w=10, labels=()):
    return ImageRecord(id=i, name=f"im{i}", path=Path(f"/nowhere/im{i}.jpg"), height=h, width=w,
                       labels=frozenset(labels))


def gt(i, *instances, ignore=None):
    return GroundTruth(image_id=i, instances=tuple(Instance(c, m) for c, m in instances),
                       ignore=ignore)


class Preds:
    """Builds predictions with increasing input positions."""

    def __init__(self):
        self.by_image: dict[int, list[Prediction]] = {}
        self.n = 0

    def add(self, image_id, category, seg, score):
        self.by_image.setdefault(image_id, []).append(Prediction(category, seg, score, self.n))
        self.n += 1
        return self


def run(preds, gts, records=None, classes=CLASSES, **kw):
    records = records or [record(g.image_id) for g in gts]
    return evaluate(preds.by_image, {g.image_id: g for g in gts}, records, classes, **kw)


A, B = box(0, 4, 0, 4), box(5, 9, 5, 9)


def test_perfect_predictions_score_one():
    gts = [gt(1, (0, A), (1, B)), gt(2, (2, box(2, 8, 1, 9)))]
    p = Preds().add(1, 0, A, 0.9).add(1, 1, B, 0.8).add(2, 2, box(2, 8, 1, 9), 0.7)
    m = run(p, gts)
    assert m["mAP25"] == m["mAP50"] == m["mAP75"] == 1.0
    assert m["ABO"] == m["ABO_agnostic"] == 1.0
    assert all(r["AP50"] == 1.0 and r["n_gt"] == 1 and r["n_pred"] == 1
               for r in m["per_class"].values())
    assert m["counts"]["gt_instances"] == 3 and m["counts"]["predictions"] == 3


def test_duplicates_are_false_positives_and_order_matters():
    gts = [gt(1, (0, A)), gt(2, (0, B))]
    # TP (0.9), duplicate (0.8) = FP, TP (0.7): recall .5 at precision 1, recall 1 at 2/3.
    p = Preds().add(1, 0, A, 0.9).add(1, 0, A, 0.8).add(2, 0, B, 0.7)
    assert run(p, gts)["per_class"]["a"]["AP50"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # The same duplicate ranked last costs nothing under the precision envelope.
    p = Preds().add(1, 0, A, 0.9).add(1, 0, A, 0.6).add(2, 0, B, 0.7)
    assert run(p, gts)["per_class"]["a"]["AP50"] == 1.0
    # A false positive ranked first halves AP; ranked last it does not count.
    junk = box(0, 2, 6, 10)
    first = run(Preds().add(1, 0, junk, 0.9).add(1, 0, A, 0.5), [gt(1, (0, A))])
    last = run(Preds().add(1, 0, junk, 0.4).add(1, 0, A, 0.5), [gt(1, (0, A))])
    assert first["mAP50"] == 0.5 and last["mAP50"] == 1.0


def test_equal_scores_keep_input_order():
    junk = box(0, 2, 6, 10)
    fp_first = Preds().add(1, 0, junk, 0.5).add(1, 0, A, 0.5)
    tp_first = Preds().add(1, 0, A, 0.5).add(1, 0, junk, 0.5)
    assert run(fp_first, [gt(1, (0, A))])["mAP50"] == 0.5
    assert run(tp_first, [gt(1, (0, A))])["mAP50"] == 1.0


def test_thresholds_and_highest_iou_among_unmatched():
    # Prediction covers A (16 px) plus 8 px: IoU 16/24 = 2/3 → TP at .25 and .5, FP at .75.
    p = Preds().add(1, 0, box(0, 4, 0, 6), 0.9)
    m = run(p, [gt(1, (0, A))])
    assert (m["mAP25"], m["mAP50"], m["mAP75"]) == (1.0, 1.0, 0.0)
    assert m["ABO"] == pytest.approx(2 / 3)
    # Two instances, both with IoU >= .25 to the first prediction: it takes the higher one and
    # the second prediction gets the other (COCO rule; VOC's argmax rule would make it an FP).
    left, right = box(0, 4, 0, 4), box(0, 4, 4, 6)  # 16 px and 8 px, side by side
    p = Preds().add(1, 0, box(0, 4, 0, 6), 0.9).add(1, 0, box(0, 4, 1, 6), 0.8)
    m = run(p, [gt(1, (0, left), (0, right))])
    assert m["mAP25"] == 1.0


def test_classes_without_predictions_or_ground_truth():
    gts = [gt(1, (0, A), (1, B))]
    p = Preds().add(1, 0, A, 0.9).add(1, 2, box(0, 3, 5, 9), 0.8)  # class c has no GT
    m = run(p, gts)
    assert m["per_class"]["b"]["AP50"] == 0.0 and m["per_class"]["b"]["ABO"] == 0.0
    assert m["per_class"]["c"]["AP50"] is None and m["per_class"]["c"]["ABO"] is None
    assert m["per_class"]["c"]["n_pred"] == 1 and m["per_class"]["c"]["n_gt"] == 0
    assert m["mAP50"] == 0.5 and m["ABO"] == 0.5


def test_image_without_ground_truth_and_empty_predictions():
    gts = [gt(1, (0, A)), gt(2)]
    p = Preds().add(2, 0, A, 0.9).add(1, 0, A, 0.5)  # the FP on image 2 ranks first
    m = run(p, gts)
    assert m["mAP50"] == 0.5 and m["counts"]["images_without_gt"] == 1
    m = run(Preds(), gts)
    assert m["mAP25"] == m["mAP50"] == m["mAP75"] == 0.0 and m["ABO"] == 0.0
    assert m["counts"]["predictions"] == 0
    m = run(Preds().add(2, 0, A, 0.9), [gt(2)])  # no instances at all: nothing to average
    assert m["mAP50"] is None and m["ABO"] is None and m["ABO_agnostic"] is None
    assert m["by_size"]["small"]["mAP50"] is None


def test_void_removed_from_both_masks():
    # Instance 16 px; prediction 25 px of which 9 lie in void: IoU 16/25 raw, 1.0 without void.
    void = np.zeros((10, 10), bool)
    void[4, 0:5] = void[0:5, 4] = True
    p = Preds().add(1, 0, box(0, 5, 0, 5), 0.9)
    with_void = run(p, [gt(1, (0, A), ignore=rle.encode(void))])
    without = run(p, [gt(1, (0, A))])
    assert with_void["mAP75"] == 1.0 and with_void["ABO"] == 1.0
    assert without["mAP75"] == 0.0 and without["ABO"] == pytest.approx(16 / 25)


def test_instance_overlapping_the_ignore_region_is_cut():
    # COCO crowd can overlap an instance: the instance loses those pixels too.
    crowd = box(0, 4, 2, 6)
    p = Preds().add(1, 0, box(0, 4, 0, 2), 0.9)  # exactly the part of A outside the crowd
    m = run(p, [gt(1, (0, A), ignore=crowd)])
    assert m["ABO"] == 1.0 and m["mAP75"] == 1.0


def test_unmatched_prediction_mostly_in_ignore_region_is_ignored():
    void = box(6, 10, 0, 10)
    mostly_void = box(5, 10, 0, 2)  # 10 px, 8 in void
    half_out = box(2, 10, 8, 10)  # 16 px, 8 in void (exactly half): ignored too
    mostly_out = box(0, 10, 6, 8)  # 20 px, 8 in void: a false positive
    p = Preds().add(1, 0, mostly_void, 0.9).add(1, 0, half_out, 0.85).add(1, 0, A, 0.5)
    m = run(p, [gt(1, (0, A), ignore=void)])
    assert m["mAP50"] == 1.0 and m["counts"]["ignored_predictions"]["AP50"] == 2
    p.add(1, 0, mostly_out, 0.95)
    assert run(p, [gt(1, (0, A), ignore=void)])["mAP50"] == 0.5


def test_abo_per_class_and_class_agnostic():
    gts = [gt(1, (0, A), (1, B))]
    p = (Preds().add(1, 0, box(0, 4, 0, 2), 0.9)  # IoU .5 with A
         .add(1, 0, box(0, 4, 0, 1), 0.8)  # IoU .25 with A
         .add(1, 2, B, 0.1))  # class c on B: counts only for the class-agnostic ABO
    m = run(p, gts)
    assert m["per_class"]["a"]["ABO"] == 0.5 and m["per_class"]["b"]["ABO"] == 0.0
    assert m["ABO"] == 0.25 and m["ABO_agnostic"] == 0.75
    # min_score leaves predictions out of every metric, and says how many.
    m = run(p, gts, min_score=0.85)
    assert m["per_class"]["a"]["ABO"] == 0.5 and m["ABO_agnostic"] == 0.25
    assert m["counts"]["below_min_score"] == 2 and m["counts"]["evaluated_predictions"] == 1


def test_ap50_by_object_size():
    big = dict(h=100, w=100)  # small < 100 px, medium < 1000 px, large >= 1000 px
    small_gt, large_gt = box(0, 5, 0, 5, **big), box(50, 90, 50, 90, **big)
    medium_fp = box(10, 25, 10, 25, **big)  # 225 px, matches nothing
    p = (Preds().add(1, 0, medium_fp, 0.95).add(1, 0, small_gt, 0.9)
         .add(1, 0, large_gt, 0.8))
    m = run(p, [gt(1, (0, small_gt), (0, large_gt))], records=[record(1, **big)])
    assert m["mAP50"] == pytest.approx(2 / 3)  # FP, TP, TP
    s = m["by_size"]
    assert s["small"]["mAP50"] == 1.0 and s["small"]["n_gt"] == 1
    assert s["large"]["mAP50"] == 1.0 and s["large"]["n_gt"] == 1
    assert s["medium"]["mAP50"] is None and s["medium"]["n_gt"] == 0
    assert s["small"]["per_class"]["a"] == 1.0 and s["small"]["per_class"]["b"] is None
    # An unmatched prediction inside the bin stays a false positive.
    p.add(1, 0, box(95, 100, 0, 5, **big), 0.99)
    m = run(p, [gt(1, (0, small_gt), (0, large_gt))], records=[record(1, **big)])
    assert m["by_size"]["small"]["mAP50"] == 0.5 and m["by_size"]["large"]["mAP50"] == 1.0


def test_ap50_by_objects_per_image():
    gts = [gt(1, (0, A)), gt(2, (0, A), (0, B)), gt(3)]
    p = Preds().add(1, 0, A, 0.9).add(2, 0, box(0, 2, 6, 10), 0.8)
    c = run(p, gts)["by_count"]
    assert c["1"]["mAP50"] == 1.0 and c["1"]["images"] == 1 and c["1"]["n_gt"] == 1
    assert c["2"]["mAP50"] == 0.0 and c["2"]["images"] == 1 and c["2"]["n_gt"] == 2
    assert c["3-4"]["mAP50"] is None and c["3-4"]["images"] == 0
    assert c[">4"]["instances_per_image"] == [5, None]


def test_count_error():
    records = [record(1, labels=(0, 1)), record(2, labels=(0,)), record(3)]
    gts = {1: gt(1, (0, A), (0, B), (1, box(0, 2, 6, 9))), 2: gt(2, (0, A)), 3: gt(3)}
    p = (Preds().add(1, 0, A, 0.9).add(1, 0, B, 0.9).add(1, 0, A, 0.2)  # 3 vs 2
         .add(1, 2, A, 0.9)  # class c is not in the label: not counted
         .add(2, 0, A, 0.9)  # 1 vs 1
         .add(3, 0, A, 0.9))  # negative image: no pairs
    assert count_error(p.by_image, gts, records) == pytest.approx((1 + 1 + 0) / 3)
    assert count_error(p.by_image, gts, records, min_score=0.5) == pytest.approx(1 / 3)
    assert count_error({}, gts, [record(3)]) is None


def test_average_precision_matches_the_voc_formula():
    assert average_precision(np.array([], bool), 3) == 0.0
    assert average_precision(np.array([True]), 0) is None
    # recall .5 @ 1, then FP, then recall 1 @ 2/3 (VOC devkit's worked shape)
    assert average_precision(np.array([True, False, True]), 2) == pytest.approx(5 / 6)
    assert average_precision(np.array([False, True, True, False]), 4) == pytest.approx(
        0.25 * 2 / 3 + 0.25 * 2 / 3)


def test_voc_dataset_void_and_coco_crowd(voc_root, coco_root):
    ds = open_dataset(voc_root)
    (rec,) = ds.records("train")
    g = ds.ground_truth("train")[rec.id]
    on_void_row = box(1, 10, 2, 10, 20, 30)  # instance 1 plus its void row above
    preds = [
        {"image_id": rec.id, "category_id": 1, "segmentation": on_void_row, "score": 0.9},
        {"image_id": rec.id, "category_id": 3, "segmentation": g.instances[1].segmentation,
         "score": 0.8},
        {"image_id": rec.id, "category_id": 1, "segmentation": g.ignore, "score": 0.95},
    ]
    m = evaluate_predictions(preds, ds, "train")
    assert m["mAP75"] == 1.0 and m["ABO"] == 1.0  # raw IoU would be 64/72
    assert m["counts"]["ignored_predictions"]["AP50"] == 1  # the void-only prediction

    ds = open_dataset(coco_root)
    crowd = ds.ground_truth("val")[7].ignore
    dog, cat = ds.category_ids[ds.classes.index("dog")], ds.category_ids[ds.classes.index("cat")]
    dog_gt = ds.ground_truth("val")[7].instances[1].segmentation
    preds = [{"image_id": 7, "category_id": dog, "segmentation": crowd, "score": 0.9},
             {"image_id": 7, "category_id": dog, "segmentation": dog_gt, "score": 0.5},
             {"image_id": 9, "category_id": cat, "segmentation": dog_gt, "score": 0.4}]
    m = evaluate_predictions(preds, ds, "val")
    assert m["per_class"]["dog"]["AP50"] == 1.0  # the crowd prediction is ignored
    assert m["per_class"]["cat"]["AP50"] == 0.0  # image 9 has no GT: FP, and cat is missed
    assert m["counts"]["images_without_gt"] == 1


# ---------------------------------------------------------------- a dense reference


def _reference(images, n_classes, t):
    """The protocol written the slow, obvious way on dense masks (tests only)."""
    per_class = {c: [] for c in range(n_classes)}
    n_gt = np.zeros(n_classes, int)
    best = {c: [] for c in range(n_classes)}
    for gts, void, preds in images:
        for c in range(n_classes):
            g = [m & ~void for k, m in gts if k == c]
            n_gt[c] += len(g)
            ps = sorted([(s, i, m) for k, m, s, i in preds if k == c], key=lambda x: (-x[0], x[1]))
            taken = [False] * len(g)

            def iou(p, q, void=void):
                p = p & ~void
                u = (p | q).sum()
                return (p & q).sum() / u if u else 0.0

            for s, i, m in ps:
                ious = [iou(m, q) for q in g]
                free = [(v, j) for j, v in enumerate(ious) if v >= t and not taken[j]]
                if free:
                    v, j = max(free, key=lambda x: (x[0], -x[1]))
                    taken[j] = True
                    per_class[c].append((s, i, True))
                elif m.sum() and (m & void).sum() / m.sum() >= 0.5:
                    continue
                else:
                    per_class[c].append((s, i, False))
            for q in g:
                best[c].append(max([iou(m, q) for k, m, s, i in preds if k == c], default=0.0))
    aps, abos = [], []
    for c in range(n_classes):
        if not n_gt[c]:
            continue
        ranked = sorted(per_class[c], key=lambda x: (-x[0], x[1]))
        aps.append(average_precision(np.array([x[2] for x in ranked], bool), int(n_gt[c])))
        abos.append(np.mean(best[c]))
    return np.mean(aps), np.mean(abos)


def test_agrees_with_a_dense_reference():
    rng = np.random.default_rng(3)
    h, w, n_classes = 16, 20, 3
    images, gts, preds, records = [], [], Preds(), []
    for i in range(25):
        canvas = np.zeros((h, w), int)
        inst = []
        for k in range(int(rng.integers(0, 4))):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            canvas[y:y + rng.integers(3, 9), x:x + rng.integers(3, 9)] = k + 1
        for k in range(1, canvas.max() + 1):
            if (canvas == k).any():
                inst.append((int(rng.integers(n_classes)), canvas == k))
        void = np.zeros((h, w), bool)
        if rng.random() < 0.6:
            void[rng.integers(0, h):, rng.integers(0, w):] = True
            void &= canvas == 0  # VOC: void is its own label
        plist = []
        for _ in range(int(rng.integers(0, 8))):
            if inst and rng.random() < 0.6:
                c, m = inst[int(rng.integers(len(inst)))]
                m = np.roll(m, int(rng.integers(-2, 3)), axis=int(rng.integers(2)))
                c = c if rng.random() < 0.8 else int(rng.integers(n_classes))
            else:
                c, m = int(rng.integers(n_classes)), np.zeros((h, w), bool)
                y, x = rng.integers(0, h - 2), rng.integers(0, w - 2)
                m[y:y + rng.integers(1, 8), x:x + rng.integers(1, 8)] = True
            s = float(rng.choice([0.1, 0.3, 0.5, 0.7, 0.9]))  # ties on purpose
            plist.append((c, m, s, preds.n))
            preds.add(i, c, rle.encode(m), s)
        images.append((inst, void, plist))
        gts.append(gt(i, *[(c, rle.encode(m)) for c, m in inst],
                      ignore=rle.encode(void) if void.any() else None))
        records.append(record(i, h, w))
    m = run(preds, gts, records=records)
    for t, key in ((0.25, "mAP25"), (0.5, "mAP50"), (0.75, "mAP75")):
        ref_ap, ref_abo = _reference(images, n_classes, t)
        assert m[key] == pytest.approx(ref_ap, abs=1e-12), key
    assert m["ABO"] == pytest.approx(ref_abo, abs=1e-12)


# ---------------------------------------------------------------- pycocotools


def _coco_eval(ds, split, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = ds.to_coco(split)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes([dict(r) for r in results]), iouType="segm")
        ev.evaluate()
        ev.accumulate()
    return ev


def _ap101(tp, n_gt):
    """COCOeval's accumulate() for one class, area 'all' (101 recall points)."""
    hits = np.cumsum(tp)
    rc = hits / n_gt
    pr = hits / np.arange(1, len(tp) + 1)
    pr = np.maximum.accumulate(pr[::-1])[::-1]
    idx = np.searchsorted(rc, np.linspace(0, 1, 101), side="left")
    return np.mean([pr[i] if i < len(tp) else 0.0 for i in idx])


def test_agrees_with_pycocotools_where_the_protocols_coincide(tmp_path):
    """No void, no crowd, < 100 predictions per image, distinct scores: COCOeval's TP/FP
    assignment at IoU 0.5 must equal ours, so its 101-point AP equals the 101-point AP of our
    ranking, and perfect predictions give 1.0 in both."""
    from wiseseg.evaluation.matching import TP, match_image
    from wiseseg.evaluation.overlaps import image_overlaps

    ds = open_dataset("shapes:train=4,val=12,size=48", progress=False)
    gts = ds.ground_truth("val")
    rng = np.random.default_rng(0)
    results = []
    for r in ds.records("val"):
        for inst in gts[r.id].instances:
            m = rle.decode(inst.segmentation)
            for _ in range(3):
                shifted = np.roll(m, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
                c = inst.category if rng.random() < 0.85 else int(rng.integers(len(ds.classes)))
                results.append({"image_id": r.id, "category_id": ds.category_ids[c],
                                "segmentation": rle.encode(shifted), "score": 0.0})
    for k, s in enumerate(rng.permutation(len(results))):
        results[k]["score"] = float(s + 1) / len(results)
    assert all(gts[r.id].ignore is None for r in ds.records("val"))

    ev = _coco_eval(ds, "val", results)
    m = evaluate_predictions(results, ds, "val")
    from wiseseg.evaluation.predictions import parse_predictions

    by_image = parse_predictions(results, ds.records("val"), ds.category_ids)
    ours = {}
    for r in ds.records("val"):
        ov = image_overlaps(by_image[r.id], gts[r.id], r.height, r.width)
        for score, st in zip(ov.score, match_image(ov, 0.5)):
            ours[float(score)] = st == TP
    theirs = {}
    for e in ev.evalImgs:
        if e is None or e["aRng"] != [0, 1e10]:
            continue
        for score, matched in zip(e["dtScores"], e["dtMatches"][0]):
            theirs[float(score)] = bool(matched > 0)
    assert len(ours) == len(results) and ours == theirs
    assert 0 < sum(ours.values()) < len(results)

    for k, name in enumerate(ds.classes):
        n_gt = m["per_class"][name]["n_gt"]
        if not n_gt:
            continue
        scores = sorted((s for s, r in zip([r["score"] for r in results], results)
                         if r["category_id"] == ds.category_ids[k]), reverse=True)
        coco_ap = ev.eval["precision"][0, :, k, 0, 2].mean()
        assert coco_ap == pytest.approx(_ap101(np.array([ours[s] for s in scores]), n_gt))

    perfect = [{"image_id": r.id, "category_id": ds.category_ids[i.category],
                "segmentation": i.segmentation, "score": 1.0}
               for r in ds.records("val") for i in gts[r.id].instances]
    m = evaluate_predictions(perfect, ds, "val", coco=True)
    assert m["mAP50"] == 1.0 and m["coco"]["AP50"] == pytest.approx(1.0)
    assert m["coco"]["AP"] == pytest.approx(1.0)
    assert evaluate_predictions([], ds, "val", coco=True)["coco"]["AP50"] == 0.0
