"""The ``proposals`` command: compute (or reuse) object proposals of a split (or one shard of
it), optionally evaluate them against the ground truth; ``proposals-merge`` joins the shards."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from wiseseg.commandline import add_data_args, command, open_dataset_from_args


def _cfg(p: argparse.ArgumentParser) -> None:
    from wiseseg.proposals.builtin import BuiltinSettings
    from wiseseg.proposals.loaders import SCORE_MAPS

    add_data_args(p, split=True)
    p.add_argument("--out", required=True, help="output directory (the proposal cache)")
    p.add_argument("--method", default="builtin",
                   help="builtin (default; = builtin:fast), builtin:accurate, mcg:DIR, cob:DIR "
                        "or json:DIR (precomputed files named <DIR>/<image name>.mat or "
                        ".json), sam:CHECKPOINT or "
                        "sam:vit_b|vit_l|vit_h:CHECKPOINT (Segment Anything, needs the "
                        "'sam' extra)")
    p.add_argument("--set", dest="settings", action="append", default=[],
                   metavar="KEY=VALUE",
                   help="a setting of the method (repeatable), e.g. points_per_side=16 for "
                        "sam or nms_iou=0.7 for builtin; values are read as YAML")
    p.add_argument("--top-k", type=int, default=BuiltinSettings().top_k,
                   help=f"at most this many proposals per image "
                        f"(default {BuiltinSettings().top_k})")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default: min(2, CPUs))")
    p.add_argument("--score-map", choices=SCORE_MAPS, default=None,
                   help="loaders: raw score → objectness (default: sigmoid for mcg/cob, "
                        "identity for json)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="compute only shard I of N (counted from 0; image k of the split goes "
                        "to shard k mod N) into OUT/shard-I-of-N; join the shards with "
                        "`wiseseg proposals-merge --out OUT`")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what OUT holds when it was computed with other settings or "
                        "from other image files (default: refuse, never reuse it)")
    p.add_argument("--eval", action="store_true",
                   help="evaluate against the split's ground truth: ABO, recall@0.5/0.7 at "
                        "top-10/100/all, objectness AUC, proposals and seconds per image "
                        "(also written to OUT/quality_<split>.json)")


@command("proposals", "compute object proposals (masks + objectness) for a split", _cfg)
def cmd_proposals(args) -> int:
    from wiseseg.errors import ConfigError
    from wiseseg.io import atomic_write_json
    from wiseseg.proposals import (
        build_proposal_source,
        compute_proposals,
        format_quality,
        proposal_quality,
    )
    from wiseseg.proposals.store import parse_shard, shard_dir

    if args.workers < 1:
        raise ConfigError(f"--workers={args.workers} must be ≥ 1")
    if args.top_k < 1:
        raise ConfigError(f"--top-k={args.top_k} must be ≥ 1")
    shard = parse_shard(args.shard) if args.shard is not None else None
    if shard is not None and args.eval:
        raise ConfigError(f"--eval needs the whole split: merge the shards (`wiseseg "
                          f"proposals-merge --out {args.out}`), then run `wiseseg proposals "
                          f"--out {args.out} --eval` without --shard (it reuses every file)")
    kwargs = {"top_k": args.top_k, **_parse_settings(args.settings)}
    if args.method.split(":")[0] in ("mcg", "cob", "json"):
        kwargs["score_map"] = args.score_map
    elif args.score_map is not None:
        raise ConfigError("--score-map applies to precomputed proposals (mcg/cob/json) only")
    source = build_proposal_source(args.method, **kwargs)
    ds = open_dataset_from_args(args)
    records = ds.records(args.split)
    if args.eval:
        ds.ground_truth(args.split)  # fail before computing when there is nothing to compare
    out = Path(args.out) if shard is None else shard_dir(args.out, *shard)
    store = compute_proposals(records, source, out, workers=args.workers,
                              progress=not args.quiet, top_k=args.top_k, shard=shard,
                              overwrite=args.overwrite)
    m = store.manifest
    part = "" if shard is None else f", shard {shard[0]}/{shard[1]} of {len(records)}"
    print(f"proposals ({source.name}): {m['counts']['images']} images{part} "
          f"({m['counts']['computed']} computed, {m['counts']['reused']} reused), "
          f"{m['counts']['per_image']:.1f} per image, "
          f"{m['timings']['seconds_per_image']:.3f} s/image → {out}")
    if args.eval:
        q = proposal_quality(store, ds, args.split)
        q.update({"split": args.split, "source": source.name, "fingerprint": store.fingerprint})
        atomic_write_json(Path(args.out) / f"quality_{args.split}.json", q)
        print(format_quality(q))
        if args.verbose:
            print(json.dumps(q, indent=2))
    return 0


def _parse_settings(items: list[str]) -> dict:
    """``--set KEY=VALUE`` → ``{KEY: value}``, values read as YAML (numbers, lists, null)."""
    import yaml

    from wiseseg.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. points_per_side=16")
        if key.strip() in ("top_k", "score_map"):
            raise ConfigError(f"--set {item!r}: use --{key.strip().replace('_', '-')}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def _merge_cfg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the merged store (the --out of the shards)")
    p.add_argument("shards", nargs="*", metavar="SHARD_DIR",
                   help="shard stores (default: every OUT/shard-I-of-N folder)")


@command("proposals-merge", "merge the shard stores of `wiseseg proposals --shard I/N` into "
         "one store", _merge_cfg)
def cmd_proposals_merge(args) -> int:
    from wiseseg.errors import WisesegError
    from wiseseg.proposals.store import find_shards, merge_shards

    dirs = [Path(d) for d in args.shards] or find_shards(args.out)
    counts = sorted({d.name.rsplit("-", 1)[-1] for d in dirs}) if not args.shards else []
    if len(counts) > 1:
        raise WisesegError(f"{args.out}: shard folders of different shard counts "
                           f"(N = {', '.join(counts)}); remove the stale ones or name the "
                           f"shard folders to merge")
    store = merge_shards(dirs, args.out)
    m = store.manifest
    print(f"proposals ({store.source_name}): merged {m['timings']['shards']} shards, "
          f"{m['counts']['images']} images, {m['counts']['per_image']:.1f} per image "
          f"→ {Path(args.out)}")
    return 0
