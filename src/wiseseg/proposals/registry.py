"""``--method`` specs → proposal sources."""

from __future__ import annotations

import inspect

from wiseseg.errors import ConfigError
from wiseseg.proposals.base import ProposalSource

SPECS = ("builtin", "builtin:fast", "builtin:accurate", "mcg:DIR", "cob:DIR", "json:DIR",
         "sam:CHECKPOINT")


def build_proposal_source(spec: str, **kwargs) -> ProposalSource:
    """The source named by ``spec``.

    Args:
        spec: ``builtin`` (= ``builtin:fast``), ``builtin:accurate``, ``mcg:DIR`` (MCG/SCG
            ``.mat``), ``cob:DIR`` (COB ``.mat``),
            ``json:DIR`` (per-image JSON of RLEs and scores) or ``sam:CHECKPOINT`` /
            ``sam:MODEL_TYPE:CHECKPOINT`` (Segment Anything; model type ``vit_b``, ``vit_l``,
            ``vit_h`` or ``custom``, read from the checkpoint when not given).
        kwargs: settings of that source; ``None`` values are ignored, so command-line
            defaults can be passed through. Builtin: any
            :class:`~wiseseg.proposals.builtin.BuiltinSettings` field; loaders: ``top_k``,
            ``score_map``; sam: :data:`~wiseseg.proposals.sam.SAM_KWARGS`.
    """
    from wiseseg.proposals.builtin import BuiltinSettings, BuiltinSource
    from wiseseg.proposals.loaders import COBSource, JSONSource, MCGSource

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kind, sep, arg = str(spec).partition(":")
    loaders = {"mcg": MCGSource, "cob": COBSource, "json": JSONSource}
    if kind == "builtin":
        from wiseseg.proposals.builtin import QUALITIES

        if sep and arg not in QUALITIES:
            raise ConfigError(f"proposal method {spec!r}: unknown quality {arg!r} (known: "
                              f"{', '.join(QUALITIES)})")
        allowed = set(inspect.signature(BuiltinSettings).parameters)
        _check_kwargs(spec, kwargs, allowed)
        if sep:
            if kwargs.get("quality", arg) != arg:
                raise ConfigError(f"proposal method {spec!r} and quality="
                                  f"{kwargs['quality']!r} disagree")
            kwargs["quality"] = arg
        return BuiltinSource(**kwargs)
    if kind in loaders and sep and arg:
        _check_kwargs(spec, kwargs, {"top_k", "score_map"})
        return loaders[kind](arg, **kwargs)
    if kind == "sam" and sep and arg:
        from wiseseg.proposals.sam import MODEL_TYPES, SAM_KWARGS, SamSource

        model_type, sep2, path = arg.partition(":")
        if sep2 and model_type in MODEL_TYPES and path:
            kwargs = {"model_type": model_type, **kwargs}
        elif sep2 and model_type.startswith("vit_"):
            raise ConfigError(f"proposal method {spec!r}: unknown SAM model type "
                              f"{model_type!r} (known: {', '.join(MODEL_TYPES)})")
        else:  # no type, or a colon inside the path (C:\\...)
            path = arg
        _check_kwargs(spec, kwargs, set(SAM_KWARGS))
        return SamSource(path, **kwargs)
    raise ConfigError(f"unknown proposal method {spec!r} (accepted: {', '.join(SPECS)})")


def _check_kwargs(spec: str, kwargs: dict, allowed: set[str]) -> None:
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise ConfigError(f"proposal method {spec!r} has no setting(s) {', '.join(extra)} "
                          f"(settings: {', '.join(sorted(allowed))})")
