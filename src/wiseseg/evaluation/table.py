"""The compact text table ``wiseseg evaluate`` prints (values in %, "-" where undefined)."""

from __future__ import annotations

from collections.abc import Mapping


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def format_metrics(m: Mapping) -> str:
    """Per-class table (the paper's Table 2 with AP25/AP75/ABO), means and breakdowns."""
    c = m["counts"]
    lines = [
        f"{c['images']} images ({c['images_without_gt']} without instances), "
        f"{c['gt_instances']} instances, {c['evaluated_predictions']} predictions evaluated"
        + (f" ({c['below_min_score']} below min score {m['protocol']['min_score']:g} left out)"
           if c["below_min_score"] else ""),
    ]
    width = max([len("class-agnostic ABO")] + [len(n) for n in m["per_class"]])
    head = f"{'class':<{width}}  {'AP25':>6} {'AP50':>6} {'AP75':>6} {'ABO':>6} {'n_gt':>6} " \
           f"{'n_pred':>7}"
    lines += [head, "-" * len(head)]
    for name, r in m["per_class"].items():
        lines.append(f"{name:<{width}}  {_pct(r['AP25']):>6} {_pct(r['AP50']):>6} "
                     f"{_pct(r['AP75']):>6} {_pct(r['ABO']):>6} {r['n_gt']:>6} "
                     f"{r['n_pred']:>7}")
    lines.append("-" * len(head))
    lines.append(f"{'mean':<{width}}  {_pct(m['mAP25']):>6} {_pct(m['mAP50']):>6} "
                 f"{_pct(m['mAP75']):>6} {_pct(m['ABO']):>6}")
    lines.append(f"{'class-agnostic ABO':<{width}}  {'':>6} {'':>6} {'':>6} "
                 f"{_pct(m['ABO_agnostic']):>6}")
    lines.append("AP50 by object size:        " + "   ".join(
        f"{k} {_pct(v['mAP50'])} (n={v['n_gt']})" for k, v in m["by_size"].items()))
    lines.append("AP50 by objects per image:  " + "   ".join(
        f"{k}: {_pct(v['mAP50'])} ({v['images']} img)" for k, v in m["by_count"].items()))
    ignored = c["ignored_predictions"]
    if any(ignored.values()):
        lines.append("ignored (unmatched, mostly in void/crowd): " + ", ".join(
            f"{k} {v}" for k, v in ignored.items()))
    if "coco" in m:
        k = m["coco"]
        lines.append(f"COCOeval segm (101-point, maxDets {k['max_dets']}): AP {_pct(k['AP'])}  "
                     f"AP50 {_pct(k['AP50'])}  AP75 {_pct(k['AP75'])}")
    return "\n".join(lines)
