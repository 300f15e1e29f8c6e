"""``--method`` specs → proposal sources."""

from __future__ import annotations

import inspect

from wiseseg.errors import ConfigError
from wiseseg.proposals.base import ProposalSource

SPECS = ("builtin", "mcg:DIR", "cob:DIR", "json:DIR")


def build_proposal_source(spec: str, **kwargs) -> ProposalSource:
    """The source named by ``spec``.

    Args:
        spec: ``builtin``, ``mcg:DIR`` (MCG/SCG ``.mat``), ``cob:DIR`` (COB ``.mat``) or
            ``json:DIR`` (per-image JSON of RLEs and scores).
        kwargs: settings of that source; ``None`` values are ignored, so command-line
            defaults can be passed through. Builtin: any
            :class:`~wiseseg.proposals.builtin.BuiltinSettings` field; loaders: ``top_k``,
            ``score_map``.
    """
    from wiseseg.proposals.builtin import BuiltinSettings, BuiltinSource
    from wiseseg.proposals.loaders import COBSource, JSONSource, MCGSource

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    kind, sep, arg = str(spec).partition(":")
    loaders = {"mcg": MCGSource, "cob": COBSource, "json": JSONSource}
    if kind == "builtin" and not sep:
        allowed = set(inspect.signature(BuiltinSettings).parameters)
        _check_kwargs(spec, kwargs, allowed)
        return BuiltinSource(**kwargs)
    if kind in loaders and sep and arg:
        _check_kwargs(spec, kwargs, {"top_k", "score_map"})
        return loaders[kind](arg, **kwargs)
    raise ConfigError(f"unknown proposal method {spec!r} (accepted: {', '.join(SPECS)})")


def _check_kwargs(spec: str, kwargs: dict, allowed: set[str]) -> None:
    extra = sorted(set(kwargs) - allowed)
    if extra:
        raise ConfigError(f"proposal method {spec!r} has no setting(s) {', '.join(extra)} "
                          f"(settings: {', '.join(sorted(allowed))})")
