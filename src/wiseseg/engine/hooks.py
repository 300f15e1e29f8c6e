"""Standard hooks: progress bar, metrics log (JSONL + TensorBoard), checkpoints, evaluation."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from torch import nn

from wiseseg.engine.trainer import Hook, Trainer
from wiseseg.io import read_jsonl

log = logging.getLogger(__name__)


class ProgressHook(Hook):
    """A tqdm bar over steps with ETA and the running loss (rank 0 only)."""

    def __init__(self, desc: str, enabled: bool = True):
        self.desc, self.enabled, self.bar = desc, enabled, None
        self._avg: float | None = None

    def before_train(self, trainer: Trainer) -> None:
        if not (self.enabled and trainer.dist.is_main):
            return
        from tqdm import tqdm

        self.bar = tqdm(total=trainer.cfg.max_steps, initial=trainer.step, desc=self.desc,
                        unit="step", dynamic_ncols=True)

    def after_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if self.bar is None:
            return
        loss = logs["loss"]
        self._avg = loss if self._avg is None else 0.9 * self._avg + 0.1 * loss
        self.bar.set_postfix(loss=f"{self._avg:.4f}", epoch=f"{trainer.epoch:.1f}")
        self.bar.update(1)

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLogHook(Hook):
    """Appends averaged training metrics to ``metrics.jsonl`` and TensorBoard scalars.

    On resume, lines past the checkpoint's step (written by the interrupted run after its
    last checkpoint) are dropped so the log matches the replayed steps.
    """

    def __init__(self, every: int = 10, tensorboard: bool = True):
        self.every, self.tensorboard = max(1, every), tensorboard
        self.path: Path | None = None
        self.writer = None
        self._sums: dict[str, float] = {}
        self._n = 0

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:
            return
        self.path = trainer.out_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [rec for rec in read_jsonl(self.path)  # a cut-short last line is dropped
                    if rec.get("step", 0) <= trainer.step]
            self.path.write_text("".join(json.dumps(rec) + "\n" for rec in kept))
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(trainer.out_dir / "tensorboard"),
                                            purge_step=trainer.step + 1)
            except ImportError:  # tensorboard is optional at run time
                log.info("tensorboard not installed; metrics go to metrics.jsonl only")

    def write(self, trainer: Trainer, record: dict[str, float], prefix: str = "train") -> None:
        if self.path is None:
            return
        record = {"step": trainer.step, "epoch": round(trainer.epoch, 4),
                  "time": round(time.time() - trainer.started_at, 2), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if k not in ("step", "epoch", "time") and isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{k}", v, trainer.step)
            self.writer.flush()

    def after_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        for k, v in logs.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._n += 1
        if trainer.step % self.every == 0 or trainer.step == trainer.cfg.max_steps:
            self.write(trainer, {k: v / self._n for k, v in self._sums.items()})
            self._sums, self._n = {}, 0

    def after_train(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()


class CheckpointHook(Hook):
    """Saves ``checkpoints/last.pt`` every ``every`` steps and at the end (rank 0)."""

    def __init__(self, every: int):
        self.every = max(1, every)

    def after_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if trainer.step % self.every == 0 and trainer.step < trainer.cfg.max_steps:
            trainer.save()

    def after_train(self, trainer: Trainer) -> None:
        trainer.save()


class EvalHook(Hook):
    """Runs ``fn(model) -> {name: value}`` every ``every`` steps and at the end; logs it."""

    def __init__(self, fn: Callable[[nn.Module], dict[str, float]], every: int,
                 logger: MetricsLogHook | None = None):
        self.fn, self.every, self.logger = fn, max(1, every), logger
        self.history: list[dict[str, float]] = []

    def _run(self, trainer: Trainer) -> None:
        if not trainer.dist.is_main:
            return
        model = trainer.unwrapped()
        was_training = model.training
        model.eval()
        metrics = self.fn(model)
        model.train(was_training)
        self.history.append({"step": trainer.step, **metrics})
        if self.logger is not None:
            self.logger.write(trainer, {f"eval/{k}": v for k, v in metrics.items()}, "eval")

    def after_step(self, trainer: Trainer, logs: dict[str, float]) -> None:
        if trainer.step % self.every == 0 and trainer.step < trainer.cfg.max_steps:
            self._run(trainer)

    def after_train(self, trainer: Trainer) -> None:
        self._run(trainer)
