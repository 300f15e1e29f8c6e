"""The Python API behind ``wiseseg run`` — for notebooks and scripts.

Example::

    from wiseseg import api

    ds = api.open_dataset("shapes")                      # or a VOC / COCO / folder path
    cfg = api.load_config("cpu", ["segmenter.epochs=5"]) # preset + overrides
    result = api.run_pipeline(ds, cfg, "runs/demo")
    print(result.table())                                # PRM / WISE / WISE+Refine / GT
    result.metrics["results"]["WISE"]["mAP50"]
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wiseseg.config import apply_overrides, load_preset
from wiseseg.config import load_config as _load_yaml
from wiseseg.data import open_dataset
from wiseseg.data.dataset import Dataset
from wiseseg.errors import WisesegError
from wiseseg.io import atomic_write_json, read_json
from wiseseg.pipeline import RunContext, run_stages, save_run_config, stage_summary
from wiseseg.report.collect import collect_metrics, results_table, write_metrics
from wiseseg.runlock import run_lock

__all__ = ["open_dataset", "load_config", "apply_overrides", "run_pipeline", "rebuild_report",
           "RunResult"]


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    stages: dict

    def table(self) -> str:
        return results_table(self.metrics["results"])


def load_config(preset: str = "cpu", overrides: Sequence[str] = ()) -> dict:
    """A preset (``cpu``, ``paper`` or a YAML path) with ``key=value`` overrides."""
    return apply_overrides(load_preset(preset), overrides)


def _resolve_auto(cfg: dict, ds: Dataset, run_dir: Path, progress: bool) -> dict:
    """The ``auto`` settings chosen from the data (:mod:`wiseseg.autoconfig`): printed, and
    kept in ``RUN/auto.json``; the run's config holds the chosen numbers."""
    from wiseseg.autoconfig import print_notes, resolve_auto

    if not ds.has_split(cfg["data"]["train_split"]):
        return cfg  # the missing split is reported below
    resolved, notes = resolve_auto(cfg, ds)
    if notes:
        print_notes(notes, progress)
        atomic_write_json(run_dir / "auto.json", {"notes": notes, "chosen": {
            sec: {k: resolved[sec][k] for k in resolved.get(sec, {})
                  if cfg[sec].get(k) == "auto"}
            for sec in ("classifier", "segmenter", "proposals")}}, indent=2)
    return resolved


def _plan(cfg: dict, ds: Dataset, run_dir: Path, progress: bool, reference: bool,
          requested: dict) -> dict:
    """The expected wall time of every stage (:mod:`wiseseg.runplan`), printed and kept in
    ``RUN/auto.json`` under ``plan``; on a CPU only (the costs are a CPU's). When the plan is
    over ``auto.max_minutes``, the Mask R-CNN epochs that ``requested`` left to ``auto`` are
    cut to fit (:func:`wiseseg.runplan.fit_epochs`). Returns the config the run uses."""
    from wiseseg.autoconfig import config_sizes, is_auto, print_notes
    from wiseseg.engine.reproducibility import resolve_device
    from wiseseg.runplan import fit_epochs, plan_lines, plan_run

    train, val = cfg["data"]["train_split"], cfg["data"]["val_split"]
    if (resolve_device(cfg.get("device", "auto")).type != "cpu" or is_auto(cfg)
            or not ds.has_split(train)):
        return cfg
    sizes = config_sizes(ds, cfg, train)
    val_images = len(ds.records(val)) if val in ds.splits else 0
    reference = reference and ds.has_ground_truth(train)
    path = run_dir / "auto.json"
    auto = read_json(path) if path.is_file() else {}
    a = requested.get("auto") or {}
    keys = tuple(k for k in ("epochs", "reference_epochs")
                 if (requested.get("segmenter") or {}).get(k) == "auto"
                 and (k == "epochs" or reference))
    if a.get("max_minutes") and keys:
        cfg, notes = fit_epochs(cfg, sizes, val_images, sizes.instances_per_image, reference,
                                float(a["max_minutes"]) * 60.0, keys,
                                int(a.get("min_epochs", 1)))
        print_notes(notes, progress)
        if notes:
            auto["notes"] = auto.get("notes", []) + notes
            chosen = auto.setdefault("chosen", {}).setdefault("segmenter", {})
            chosen.update({k: cfg["segmenter"][k] for k in keys})
    plan = plan_run(cfg, sizes, val_images, sizes.instances_per_image, reference)
    lines = plan_lines(plan)
    if progress:
        for line in lines:
            print(f"plan: {line}", file=sys.stderr)
    auto["plan"] = {"seconds": {s.stage: round(s.seconds, 1) for s in plan},
                    "total_seconds": round(sum(s.seconds for s in plan), 1), "notes": lines}
    atomic_write_json(path, auto, indent=2)
    return cfg


