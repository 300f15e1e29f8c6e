"""The training engine: one loop with hooks, serving the classifier and Mask R-CNN stages.

The loop is step-based. Each step: fetch the step's batch (see :mod:`wiseseg.engine.data`),
``step_fn(model, batch, device) -> {"loss": total, ...parts}``, backward (AMP scaler on
CUDA), optional gradient clipping, optimizer and scheduler steps, then the hooks. Checkpoints
hold everything needed to continue exactly where a killed run stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wiseseg.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from wiseseg.engine.data import StepBatches, StepSchedule, TrainData
from wiseseg.engine.distributed import DistInfo, all_reduce_mean
from wiseseg.errors import WisesegError

StepFn = Callable[[nn.Module, Any, torch.device], dict[str, torch.Tensor]]


@dataclass
class TrainerConfig:
    """Loop settings (the optimizer and schedule are built by the stage)."""

    max_steps: int
    batch_size: int
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    grad_clip: float | None = None
    amp: bool = True
    num_workers: int = 0


class Hook:
    """Extension points; ``trainer.step`` counts finished steps."""

    def before_train(self, trainer: Trainer) -> None: ...

    def after_step(self, trainer: Trainer, logs: dict[str, float]) -> None: ...

    def after_train(self, trainer: Trainer) -> None: ...


@dataclass
class Trainer:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    data: TrainData
    step_fn: StepFn
    cfg: TrainerConfig
    out_dir: Path
    device: torch.device
    hooks: Sequence[Hook] = ()
    config: dict = field(default_factory=dict)
    dist: DistInfo = field(default_factory=DistInfo)
    step: int = 0
    start_step: int = 0
    started_at: float = 0.0

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.use_amp = bool(self.cfg.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.schedule = StepSchedule(len(self.data), self.cfg.batch_size, self.cfg.seed,
                                     self.dist.rank, self.dist.world_size)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    @property
    def epoch(self) -> float:
        return self.step / self.schedule.steps_per_epoch

    def unwrapped(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.unwrapped().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": rng_state(),
            "config": self.config,
        }

    def save(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.checkpoint_path, self.state_dict())

    def try_resume(self) -> bool:
        """Continue from ``checkpoints/last.pt`` when it exists; returns whether it did."""
        if not self.checkpoint_path.exists():
            return False
        ck = load_checkpoint(self.checkpoint_path)
        try:
            self.unwrapped().load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
            self.scheduler.load_state_dict(ck["scheduler"])
            self.scaler.load_state_dict(ck["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise WisesegError(
                f"{self.checkpoint_path}: does not fit this model/config "
                f"({str(e).splitlines()[0]}); use a new --out or delete it") from None
        set_rng_state(ck["rng"])
        self.step = self.start_step = int(ck["step"])
        return True

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = True) -> nn.Module:
        if resume:
            self.try_resume()
        self.started_at = time.time()
        for h in self.hooks:
            h.before_train(self)
        batches = StepBatches(self.data, self.schedule, self.step, self.cfg.max_steps)
        # A private generator: creating the loader's iterator would otherwise draw from the
        # global RNG, shifting dropout / RPN sampling after a resume.
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, shuffle=False, num_workers=self.cfg.num_workers,
            persistent_workers=False, generator=torch.Generator().manual_seed(self.cfg.seed),
        )
        self.model.train()
        for batch in loader:
            logs = self._train_step(batch)
            self.step += 1
            for h in self.hooks:
                h.after_step(self, logs)
        for h in self.hooks:
            h.after_train(self)
        return self.unwrapped()

    def _train_step(self, batch: Any) -> dict[str, float]:
        with torch.autocast(self.device.type, enabled=self.use_amp):
            losses = self.step_fn(self.model, batch, self.device)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise WisesegError(f"training diverged: loss is {loss.item()} at step {self.step + 1}"
                               f" (lower the learning rate or enable gradient clipping)")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logs = {k: all_reduce_mean(float(v.detach()), self.dist, self.device)
                for k, v in losses.items()}
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        return logs


def warmup_schedule(total_steps: int, warmup_steps: int, kind: str = "cosine",
                    milestones: Sequence[float] = (0.75,), gamma: float = 0.1,
                    warmup_factor: float = 0.001) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up, then ``cosine``, ``step`` or ``constant``.

    ``milestones`` are fractions of ``total_steps`` for the ``step`` schedule.
    """
    if kind not in ("cosine", "step", "constant"):
        raise WisesegError(f"unknown lr schedule {kind!r} (cosine, step, constant)")

    def factor(step: int) -> float:
        if step < warmup_steps:
            a = step / max(1, warmup_steps)
            return warmup_factor * (1 - a) + a
        if kind == "constant":
            return 1.0
        if kind == "step":
            return gamma ** sum(step >= m * total_steps for m in milestones)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor
