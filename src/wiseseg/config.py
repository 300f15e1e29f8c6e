"""Presets (YAML under ``configs/``) and ``key=value`` overrides.

A preset is a nested mapping whose leaves fill the keyword arguments of the builders. A
command line override ``classifier.batch_size=8`` replaces one leaf; its value is parsed as
YAML (``true``, ``0.01``, ``[1, 2]``). Only keys that exist in the preset can be overridden,
so a typo is an error instead of a silently ignored setting. The merged configuration is
saved with every run.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from wiseseg.errors import ConfigError
from wiseseg.io import atomic_write_text


def preset_names() -> list[str]:
    files = resources.files("wiseseg") / "configs"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    """The preset ``name`` (``cpu``, ``paper``) or a YAML file path."""
    path = Path(name)
    if name.endswith((".yaml", ".yml")) and path.is_file():
        text = path.read_text()
    else:
        res = resources.files("wiseseg") / "configs" / f"{name}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {name!r} (known: {', '.join(preset_names())}, "
                              "or a path to a .yaml file)")
        text = res.read_text()
    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{name}: a preset must be a mapping")
    cfg.setdefault("preset", name)
    return cfg


def apply_overrides(cfg: Mapping, overrides: Iterable[str]) -> dict:
    """A copy of ``cfg`` with ``dotted.key=value`` overrides applied (values parsed as YAML)."""
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node: Any = out
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:i]) or "the top level"
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                raise ConfigError(f"unknown setting {key!r}: no {part!r} under {where} "
                                  f"(known: {known})")
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return out


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able object (dict key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_config(path: str | Path, cfg: Mapping) -> None:
    atomic_write_text(path, yaml.safe_dump(dict(cfg), sort_keys=False))


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: config must be a mapping")
    return cfg