def run_pipeline(dataset: Dataset | str, cfg: dict | str, out: str | Path,
                 data_spec: str | None = None, reference: bool = True,
                 progress: bool = True) -> RunResult:
    """Run (or resume) every stage into ``out`` and write metrics.json and report.html."""
    from wiseseg.allocator import keep_freed_memory

    keep_freed_memory()  # every stage's tensors reuse freed memory (see wiseseg.allocator)
    ds = open_dataset(dataset, progress=progress) if isinstance(dataset, str) else dataset
    cfg = load_config(cfg) if isinstance(cfg, str) else copy.deepcopy(cfg)
    # config.yaml records the data spec; it is not a setting, and must not change the hashes
    spec = cfg.get("data", {}).pop("spec", None) or data_spec or (
        dataset if isinstance(dataset, str) else str(ds.root))
    run_dir = Path(out)
    with run_lock(run_dir):  # a second run on this directory fails at once, naming the pid
        return _run_locked(ds, cfg, run_dir, spec, reference, progress)


def _run_locked(ds: Dataset, cfg: dict, run_dir: Path, spec, reference: bool,
                progress: bool) -> RunResult:
    _add_negatives(ds, cfg)
    warnings = _data_warnings(ds, cfg)
    cfg = resolved_config(ds, cfg, run_dir, progress, reference)
    for split in (cfg["data"]["train_split"],):
        if not ds.has_split(split):
            raise WisesegError(f"{ds.root}: no training split {split!r} (available: "
                               f"{', '.join(ds.splits)}); set data.train_split=...")
    from wiseseg.stages import STAGES

    ctx = RunContext(cfg=cfg, dataset=ds, data_spec=str(spec), run_dir=run_dir,
                     progress=progress, reference=reference)
    save_run_config(ctx)
    run_stages(STAGES, ctx)
    metrics = collect_metrics(run_dir)
    metrics["run"] = stage_summary(ctx)
    if warnings:
        metrics["warnings"] = warnings
    write_metrics(run_dir, metrics)
    _write_report(run_dir, ds, cfg, metrics, progress)
    return RunResult(run_dir, metrics, ctx.summaries)


def resolved_config(ds: Dataset, cfg: dict, run_dir: Path, progress: bool = False,
                    reference: bool = True) -> dict:
    """The config a run on ``ds`` uses: ``auto`` settings resolved from the data, the
    calibration split carved when one is asked for, and the Mask R-CNN epochs fitted to the
    plan (both noted in ``run_dir/auto.json``). ``cfg`` is the requested config."""
    resolved = _resolve_auto(cfg, ds, run_dir, progress)
    ds.has_split(resolved["data"]["val_split"])  # carves <split>-fit / -calib when asked for
    return _plan(resolved, ds, run_dir, progress, reference, cfg)


def _add_negatives(ds: Dataset, cfg: dict) -> None:
    """``data.negatives`` joins the training split (once: a dataset that has them is kept)."""
    from wiseseg.data.negatives import add_negatives

    folder = cfg["data"].get("negatives")
    split = cfg["data"]["train_split"]
    if folder and not any(r.name.startswith("negatives/") for r in ds.weak_only(split)):
        add_negatives(ds, folder, split)


def _data_warnings(ds: Dataset, cfg: dict) -> list[str]:
    """Warnings about the training data that no setting fixes (printed now, kept in
    metrics.json): a class in every training image, a class in none."""
    from wiseseg.data.stats import (
        absent_warning,
        classes_absent,
        classes_everywhere,
        everywhere_warning,
    )

    split = cfg["data"]["train_split"]
    if not ds.has_split(split):
        return []
    recs = ds.weak(split).records
    names = classes_everywhere(recs, ds.classes)
    out = [everywhere_warning(names, split, len(recs))] if names else []
    absent = classes_absent(recs, ds.classes)
    out += [absent_warning(absent, split)] if absent else []
    for line in out:
        print(line, file=sys.stderr)
    return out


def _write_report(run_dir: Path, ds: Dataset, cfg: dict, metrics: dict, progress: bool) -> Path:
    from wiseseg.report.build import write_report

    return write_report(run_dir, ds, cfg, metrics, progress=progress)


def rebuild_report(run_dir: Path, progress: bool = True, skip_bad: bool = False) -> Path:
    """Recompute RUN/metrics.json and RUN/report.html from a finished (or partial) run."""
    cfg_path = Path(run_dir) / "config.yaml"
    if not cfg_path.is_file():
        raise WisesegError(f"{run_dir}: not a wiseseg run directory (no config.yaml)")
    cfg = _load_yaml(cfg_path)
    ds = open_dataset(cfg["data"]["spec"], skip_bad=skip_bad, progress=progress)
    metrics = collect_metrics(run_dir)
    write_metrics(run_dir, metrics)
    return _write_report(run_dir, ds, cfg, metrics, progress)
