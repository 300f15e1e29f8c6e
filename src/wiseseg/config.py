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
    is_file = name.endswith((".yaml", ".yml")) and path.is_file()
    if is_file:
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
        raise ConfigError(f"{name}: a preset must be a mapping, not {_kind(cfg)}")
    check_config(cfg, source=name, complete=is_file)  # a file may be partial
    cfg.setdefault("preset", name)
    return cfg


# ------------------------------------------------------------------ checking settings
#: Settings that must be > 0 (the others that are numbers must be ≥ 0).
_POSITIVE = frozenset({
    "batch_size", "lr", "input_size", "min_size", "max_size", "budget_minutes",
    "max_upscale", "min_input", "max_input", "cam_cells", "object_px", "output_stride",
    "upsample", "peak_window", "window", "max_per_class", "log_every", "checkpoint_every",
    "workers", "top_k", "fpn_channels", "representation_size", "rounds", "proposal_count",
    "contour_width", "max_candidates", "min_epochs", "max_epochs", "box_detections_per_img",
    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
    "assumed_object", "segmenter_class_views",
})
#: Settings that are fractions in [0, 1].
_FRACTION = frozenset({
    "relative", "class_threshold", "min_area_frac", "max_area_frac",
    "warmup_factor", "box_score_thresh", "box_nms_thresh", "mask_threshold",
    "self_training_score", "nms_iou", "balance", "bg_factor", "classifier_share",
    "assumed_object", "momentum", "refine_min_iou",
})
_KIND_WORDS = {"bool": "true or false", "int": "a whole number", "float": "a number",
               "str": "a string", "list": "a list", "dict": "a mapping of settings",
               "auto": "auto", "null": "null"}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if value == "auto":
        return "auto"
    if value is None:
        return "null"
    return {str: "str", list: "list", dict: "dict"}.get(type(value), type(value).__name__)


def _reference() -> dict[str, set[str]]:
    """Dotted key → the kinds of value the built-in presets give it."""
    kinds: dict[str, set[str]] = {}

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            kinds.setdefault(key, set()).add(_kind(v))
            if isinstance(v, dict):
                walk(v, key + ".")

    for name in preset_names():
        text = (resources.files("wiseseg") / "configs" / f"{name}.yaml").read_text()
        walk(yaml.safe_load(text) or {}, "")
    for key in _NULLABLE:
        kinds.setdefault(key, set()).add("null")
    return kinds


#: settings whose null is meaningful although no built-in preset uses it
_NULLABLE = ("peaks.min_score", "peaks.window", "peaks.max_per_class", "proposals.top_k",
             "classifier.bias_weight_decay", "segmenter.bias_weight_decay",
             "segmenter.grad_clip")


def check_setting(key: str, value: Any, reference: dict[str, set[str]] | None = None) -> None:
    """Raise a one-line ConfigError unless ``value`` fits setting ``key`` (dotted): the type
    the built-in presets give it (``auto``/``null`` where one of them uses that) and its
    range (numbers ≥ 0; > 0 or within [0, 1] for the settings named above). Keys the
    presets do not have are not checked."""
    allowed = (reference if reference is not None else _reference()).get(key)
    if allowed is None:
        return
    kind = _kind(value)
    ok = kind in allowed or (kind == "int" and "float" in allowed) or allowed == {"null"} \
        or (kind == "auto" and bool(allowed & {"int", "float", "list"}))  # autoconfig's job
    if not ok:
        words = " or ".join(_KIND_WORDS.get(k, k) for k in sorted(allowed))
        raise ConfigError(f"setting {key}={value!r} must be {words}")
    name = key.rsplit(".", 1)[-1]
    if kind in ("int", "float"):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"setting {key}={value!r} must be a finite number")
        if name in _POSITIVE and value <= 0:
            raise ConfigError(f"setting {key}={value!r} must be > 0")
        if value < 0:
            raise ConfigError(f"setting {key}={value!r} must be ≥ 0")
        if name in _FRACTION and value > 1:
            raise ConfigError(f"setting {key}={value!r} must be within [0, 1]")
    elif kind == "list":
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 \
                    or v == float("inf"):
                raise ConfigError(f"setting {key}={value!r}: {v!r} is not a number ≥ 0")
    elif kind == "dict":
        for k, v in value.items():
            check_setting(f"{key}.{k}", v, reference)


def check_config(cfg: Mapping, source: str = "config", complete: bool = False) -> None:
    """Check every setting of ``cfg`` (:func:`check_setting`); with ``complete``, also that
    no section or setting of the built-in presets is missing (a partial preset file)."""
    ref = _reference()
    if complete:
        missing = [k for k in ref if not _has(cfg, k)
                   and (k.count(".") == 0 or _has(cfg, k.rsplit(".", 1)[0]))]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ConfigError(f"{source}: preset lacks {', '.join(missing[:5])}{more}; start "
                              f"from a copy of the built-in cpu.yaml or paper.yaml "
                              f"(wiseseg/configs/)")
    for k, v in cfg.items():
        check_setting(str(k), v, ref)
    check_training_length(cfg)


def check_training_length(cfg: Mapping) -> None:
    """A trained stage with ``epochs: 0`` and ``steps: 0`` would train for no step at all."""
    for sec in ("classifier", "segmenter"):
        c = cfg.get(sec)
        if isinstance(c, Mapping) and c.get("epochs") == 0 and not c.get("steps"):
            raise ConfigError(f"setting {sec}.epochs=0 with {sec}.steps=0 trains nothing; "
                              f"give {sec}.epochs > 0 or {sec}.steps > 0")


def _has(cfg: Mapping, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


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
                check_setting(key, value)  # type and range now, not after minutes of work
                node[part] = value
            else:
                node = node[part]
    check_training_length(out)
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
