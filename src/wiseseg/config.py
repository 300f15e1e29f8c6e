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
        text = _read_preset_file(path)
    else:
        res = resources.files("wiseseg") / "configs" / f"{name}.yaml"
        if not res.is_file():
            raise ConfigError(f"unknown preset {name!r} (known: {', '.join(preset_names())}, "
                              "or a path to a .yaml file)")
        text = res.read_text()
    try:
        cfg = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{name}: invalid YAML ({yaml_error_line(e)})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{name}: a preset must be a mapping, not {_kind(cfg)}")
    check_config(cfg, source=name, complete=is_file)  # a file may be partial
    cfg.setdefault("preset", name)
    return cfg


def _read_preset_file(path: Path) -> str:
    """A preset file's text: UTF-8 (a BOM is accepted), else a one-line error with the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the preset ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                          "a preset is a YAML text file") from None


def yaml_error_line(e: yaml.YAMLError) -> str:
    """PyYAML's multi-line message (context, problem, a quoted excerpt) as one line: the
    problem and where it is."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem:
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = getattr(e, "context", None)
        return " ".join(f"{where}{problem}{f' ({context})' if context else ''}".split())
    return " ".join(str(e).split())


# ------------------------------------------------------------------ checking settings
#: Settings that must be > 0 (the others that are numbers must be ≥ 0).
_POSITIVE = frozenset({
    "batch_size", "lr", "input_size", "min_size", "max_size", "budget_minutes", "max_minutes",
    "max_upscale", "min_input", "max_input", "cam_cells", "object_px", "output_stride",
    "upsample", "peak_window", "window", "max_per_class", "log_every", "checkpoint_every",
    "workers", "top_k", "fpn_channels", "representation_size", "rounds", "proposal_count",
    "contour_width", "max_candidates", "min_epochs", "max_epochs", "box_detections_per_img",
    "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test",
    "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image",
    "assumed_object", "segmenter_class_views", "classifier_class_views",
    "classifier_min_epochs",
})
#: Settings that are fractions in [0, 1].
_FRACTION = frozenset({
    "relative", "class_threshold", "min_area_frac", "max_area_frac",
    "warmup_factor", "box_score_thresh", "box_nms_thresh", "mask_threshold",
    "self_training_score", "nms_iou", "balance", "bg_factor", "classifier_share",
    "assumed_object", "momentum", "refine_min_iou", "cam_threshold",
})
#: Settings with an upper bound: the stem and four pyramid stages are all a backbone has;
#: a class is given at most one peak it did not earn (``peaks.min_per_class``).
_AT_MOST = {"frozen_stages": 4, "min_per_class": 1}
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
    kinds.setdefault("device", set()).add("str")  # the presets say auto; cpu, cuda:1 are fine
    kinds.setdefault("segmenter.reference_epochs", set()).add("int")  # auto / null in presets
    return kinds


#: settings whose null is meaningful although no built-in preset uses it
_NULLABLE = ("peaks.min_score", "peaks.window", "peaks.max_per_class", "proposals.top_k",
             "classifier.bias_weight_decay", "segmenter.bias_weight_decay",
             "segmenter.grad_clip")

#: The largest image side (px) a size setting may ask for: the classifier's input, Mask
#: R-CNN's min/max size and the ``auto`` range. Beyond it one image's activations would take
#: tens of gigabytes (``classifier.input_size=1000000`` is a memory error, not a setting).
MAX_SIDE = 4096
_SIDES = frozenset({"classifier.input_size", "segmenter.min_size", "segmenter.max_size",
                    "auto.min_input", "auto.max_input"})
#: Settings that are fractions in [0, 1] where others of the same name are not (scores are
#: probabilities; a colour jitter s scales by 1 ± s, so s > 1 would give negative factors).
_FRACTION_KEYS = frozenset({"predict.min_score", "evaluate.min_score",
                            "classifier.color_jitter", "segmenter.color_jitter",
                            "classifier.class_balance"})
#: Settings that take one of these words (each the list of the code that reads it;
#: tests/test_hostile_input_more.py keeps them equal). ``device`` and ``proposals.method``
#: have rules of their own (:func:`_device_problem`, :func:`method_problem`).
_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
              "resnet18", "resnet34", "resnet50", "resnet101")  # wiseseg.models.names
