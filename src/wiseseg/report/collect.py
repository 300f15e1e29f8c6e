"""RUN/metrics.json: every number of a run in one file, and the results table (paper Table 1).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from wiseseg.io import atomic_write_json, read_json, read_jsonl

METHOD_LABELS = {"prm": "PRM", "wise": "WISE", "wise_refine": "WISE+Refine",
                 "reference": "Mask R-CNN (GT)"}
STAGE_ORDER = ("classifier", "peaks", "proposals", "pseudo", "wise", "reference",
               "predict_wise", "predict_reference", "prm", "pseudo_quality", "evaluate")


def _maybe(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _curve(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return read_jsonl(path)  # a line cut short by a kill is dropped


def environment() -> dict[str, str]:
    import torch
    import torchvision

    from wiseseg import __version__

    return {"wiseseg": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "platform": platform.platform(), "processor": platform.processor() or "?",
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "cpu_threads": str(torch.get_num_threads())}


def collect_metrics(run_dir: Path) -> dict:
    """Gather the stage outputs of ``run_dir`` into one dict (written as RUN/metrics.json)."""
    run_dir = Path(run_dir)
    stages = {}
    for name in STAGE_ORDER:
        m = _maybe(run_dir / name / "stage.json")
        if m:
            stages[name] = {"seconds": m.get("seconds"), "complete": m.get("complete"),
                            "summary": m.get("summary", {})}
    planned = ((_maybe(run_dir / "auto.json") or {}).get("plan") or {}).get("seconds", {})
    for name, sec in planned.items():  # the plan printed at the start (wiseseg.runplan)
        if name in stages:
            stages[name]["planned_seconds"] = sec
    evaluation = _maybe(run_dir / "evaluate" / "metrics.json") or {}
    results = {METHOD_LABELS[k]: {t: v[t] for t in ("mAP25", "mAP50", "mAP75", "ABO",
                                                      "ABO_agnostic")}
               for k, v in evaluation.items()}
    return {
        "results": results,
        "methods": {METHOD_LABELS[k]: v for k, v in evaluation.items()},
        "peaks": _maybe(run_dir / "peaks" / "quality.json"),
        "proposals": (stages.get("proposals") or {}).get("summary", {}).get("val"),
        "pseudo": (stages.get("pseudo") or {}).get("summary"),
        "pseudo_quality": _maybe(run_dir / "pseudo_quality" / "quality.json"),
        "refine": (stages.get("predict_wise") or {}).get("summary", {}).get("refine"),
        "auto": _maybe(run_dir / "auto.json"),
        "curves": {name: _curve(run_dir / name / "metrics.jsonl")
                   for name in ("classifier", "wise", "reference")},
        "stages": stages,
        "total_seconds": round(sum(s["seconds"] or 0 for s in stages.values()), 1),
        "environment": environment(),
    }


def write_metrics(run_dir: Path, metrics: dict) -> Path:
    return atomic_write_json(Path(run_dir) / "metrics.json", metrics, indent=2)


def results_table(results: dict[str, dict]) -> str:
    """The paper's Table 1 as text: Method | mAP25 | mAP50 | mAP75 | ABO (percent)."""
    head = f"{'Method':<18}{'mAP25':>8}{'mAP50':>8}{'mAP75':>8}{'ABO':>8}"
    lines = [head, "-" * len(head)]
    for label in METHOD_LABELS.values():
        if label in results:
            r = results[label]
            lines.append(f"{label:<18}" + "".join(f"{100 * r[k]:8.1f}" for k in
                                                  ("mAP25", "mAP50", "mAP75", "ABO")))
    if len(lines) == 2:
        lines.append("(no evaluation: the validation split has no ground-truth masks)")
    return "\n".join(lines)
