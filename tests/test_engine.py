"""The engine: exact resume after SIGKILL, two-rank torchrun, atomic checkpoints, schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wiseseg.engine.checkpoint import load_checkpoint, save_checkpoint
from wiseseg.engine.data import StepSchedule
from wiseseg.engine.trainer import warmup_schedule
from wiseseg.errors import WisesegError

SCRIPT = Path(__file__).with_name("engine_script.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(out: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(out), str(steps), *extra],
                          env=ENV, capture_output=True, text=True, timeout=300)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    steps = 14
    ref = _run(tmp_path / "ref", steps)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(out), str(steps), "--sleep", "0.3"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 6:
            break
        time.sleep(0.05)
    time.sleep(0.4)  # land somewhere between checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["step"]
    assert 6 <= killed_at < steps
    assert not (out / "rank0.pt").exists()
    assert not list(ckpt.parent.glob("*.tmp"))  # no half-written checkpoint left over

    resumed = _run(out, steps)
    assert resumed.returncode == 0, resumed.stderr
    assert _same(_weights(tmp_path / "ref" / "rank0.pt"), _weights(out / "rank0.pt"))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    steps_logged = [json.loads(ln)["step"] for ln in lines]
    assert steps_logged == list(range(1, steps + 1))  # replayed steps are not logged twice


def test_torchrun_two_ranks_end_identical(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", str(SCRIPT), str(tmp_path), "6"]
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    w0, w1 = _weights(tmp_path / "rank0.pt"), _weights(tmp_path / "rank1.pt")
    assert _same(w0, w1)
    single = _run(tmp_path / "single", 6)
    assert single.returncode == 0
    assert not _same(w0, _weights(tmp_path / "single" / "rank0.pt"))  # really saw other data
    assert (tmp_path / "checkpoints" / "last.pt").exists()  # rank 0 saved


def test_step_schedule_shards_and_is_deterministic():
    a = StepSchedule(10, 2, seed=1, rank=0, world_size=2)
    b = StepSchedule(10, 2, seed=1, rank=1, world_size=2)
    assert a.steps_per_epoch == 2
    for step in range(6):
        ia, ib = a.indices(step), b.indices(step)
        assert len(ia) == len(ib) == 2 and not set(ia) & set(ib)
    assert StepSchedule(10, 2, seed=1).indices(3) == StepSchedule(10, 2, seed=1).indices(3)
    tiny = StepSchedule(3, 4, seed=0)
    assert len(tiny.indices(0)) == 4 and set(tiny.indices(0)) == {0, 1, 2}
    with pytest.raises(ValueError):
        StepSchedule(0, 2, seed=0)


def test_checkpoint_roundtrip_and_errors(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(2)}, "step": 3,
                                            "config": {"a": [1, 2], "b": None}})
    assert load_checkpoint(p)["step"] == 3
    with pytest.raises(WisesegError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(WisesegError, match="cannot load"):
        load_checkpoint(tmp_path / "junk.pt")


def test_warmup_then_cosine():
    f = warmup_schedule(100, 10)
    assert f(0) == pytest.approx(0.001) and f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=1e-6) and f(100) == pytest.approx(0.0, abs=1e-9)
    step = warmup_schedule(100, 0, "step", milestones=(0.5,))
    assert step(49) == 1.0 and step(50) == pytest.approx(0.1)


def test_bias_rules_and_warmup_factor():
    from wiseseg.engine.optim import build_optimizer, build_scheduler

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    net[0].weight.requires_grad_(False)  # frozen parameters are left out
    cfg = {"lr": 0.01, "weight_decay": 1e-4, "momentum": 0.9, "optimizer": "sgd",
           "warmup_steps": 10, "schedule": "constant"}
    plain = build_optimizer([{"params": list(net.named_parameters())}], cfg)
    assert len(plain.param_groups) == 1 and len(plain.param_groups[0]["params"]) == 3
    mrcnn = build_optimizer([{"params": list(net.named_parameters()), "lr_mult": 0.5}],
                            {**cfg, "bias_lr_mult": 2.0, "bias_weight_decay": 0.0})
    weights, biases = mrcnn.param_groups
    assert [p.shape for p in weights["params"]] == [(2, 4)]
    assert len(biases["params"]) == 2
    assert weights["lr"] == pytest.approx(0.005) and biases["lr"] == pytest.approx(0.01)
    assert weights["weight_decay"] == 1e-4 and biases["weight_decay"] == 0.0
    sched = build_scheduler(mrcnn, 100, {**cfg, "warmup_factor": 1 / 3})
    assert weights["lr"] == pytest.approx(0.005 / 3)  # maskrcnn-benchmark starts at 1/3
    for _ in range(10):
        mrcnn.step()
        sched.step()
    assert weights["lr"] == pytest.approx(0.005)


@pytest.mark.parametrize("rank, main", [(None, True), ("0", True), ("1", False), ("3", False)])
def test_only_rank_zero_reports_what_a_command_did(monkeypatch, rank, main):
    from wiseseg.engine.distributed import launched_as_main

    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    assert launched_as_main() is main
