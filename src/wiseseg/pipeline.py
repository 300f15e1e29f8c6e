"""``wiseseg run``: the WISE stages in order, each cached under RUN/<stage>/ and resumable.

Every stage directory holds ``stage.json``: the stage's hash (its config sections, the
data, its upstream stages' hashes and the package version), inputs, start/end times, seconds
and a summary. On a rerun a stage whose manifest is complete with the same hash is skipped;
one with the same hash but incomplete (interrupted) resumes (the training engine continues
from its checkpoint, the proposal cache from its finished files); one whose hash changed is
cleared and recomputed — so changing a setting reruns exactly the stages that depend on it.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wiseseg import __version__
from wiseseg.allocator import release_freed_memory
from wiseseg.config import config_hash, save_config
from wiseseg.data.dataset import Dataset
from wiseseg.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

MANIFEST = "stage.json"


@dataclass(frozen=True)
class Stage:
    """A pipeline step: ``fn(ctx, out_dir) -> summary dict``."""

    name: str
    fn: Callable[[RunContext, Path], dict]
    deps: tuple[str, ...] = ()
    config: tuple[str, ...] | Callable[[RunContext], tuple[str, ...]] = ()
    """The top-level config sections it reads (or a function of the run giving them, for a
    section read only under some setting)."""
    ignores: tuple[str, ...] | Callable[[RunContext], tuple[str, ...]] = ()
    """``section.key`` settings of those sections that it does not read (a change of them does
    not rerun it), or a function of the run giving them."""
    settings: tuple[str, ...] = ()
    """Single ``section.key`` settings of other sections that it reads."""
    enabled: Callable[[RunContext], bool] = lambda ctx: True


@dataclass
class RunContext:
    cfg: dict
    dataset: Dataset
    data_spec: str
    run_dir: Path
    progress: bool = True
    reference: bool = True
    hashes: dict[str, str] = field(default_factory=dict)
    summaries: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def train_split(self) -> str:
        return self.cfg["data"]["train_split"]

    @property
    def val_split(self) -> str:
        return self.cfg["data"]["val_split"]

    def has_val_gt(self) -> bool:
        return self.val_split in self.dataset.splits and \
            self.dataset.has_ground_truth(self.val_split)


def data_fingerprint(ds: Dataset, splits: Sequence[str]) -> dict:
    """What identifies the data a run used: layout, classes, image ids and sizes."""
    return {"layout": ds.layout, "root": str(ds.root), "classes": list(ds.classes),
            "splits": {s: config_hash([(r.id, r.name, r.height, r.width, sorted(r.labels))
                                       for r in ds.weak(s).records])
                       for s in splits if s in ds.splits}}


def stage_sections(stage: Stage, ctx: RunContext) -> tuple[str, ...]:
    return stage.config(ctx) if callable(stage.config) else stage.config


def stage_config(stage: Stage, ctx: RunContext) -> dict:
    """The settings a stage reads: its sections, less the keys it ignores."""
    out = {k: ctx.cfg.get(k) for k in stage_sections(stage, ctx)}
    for dotted in (stage.ignores(ctx) if callable(stage.ignores) else stage.ignores):
        section, _, key = dotted.partition(".")
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k != key}
    for dotted in stage.settings:
        section, _, key = dotted.partition(".")
        out[dotted] = (ctx.cfg.get(section) or {}).get(key)
    return out


def stage_hash(stage: Stage, ctx: RunContext, data_fp: dict) -> str:
    return config_hash({
        "stage": stage.name, "version": __version__, "data": data_fp,
        "config": stage_config(stage, ctx),
        "seed": ctx.cfg.get("seed"), "deps": {d: ctx.hashes.get(d) for d in stage.deps},
    })


def _read_manifest(d: Path) -> dict | None:
    p = d / MANIFEST
    if not p.is_file():
        return None
    try:
        m = read_json(p, "stage manifest")
    except Exception:  # an unreadable manifest just means: recompute
        return None
    return m if isinstance(m, dict) else None


def run_stages(stages: Sequence[Stage], ctx: RunContext) -> RunContext:
    """Run ``stages`` in order with caching (see the module docstring)."""
    data_fp = data_fingerprint(ctx.dataset, [ctx.train_split, ctx.val_split])
    for stage in stages:
        if not stage.enabled(ctx):
            log.info("[%s] not applicable, skipped", stage.name)
            continue
        h = stage_hash(stage, ctx, data_fp)
        ctx.hashes[stage.name] = h
        d = ctx.stage_dir(stage.name)
        m = _read_manifest(d)
        if m and m.get("hash") == h and m.get("complete"):
            ctx.summaries[stage.name] = m.get("summary", {})
            ctx.timings[stage.name] = float(m.get("seconds", 0.0))
            ctx.skipped.append(stage.name)
            log.info("[%s] up to date, skipped", stage.name)
            continue
        if d.exists() and (m is None or m.get("hash") != h):
            shutil.rmtree(d)  # settings changed: stale outputs must not be resumed
        resumed = d.exists()
        d.mkdir(parents=True, exist_ok=True)
        started = time.time()
        manifest = {"stage": stage.name, "hash": h, "complete": False,
                    "inputs": {dep: ctx.hashes.get(dep) for dep in stage.deps},
                    "config": stage_config(stage, ctx),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "version": __version__}
        previous = float(m.get("seconds", 0.0)) if (m and resumed) else 0.0
        atomic_write_json(d / MANIFEST, manifest, indent=2)
        log.info("[%s] %s", stage.name, "resuming" if resumed else "running")
        summary = stage.fn(ctx, d) or {}
        seconds = previous + time.time() - started
        manifest.update(complete=True, finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                        seconds=round(seconds, 2), summary=summary)
        atomic_write_json(d / MANIFEST, manifest, indent=2)
        ctx.summaries[stage.name] = summary
        ctx.timings[stage.name] = seconds
        ctx.ran.append(stage.name)
        gc.collect()  # this stage's objects and temporaries go before the next one's
        release_freed_memory()
    return ctx


def save_run_config(ctx: RunContext) -> None:
    save_config(ctx.run_dir / "config.yaml", {**ctx.cfg, "data": {**ctx.cfg["data"],
                                                                    "spec": ctx.data_spec}})


def stage_summary(ctx: RunContext) -> dict[str, Any]:
    return {"ran": ctx.ran, "skipped": ctx.skipped,
            "seconds": {k: round(v, 1) for k, v in ctx.timings.items()}}