CHOICES: dict[str, tuple[str, ...]] = {
    "classifier.backbone": _BACKBONES, "segmenter.backbone": _BACKBONES,
    "classifier.pretrained": ("imagenet", "none"), "segmenter.pretrained": ("imagenet", "none"),
    "classifier.feature": ("c2", "c3", "c4", "c5", "c3+c4", "c4+c5", "c3+c4+c5"),  # PeakCAM
    "classifier.stimulation": ("mean", "prm"),
    "classifier.cam_geometry": ("uniform", "receptive", "corners"),
    "classifier.optimizer": ("sgd", "adamw"), "segmenter.optimizer": ("sgd", "adamw"),
    "classifier.schedule": ("cosine", "step", "constant"),
    "segmenter.schedule": ("cosine", "step", "constant"),
    "pseudo.mode": ("sample", "argmax", "fixed"), "segmenter.mode": ("sample", "argmax", "fixed"),
    "segmenter.roi_align_backward": ("sparse", "torchvision"),
    "prm.score": ("peak", "class", "retrieval"),
    "pseudo.partial_labels": ("predict", "skip"),  # wiseseg.pseudo.partial.MODES
    "segmenter.unlabelled_classes": ("background", "ignore"),  # segmenter.data.UNLABELLED_MODES
    "classifier.unlabelled_classes": ("ignore", "absent"),  # classifier.train.UNLABELLED_MODES
}
#: List settings: (fewest, most entries, smallest and largest entry, whole numbers only).
_LISTS: dict[str, tuple[int, int | None, float, float, bool]] = {
    "classifier.head_channels": (0, None, 1, 65536, True),
    "segmenter.mask_layers": (1, None, 1, 65536, True),
    "segmenter.anchor_sizes": (5, 5, 1, MAX_SIDE, True),  # one per FPN level (4 + pool)
    "classifier.scale": (2, 2, 1e-3, 1.0, False),  # [smallest, largest] shrink
    "peaks.scales": (1, None, 0.1, 4.0, False),  # × input size
}
_BUILTIN_QUALITIES = ("fast", "accurate")  # wiseseg.proposals.builtin.QUALITIES
_SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h", "custom")  # wiseseg.proposals.sam.MODEL_TYPES
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def _device_problem(value: str) -> str | None:
    kind, sep, index = value.partition(":")
    if value == "auto" or (kind in _DEVICE_TYPES and (not sep or index.isdigit())):
        return None
    return "is not a device (use auto, cpu or cuda[:N])"


def method_problem(spec: str) -> str | None:
    """Why ``spec`` is no proposal method (see :func:`wiseseg.proposals.build_proposal_source`),
    or None: the kind, a builtin quality, a SAM model type, and that the folder (``mcg:``,
    ``cob:``, ``json:``) or checkpoint (``sam:``) it names exists — checked before any work,
    without importing the proposal code."""
    kind, sep, arg = spec.partition(":")
    if kind == "builtin":
        if sep and arg not in _BUILTIN_QUALITIES:
            return f"unknown builtin quality {arg!r} (known: {', '.join(_BUILTIN_QUALITIES)})"
        return None
    if kind in ("mcg", "cob", "json"):
        if not arg:
            return f"needs the folder of the proposal files: {kind}:DIR"
        folder = Path(arg).expanduser()
        if not folder.is_dir():
            return f"proposal folder {arg!r} " + ("is not a folder" if folder.exists()
                                                  else "does not exist")
        return None
    if kind == "sam":
        model_type, sep2, path = arg.partition(":")
        if sep2 and model_type.startswith("vit_") and model_type not in _SAM_MODEL_TYPES:
            return (f"unknown SAM model type {model_type!r} (known: "
                    f"{', '.join(_SAM_MODEL_TYPES)})")
        if not (sep2 and model_type in _SAM_MODEL_TYPES and path):
            path = arg
        if not path:
            return "needs the checkpoint: sam:CHECKPOINT or sam:MODEL_TYPE:CHECKPOINT"
        if not Path(path).expanduser().is_file():
            return f"SAM checkpoint {path!r} does not exist"
        return None
    return ("not a proposal method (accepted: builtin, builtin:fast, builtin:accurate, "
            "mcg:DIR, cob:DIR, json:DIR, sam:CHECKPOINT)")


def _value_problem(key: str, value: Any) -> str | None:
    """The rules beyond type and sign for setting ``key``: words from a list, sizes ≤
    :data:`MAX_SIDE`, fractions by full key, list lengths and entries, methods, devices."""
    if isinstance(value, str) and value not in ("auto",):
        if key in CHOICES and value not in CHOICES[key]:
            return f"must be one of {', '.join(CHOICES[key])}"
        if key == "proposals.method":
            problem = method_problem(value)
            return f": {problem}" if problem else None
        if key == "device":
            return _device_problem(value)
        if key == "data.negatives" and not Path(value).expanduser().is_dir():
            return ": " + ("is not a folder" if Path(value).expanduser().exists()
                           else "the negatives folder does not exist")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if key in _SIDES and value > MAX_SIDE:
            return f"is larger than {MAX_SIDE} px, the largest image side wiseseg works at"
        if key in _FRACTION_KEYS and value > 1:
            return "must be within [0, 1]"
    if isinstance(value, list) and key in _LISTS:
        fewest, most, lo, hi, whole = _LISTS[key]
        if len(value) < fewest or (most is not None and len(value) > most):
            n = (f"exactly {fewest}" if fewest == most else f"at least {fewest}"
                 if most is None else f"{fewest} … {most}")
            return f"needs {n} {'entry' if n.endswith(' 1') else 'entries'}, got {len(value)}"
        for v in value:
            if (whole and not isinstance(v, int)) or not lo <= v <= hi:
                kind = "whole numbers" if whole else "numbers"
                return f"entry {v!r} is outside its range: {kind} {lo:g} … {hi:g}"
        if key == "classifier.scale" and value[0] > value[1]:
            return "needs [smallest, largest] with smallest ≤ largest"
    return None


