"""Checkpoints: written atomically, loadable with ``torch.load(..., weights_only=True)``.

A training checkpoint holds model, optimizer, scheduler and AMP scaler states, the step, the
RNG states (torch CPU/CUDA, numpy, Python) and the merged config — everything an exact resume
needs. Only tensors and plain Python containers are stored, so the safe loader accepts them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wiseseg.errors import WisesegError
from wiseseg.io import atomic_write, load_weights_only


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """``torch.save`` into a temp file, then ``os.replace``: never a half-written checkpoint."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load with ``weights_only=True``; a missing or unreadable file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise WisesegError(f"{path}: {what} not found")
    obj = load_weights_only(path, what)
    if not isinstance(obj, dict):
        raise WisesegError(f"{path}: not a wiseseg {what} (expected a dict)")
    return obj


def rng_state() -> dict[str, Any]:
    """All global RNG states as tensors / plain lists (safe for ``weights_only`` loading)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1])},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), None))


def save_model(path: str | Path, kind: str, model: torch.nn.Module, cfg: dict, classes,
               extra: dict | None = None) -> Path:
    """A trained model for inference: weights, the settings that rebuild it, class names."""
    return save_checkpoint(path, {"kind": kind, "model": model.state_dict(),
                                  "config": dict(cfg), "classes": list(classes),
                                  **(extra or {})})


def load_model(path: str | Path, kind: str, what: str, build) -> tuple:
    """``(model in eval mode on the CPU, settings, class names, other saved keys)``.

    ``build(cfg, num_classes)`` rebuilds the architecture (without downloading weights); a
    checkpoint of another kind or with mismatched weights is a one-line error.
    """
    ck = load_checkpoint(path, f"{what} checkpoint")
    if ck.get("kind") != kind:
        raise WisesegError(f"{path}: not a wiseseg {what} checkpoint (kind={ck.get('kind')!r})")
    lacks = [k for k in ("model", "config", "classes") if k not in ck]
    if lacks:
        raise WisesegError(f"{path}: {what} checkpoint lacks its {', '.join(lacks)} (a "
                           f"training checkpoint such as checkpoints/last.pt is not a model: "
                           f"use the model.pt that training writes)")
    cfg, classes = ck["config"], list(ck["classes"])
    if not isinstance(cfg, dict) or not all(isinstance(c, str) for c in classes):
        raise WisesegError(f"{path}: {what} checkpoint has a malformed config or class list")
    from wiseseg.config import check_saved_config

    check_saved_config(cfg, what, path)  # as an override: no size, NaN or typo reaches build
    check_finite(ck["model"], path, what)
    model = build(cfg, len(classes))
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise WisesegError(f"{path}: weights do not fit the model ({str(e).splitlines()[0]})"
                           ) from None
    extras = {k: v for k, v in ck.items() if k not in ("model", "config", "classes", "kind")}
    return model.eval(), cfg, classes, extras


def check_finite(state, path: str | Path, what: str) -> None:
    """Every floating tensor of the state dict ``state`` finite: a NaN weight would make
    every prediction NaN, dropped by the score threshold, and a run report zero objects
    without an error."""
    if not isinstance(state, dict):
        raise WisesegError(f"{path}: {what} checkpoint's model is not a state dict")
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and not bool(torch.isfinite(value).all()):
            kind = "NaN" if bool(torch.isnan(value).any()) else "infinite"
            raise WisesegError(f"{path}: {what} checkpoint's tensor {key!r} holds {kind} "
                               f"values (training diverged, or a corrupt file); use another "
                               f"checkpoint")
