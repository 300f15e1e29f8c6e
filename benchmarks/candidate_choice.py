"""How good is each rule for picking a peak's pseudo mask among the proposals containing it?

For every peak of a labelled class that lies inside a ground-truth instance of its class (a
correct peak), the proposals containing it (after the pseudo-mask size filter) are the
candidates; each rule picks one, and the table gives the mean IoU of the pick with that
instance and the share of picks with IoU ≥ 0.5, beside the oracle (the best candidate) and
Eq. 1 over the 3 of highest objectness (the ``cpu`` preset's draw, in expectation), and the
same weights with two instance-aware CAM regions (the connected part holding the peak, the
peak's watershed basin among its class's peaks) and, with ``--prm``, the peak's own response
map (PRM's peak backpropagation: the share of the response inside a proposal, and the IoU with
the smoothed response's region) and, with ``--cues``, the preset's weight times a count of the
other peaks a candidate holds, a CAM contrast with the ring around it, or the share where
another labelled class's CAM dominates (:func:`cue_rules`). Run it on
training images (a calibration part, or the images a classifier was trained on, as pseudo
masks are made on them), never on the split a table reports.

usage: python benchmarks/candidate_choice.py CLASSIFIER.pt DATA --split train-fit
           [--negatives DIR] [--proposals DIR] [--top-k 1000] [--preset cpu] [--prm]
           [--cues] [--name NAME]
Writes benchmarks/results/candidate_choice_<name>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage import measure
from skimage.segmentation import watershed

from wiseseg import api, rle
from wiseseg.classifier.model_io import load_classifier
from wiseseg.classifier.peaks import cams_on_image, peak_cams, peaks_for_image
from wiseseg.io import atomic_write_json
from wiseseg.proposals import build_proposal_source, compute_proposals
from wiseseg.pseudo.sampling import cam_agreement, cam_region, eq1_probabilities

ROOT = Path(__file__).resolve().parents[1]


OVERLAPS = (0.5, 1.0, 2.0)  # pseudo.cam_overlap exponents
PRM_SIGMA = 8.0  # px: the response map is smoothed before its region is taken (it is spiky)
PRM_THRESHOLDS = (0.1, 0.2, 0.3)
THRESHOLDS = (0.1, 0.2, 0.3, 0.4)  # pseudo.cam_threshold


def eq1_top3(ious: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    """IoU of the arg-max and expected IoU of the Eq. 1 draw among the 3 of highest
    ``weight`` (the ``cpu`` preset's ``max_candidates``)."""
    top3 = np.argsort(-weight, kind="stable")[:3]
    return float(ious[top3[0]]), float((ious[top3] * eq1_probabilities(weight[top3])).sum())


def region_iou(masks: np.ndarray, region: np.ndarray) -> np.ndarray:
    """IoU of each of ``N×H×W`` bool masks with a bool ``H×W`` region."""
    flat, reg = masks.reshape(len(masks), -1), region.reshape(-1)
    inter = flat[:, reg].sum(1)
    return inter / np.maximum(flat.sum(1) + reg.sum() - inter, 1)


def instance_regions(cam: np.ndarray, y: int, x: int, t: float,
                     peaks: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Instance-aware CAM regions of the peak ``(y, x)``: the connected part of
    {CAM ≥ t × CAM(y, x)} holding the peak, and its watershed basin (on −CAM, markers at
    the class's peaks in that region)."""
    region = cam_region(cam, y, x, t)
    if region is None:
        z = np.zeros(cam.shape, bool)
        return {"component": z, "basin": z}
    lab = measure.label(region, connectivity=2)
    markers = np.zeros(cam.shape, np.int32)
    for i, (py, px) in enumerate(peaks):
        if region[py, px]:
            markers[py, px] = i + 1
    markers[y, x] = len(peaks) + 1
    basins = watershed(-cam, markers, mask=region)
    return {"component": lab == lab[y, x], "basin": basins == basins[y, x]}


def box_contrast(masks: np.ndarray, cam: np.ndarray, y: int, x: int,
                 grow: float = 0.25) -> np.ndarray:
    """CAM inside each mask less the CAM in the ring around it: the mean of the CAM
    (divided by its value at the peak, negatives as 0) over the mask, less its mean over the
    mask's box grown by ``grow`` × its side on each side, the mask taken out; ≥ 0. A part of
    an object leaves activation in its ring, a region spilling into the background dilutes
    its inside: the whole object scores highest. 0 for all when the CAM at the peak is ≤ 0."""
    v = float(cam[y, x])
    n = len(masks)
    if n == 0 or not np.isfinite(v) or v <= 0:
        return np.zeros(n)
    c = np.clip(cam / v, 0, None).astype(np.float64)
    h, w = c.shape
    integ = np.zeros((h + 1, w + 1))
    integ[1:, 1:] = c.cumsum(0).cumsum(1)
    flat = masks.reshape(n, -1)
    area = flat.sum(1).astype(float)
    inside = flat @ c.reshape(-1)
    rows, cols = masks.any(2), masks.any(1)
    out = np.zeros(n)
    for k in range(n):
        if area[k] == 0:
            continue
        r, q = np.nonzero(rows[k])[0], np.nonzero(cols[k])[0]
        gy, gx = grow * (r[-1] - r[0] + 1), grow * (q[-1] - q[0] + 1)
        y0, y1 = max(int(r[0] - gy), 0), min(int(r[-1] + 1 + gy), h)
        x0, x1 = max(int(q[0] - gx), 0), min(int(q[-1] + 1 + gx), w)
        box = integ[y1, x1] - integ[y0, x1] - integ[y1, x0] + integ[y0, x0]
        ring = (y1 - y0) * (x1 - x0) - area[k]
        ring_mean = (box - inside[k]) / ring if ring > 0 else 0.0
        out[k] = max(inside[k] / area[k] - ring_mean, 0.0)
    return out


def cue_rules(ious: np.ndarray, scores: np.ndarray, masks: np.ndarray,
              cam_maps: dict[int, np.ndarray], category: int, y: int, x: int,
              others: list[tuple[int, int, int]], threshold: float,
              overlap: float) -> dict[str, float]:
    """Eq. 1 over the top 3 with the preset's weight (objectness × CAM agreement^``overlap``,
    ``pseudo.cam_overlap``, at ``pseudo.cam_threshold``) times a
    further cue: a penalty ``f^n`` for the ``n`` other peaks of the same class (separate
    instances) or of another class a candidate holds; the :func:`box_contrast` of the
    class's CAM; or the share of the candidate where another labelled class's CAM (each
    divided by its maximum) is above this class's."""
    cam = cam_maps[category]
    base = scores * cam_agreement(masks, cam, y, x, threshold) ** overlap
    out = {}
    same = [(py, px) for py, px, c in others if c == category]
    other = [(py, px) for py, px, c in others if c != category]
    n_same = sum(masks[:, py, px].astype(int) for py, px in same) if same \
        else np.zeros(len(masks), int)
    n_other = sum(masks[:, py, px].astype(int) for py, px in other) if other \
        else np.zeros(len(masks), int)
    for f in (0.0, 0.1, 0.3, 0.5):
        out[f"preset × {f}^(same-class peaks held)"] = eq1_top3(ious, base * f ** n_same)[1]
        out[f"preset × {f}^(other-class peaks held)"] = eq1_top3(ious, base * f ** n_other)[1]
        out[f"preset × {f}^(peaks held)"] = eq1_top3(ious, base * f ** (n_same + n_other))[1]
    for grow in (0.15, 0.3):
        con = box_contrast(masks, cam, y, x, grow)
        for e in (0.5, 1.0, 2.0):
            out[f"preset × box contrast^{e}, grow {grow}"] = eq1_top3(ious, base * con ** e)[1]
            out[f"Eq. 1 over top 3, objectness × box contrast^{e}, grow {grow}"] = \
                eq1_top3(ious, scores * con ** e)[1]
    if len(cam_maps) > 1:
        norm = {c: m / m.max() if m.max() > 0 else m for c, m in cam_maps.items()}
        rival = np.max([norm[c] for c in norm if c != category], axis=0) > norm[category]
        flat = masks.reshape(len(masks), -1)
        share = flat[:, rival.reshape(-1)].sum(1) / np.maximum(flat.sum(1), 1)
        for e in (1.0, 2.0, 4.0):
            out[f"preset × (1 − rival-class share)^{e}"] = \
                eq1_top3(ious, base * (1 - share) ** e)[1]
    else:  # one labelled class: nothing to compare with, the preset's draw
        for e in (1.0, 2.0, 4.0):
            out[f"preset × (1 − rival-class share)^{e}"] = eq1_top3(ious, base)[1]
    return out


def rules(ious: np.ndarray, scores: np.ndarray, areas: np.ndarray,
          masks: np.ndarray, cam: np.ndarray, y: int, x: int,
          peaks: list[tuple[int, int]] = ()) -> dict[str, float]:
    """IoU of each rule's pick (candidates sorted by nothing in particular): objectness
    alone, objectness × area^β, and objectness × CAM agreement^e (``pseudo.cam_overlap``,
    ``pseudo.cam_threshold``: :func:`wiseseg.pseudo.sampling.cam_agreement`), and the same
    with the :func:`instance_regions` of the peak (``peaks``: the class's other peaks)."""
    am, eq = eq1_top3(ious, scores)
    out = {"oracle": ious.max(), "top objectness (argmax)": am,
           "Eq. 1 over top 3 (expected)": eq}
    for beta in (0.3, 0.5):
        out[f"objectness × area^{beta}"] = ious[(scores * areas ** beta).argmax()]
    top3 = np.argsort(-scores, kind="stable")[:3]
    out["largest of top 3"] = ious[top3[areas[top3].argmax()]]
    for t in THRESHOLDS:
        agree = cam_agreement(masks, cam, y, x, t)
        for e in OVERLAPS:
            am, eq = eq1_top3(ious, scores * agree ** e)
            out[f"argmax, cam_overlap {e}, cam_threshold {t}"] = am
            out[f"Eq. 1 over top 3, cam_overlap {e}, cam_threshold {t}"] = eq
        for kind, region in instance_regions(cam, y, x, t, list(peaks)).items():
            agree = region_iou(masks, region)
            for e in OVERLAPS:
                am, eq = eq1_top3(ious, scores * agree ** e)
                out[f"argmax, CAM {kind} IoU^{e}, cam_threshold {t}"] = am
                out[f"Eq. 1 over top 3, CAM {kind} IoU^{e}, cam_threshold {t}"] = eq
    return out


def prm_rules(ious: np.ndarray, scores: np.ndarray, masks: np.ndarray, prm: np.ndarray,
              cam_agree: np.ndarray) -> dict[str, float]:
    """IoU of the Eq. 1 draw among the 3 of highest weight (and of the arg-max) when the
    weight is objectness × a term of the peak's response map ``prm`` (float ``H×W`` ≥ 0,
    summing to 1): the share of the response inside the proposal, or the IoU with the region
    where the smoothed response is ≥ t × its maximum; alone and times a power of the
    preset's CAM agreement (``cam_agree``)."""
    flat = masks.reshape(len(masks), -1)
    mass = flat @ prm.reshape(-1).astype(np.float64)
    smooth = ndimage.gaussian_filter(prm.astype(np.float64), PRM_SIGMA)
    out = {}
    for e in (1.0, 2.0, 3.0):
        out[f"Eq. 1 over top 3, PRM mass^{e}"] = eq1_top3(ious, scores * mass ** e)[1]
        for c in (1.0, 2.0, 3.0):
            out[f"Eq. 1 over top 3, PRM mass^{e} × CAM agreement^{c}"] = \
                eq1_top3(ious, scores * mass ** e * cam_agree ** c)[1]
            out[f"argmax, PRM mass^{e} × CAM agreement^{c}"] = \
                eq1_top3(ious, scores * mass ** e * cam_agree ** c)[0]
    for t in PRM_THRESHOLDS:
        agree = region_iou(masks, smooth >= t * smooth.max()) if smooth.max() > 0 \
            else np.zeros(len(masks))
        for e in (1.0, 2.0):
            out[f"Eq. 1 over top 3, PRM region IoU^{e}, t {t}"] = \
                eq1_top3(ious, scores * agree ** e)[1]
            out[f"Eq. 1 over top 3, PRM region IoU^{e}, t {t} × CAM agreement²"] = \
                eq1_top3(ious, scores * agree ** e * cam_agree ** 2)[1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("classifier", nargs="?")
    ap.add_argument("data", nargs="?")
    ap.add_argument("--choose", nargs="+", metavar="RESULT.json",
                    help="rank the Eq. 1 rules by their mean share of IoU ≥ 0.5 over these "
                         "kept results (one per data set) and stop")
    ap.add_argument("--split", default="train-fit")
    ap.add_argument("--negatives", default=None)
    ap.add_argument("--proposals", default=None, help="proposal store folder (computed if new)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--top-k", type=int, default=1000,
                    help="proposals per image (as the run: 1000 photographs, 300 shapes)")
    ap.add_argument("--prm", action="store_true",
                    help="also rules on each peak's response map (one backward pass a peak)")
    ap.add_argument("--cues", action="store_true",
                    help="also the preset's weight times peak-count, CAM-contrast and "
                         "rival-class cues (cue_rules)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    if args.choose:
        choose(args.choose)
        return
    if not (args.classifier and args.data):
        ap.error("CLASSIFIER and DATA are needed (or --choose)")
    torch.set_num_threads(2)
    cfg = api.load_config(args.preset)
    ds = api.open_dataset(args.data, progress=False)
    if args.negatives:
        from wiseseg.data.negatives import add_negatives

        add_negatives(ds, args.negatives, "train")
    ds.has_split(args.split)
    recs, gts = ds.records(args.split), ds.ground_truth(args.split)
    model, ccfg, _ = load_classifier(args.classifier)
    size = int(ccfg["input_size"])
    if args.prm:
        from wiseseg.data.images import load_image
        from wiseseg.inference.prm_baseline import response_maps_at
        from wiseseg.models.peak_response import excitation_twin

        twin = excitation_twin(model.eval())
    pc, sc = cfg["pseudo"], cfg["peaks"]
    store_dir = args.proposals or f"runs/candidate-choice/{Path(args.data).name}-{args.split}"
    store = compute_proposals(list(recs), build_proposal_source("builtin", top_k=args.top_k),
                              store_dir, workers=2, progress=False, top_k=args.top_k)
    picks: dict[str, list[float]] = {}
    without = 0
    for r in recs:
        if not gts[r.id].instances:
            continue  # no masks (image-level labels only, or a negative)
        cam = peak_cams(model, [r], size, sc, "cpu")[0]
        peaks = peaks_for_image(model, cam, r, sc, True, input_size=size)
        cam_maps = cams_on_image(model, cam, size, r) if peaks else {}
        props = store.get(r.id)
        masks = rle.decode_many(props.masks, (r.height, r.width)).astype(bool)
        scores = np.asarray(props.scores, float)
        areas = masks.reshape(len(masks), -1).sum(1).astype(float)
        hw = r.height * r.width
        ok = (areas >= max(pc["min_area_px"], pc["min_area_frac"] * hw)) & \
            (areas <= pc["max_area_frac"] * hw)
        inst = gts[r.id].instances
        gm = rle.decode_many([i.segmentation for i in inst], (r.height, r.width)).astype(bool)
        cats = np.array([i.category for i in inst])
        right = [p for p in peaks
                 if any(cats[k] == p.category and gm[k][p.y, p.x] for k in range(len(cats)))]
        prms = dict(zip(map(id, right), response_maps_at(
            twin, load_image(r.path), right, size)[0])) if args.prm and right else {}
        for p in peaks:
            hit = [k for k in range(len(cats)) if cats[k] == p.category and gm[k][p.y, p.x]]
            if not hit:
                continue
            inside = np.nonzero(masks[:, p.y, p.x] & ok)[0]
            if not len(inside):
                without += 1
                for k in picks:
                    picks[k].append(0.0)
                continue
            m, g = masks[inside], gm[hit[0]]
            ious = (m & g).reshape(len(m), -1).sum(1) / (m | g).reshape(len(m), -1).sum(1)
            same = [(q.y, q.x) for q in peaks if q.category == p.category and q is not p]
            found = rules(ious, scores[inside], areas[inside], m, cam_maps[p.category],
                          p.y, p.x, same)
            if args.cues:
                found.update(cue_rules(
                    ious, scores[inside], m, cam_maps, p.category, p.y, p.x,
                    [(q.y, q.x, q.category) for q in peaks if q is not p],
                    pc["cam_threshold"], pc["cam_overlap"]))
            if prms:
                found.update(prm_rules(ious, scores[inside], m, prms[id(p)], cam_agreement(
                    m, cam_maps[p.category], p.y, p.x, pc["cam_threshold"])))
            for k, v in found.items():
                picks.setdefault(k, []).append(float(v))
    table = {k: {"mean_iou": float(np.mean(v)), "iou50": float(np.mean(np.array(v) >= 0.5)),
                 "peaks": len(v)} for k, v in picks.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    name = args.name or Path(args.data).name
    atomic_write_json(ROOT / "benchmarks" / "results" / f"candidate_choice_{name}.json",
                      {"commit": commit, "classifier": args.classifier, "data": args.data,
                       "split": args.split, "peaks_settings": dict(sc),
                       "correct_peaks_without_candidate": without, "rules": table}, indent=1)
    print(f"{args.data} {args.split}: correct peaks {len(next(iter(picks.values()), []))}, "
          f"{without} without a candidate\n\n| rule | mean IoU | IoU ≥ 0.5 |\n|---|---|---|")
    for k, v in table.items():
        print(f"| {k} | {v['mean_iou']:.3f} | {100 * v['iou50']:.1f} % |")


def choose(paths: list[str]) -> None:
    """Print the Eq. 1 draws (the preset's weight × a cue of :func:`cue_rules` among them,
    and the arg-max of objectness) ranked by their mean share of
    correct peaks whose draw has IoU ≥ 0.5, over several data sets' result files."""
    import json

    tables = {Path(p).stem.removeprefix("candidate_choice_"): json.loads(Path(p).read_text())
              for p in paths}
    names = list(tables)
    keys = [k for k in next(iter(tables.values()))["rules"]
            if k.startswith(("Eq. 1", "top objectness", "preset ×")) or k == "oracle"]
    rows = sorted(((np.mean([tables[n]["rules"][k]["iou50"] for n in names]), k) for k in keys
                   if all(k in tables[n]["rules"] for n in names)), reverse=True)
    print("| rule | " + " | ".join(f"{n} IoU≥0.5 / mean IoU" for n in names) + " | mean |")
    print("|---" * (len(names) + 2) + "|")
    for mean, k in rows:
        cells = [f"{100 * tables[n]['rules'][k]['iou50']:.1f} / "
                 f"{tables[n]['rules'][k]['mean_iou']:.3f}" for n in names]
        print(f"| {k} | " + " | ".join(cells) + f" | {100 * mean:.1f} |")


if __name__ == "__main__":
    main()