#: Pairs that must be ordered: (smaller, larger), dotted.
_ORDERED = (("auto.min_input", "auto.max_input"), ("auto.min_epochs", "auto.max_epochs"),
            ("segmenter.min_size", "segmenter.max_size"),
            ("pseudo.min_area_frac", "pseudo.max_area_frac"))


def check_consistency(cfg: Mapping) -> None:
    """Settings that are fine alone but not together: each pair of :data:`_ORDERED` with
    numbers in both places must be in order; a ``pseudo.mode`` other than the default
    ``sample`` must equal ``segmenter.mode`` (the proposal of a peak is drawn when Mask R-CNN
    trains, by ``segmenter.mode``; ``pseudo.mode`` is only recorded in the pseudo-label file,
    so ``pseudo.mode=argmax`` alone would be a silently ignored setting)."""
    for small, large in _ORDERED:
        a, b = _get(cfg, small), _get(cfg, large)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)) \
                and a > b:
            raise ConfigError(f"setting {small}={a!r} is larger than {large}={b!r}; "
                              f"{small} must be ≤ {large}")
    pm, sm = _get(cfg, "pseudo.mode"), _get(cfg, "segmenter.mode")
    if isinstance(pm, str) and isinstance(sm, str) and pm != sm and pm != "sample":
        raise ConfigError(f"setting pseudo.mode={pm!r} differs from segmenter.mode={sm!r}: "
                          f"the proposal of each peak is drawn when Mask R-CNN trains, by "
                          f"segmenter.mode; set segmenter.mode={pm} (and pseudo.mode alike)")


def _get(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


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
        if name in _AT_MOST and value > _AT_MOST[name]:
            raise ConfigError(f"setting {key}={value!r} must be at most {_AT_MOST[name]}")
    elif kind == "list":
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 \
                    or v == float("inf"):
                raise ConfigError(f"setting {key}={value!r}: {v!r} is not a number ≥ 0")
    elif kind == "dict":
        for k, v in value.items():
            check_setting(f"{key}.{k}", v, reference)
        return
    problem = _value_problem(key, value)
    if problem:
        raise ConfigError(f"setting {key}={value!r}{'' if problem[0] == ':' else ' '}{problem}")


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
        unknown = [k for k in _dotted_keys(cfg) if k not in ref and k not in _RECORDED]
        if unknown:  # a typo (classifier.lrr) would be a silently ignored setting
            section, _, leaf = unknown[0].rpartition(".")
            known = sorted(k.rpartition(".")[2] for k in ref
                           if k.rpartition(".")[0] == section)
            raise ConfigError(f"{source}: unknown setting {unknown[0]!r}: no {leaf!r} under "
                              f"{section or 'the top level'} (known: {', '.join(known)})")
    for k, v in cfg.items():
        check_setting(str(k), v, ref)
    check_consistency(cfg)
    check_training_length(cfg)


#: Keys a run's config.yaml records besides the settings (it may serve as a preset file).
_RECORDED = frozenset({"preset", "data.spec"})


def _dotted_keys(cfg: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in cfg.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, Mapping):
            out.extend(_dotted_keys(v, f"{prefix}{k}."))
    return out


def check_saved_config(cfg: Mapping, section: str, source: str | Path) -> None:
    """The ``section`` settings a model checkpoint was saved with, checked as overrides are
    (type, range, sizes, words) and with no setting the presets do not have: a checkpoint is
    a file from anywhere, and its ``min_size: 30000`` or ``box_score_thresh: NaN`` would
    otherwise reach the model."""
    ref = _reference()
    for k, v in cfg.items():
        key = f"{section}.{k}"
        if key not in ref:
            raise ConfigError(f"{source}: the {section} checkpoint's config has an unknown "
                              f"setting {str(k)[:60]!r} (not a {section} setting of this "
                              f"wiseseg: saved by another version, or edited)")
        try:
            check_setting(key, v, ref)
        except ConfigError as e:
            raise ConfigError(f"{source}: the {section} checkpoint's config: {e}") from None
    try:
        check_consistency({section: cfg})
    except ConfigError as e:
        raise ConfigError(f"{source}: the {section} checkpoint's config: {e}") from None


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
    check_consistency(out)
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
