"""The ``proposals`` command: compute (or reuse) object proposals of a split, optionally
evaluate them against the ground truth."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from wiseseg.cli import add_data_args, command, open_dataset_from_args


def _cfg(p: argparse.ArgumentParser) -> None:
    from wiseseg.proposals.builtin import BuiltinSettings
    from wiseseg.proposals.loaders import SCORE_MAPS

    add_data_args(p, split=True)
    p.add_argument("--out", required=True, help="output directory (the proposal cache)")
    p.add_argument("--method", default="builtin",
                   help="builtin (default), mcg:DIR, cob:DIR or json:DIR (precomputed files "
                        "named <DIR>/<image name>.mat or .json)")
    p.add_argument("--top-k", type=int, default=BuiltinSettings().top_k,
                   help=f"at most this many proposals per image "
                        f"(default {BuiltinSettings().top_k})")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default: min(2, CPUs))")
    p.add_argument("--score-map", choices=SCORE_MAPS, default=None,
                   help="loaders: raw score → objectness (default: sigmoid for mcg/cob, "
                        "identity for json)")
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

    if args.workers < 1:
        raise ConfigError(f"--workers={args.workers} must be ≥ 1")
    ds = open_dataset_from_args(args)
    records = ds.records(args.split)
    if args.eval:
        ds.ground_truth(args.split)  # fail before computing when there is nothing to compare
    kwargs = {"top_k": args.top_k}
    if args.method != "builtin":
        kwargs["score_map"] = args.score_map
    elif args.score_map is not None:
        raise ConfigError("--score-map applies to precomputed proposals (mcg/cob/json) only")
    source = build_proposal_source(args.method, **kwargs)
    store = compute_proposals(records, source, args.out, workers=args.workers,
                              progress=not args.quiet, top_k=args.top_k)
    m = store.manifest
    print(f"proposals ({source.name}): {m['counts']['images']} images "
          f"({m['counts']['computed']} computed, {m['counts']['reused']} reused), "
          f"{m['counts']['per_image']:.1f} per image, "
          f"{m['timings']['seconds_per_image']:.3f} s/image → {Path(args.out)}")
    if args.eval:
        q = proposal_quality(store, ds, args.split)
        q.update({"split": args.split, "source": source.name, "fingerprint": store.fingerprint})
        atomic_write_json(Path(args.out) / f"quality_{args.split}.json", q)
        print(format_quality(q))
        if args.verbose:
            print(json.dumps(q, indent=2))
    return 0
