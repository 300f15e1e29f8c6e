"""A tiny training run through the real engine, for the resume and torchrun tests.

usage: python engine_script.py OUT STEPS [--sleep S] [--dropout]
Writes OUT/rank<r>.pt with the final weights of each rank.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wiseseg.engine.distributed import cleanup, init_distributed
from wiseseg.engine.hooks import CheckpointHook, MetricsLogHook
from wiseseg.engine.reproducibility import seed_everything, set_deterministic
from wiseseg.engine.trainer import Hook, Trainer, TrainerConfig, warmup_schedule


class Noise:
    """32 samples of 1×8×8 noise with a label; augmentation draws from the sample RNG."""

    def __len__(self):
        return 32

    def load(self, index, rng):
        base = np.random.default_rng(index).normal(size=(1, 8, 8)).astype(np.float32)
        x = base + rng.normal(scale=0.1, size=base.shape).astype(np.float32)
        return torch.from_numpy(x), torch.tensor(float(index % 2))

    def collate(self, samples):
        xs, ys = zip(*samples)
        return torch.stack(xs), torch.stack(ys)


class Sleep(Hook):
    def __init__(self, seconds):
        self.seconds = seconds

    def after_step(self, trainer, logs):
        time.sleep(self.seconds)


def step_fn(model, batch, device):
    x, y = batch
    logits = model(x.to(device)).squeeze(1)
    return {"loss": nn.functional.binary_cross_entropy_with_logits(logits, y.to(device))}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("steps", type=int)
    ap.add_argument("--sleep", type=float, default=0.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    dist = init_distributed(device)
    seed_everything(3)
    set_deterministic(True)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(),
                          nn.Linear(4 * 36, 1))
    if dist.enabled:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_schedule(args.steps, 3))
    trainer = Trainer(model=model, optimizer=opt, scheduler=sched, data=Noise(),
                      step_fn=step_fn,
                      cfg=TrainerConfig(max_steps=args.steps, batch_size=4, seed=5,
                                        checkpoint_every=2),
                      out_dir=Path(args.out), device=device,
                      hooks=[MetricsLogHook(every=1, tensorboard=False), CheckpointHook(2),
                             Sleep(args.sleep)],
                      dist=dist)
    trainer.fit(resume=True)
    torch.save(trainer.unwrapped().state_dict(), Path(args.out) / f"rank{dist.rank}.pt")
    cleanup(dist)


if __name__ == "__main__":
    main()
