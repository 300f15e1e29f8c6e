"""Object proposals: sources (built-in, MCG, COB, JSON, SAM), cache, quality metrics.

A :class:`ProposalSource` turns an image into :class:`Proposals` (COCO-RLE masks, ``xyxy``
boxes, objectness ≥ 0, best first). :func:`compute_proposals` runs a source over a split into
an on-disk :class:`ProposalStore` (or one shard of a split into a store of its own, merged
by :func:`merge_shards`); later stages call ``ProposalStore.open(dir).get(image_id)``.
"""

from wiseseg.proposals.base import PROPOSALS_VERSION, Proposals, ProposalSource
from wiseseg.proposals.quality import format_quality, proposal_quality, roc_auc
from wiseseg.proposals.registry import SPECS, build_proposal_source
from wiseseg.proposals.store import (
    ProposalStore,
    compute_proposals,
    merge_shards,
    parse_shard,
    shard_records,
)

__all__ = [
    "PROPOSALS_VERSION", "Proposals", "ProposalSource", "ProposalStore", "SPECS",
    "build_proposal_source", "compute_proposals", "format_quality", "merge_shards",
    "parse_shard", "proposal_quality", "roc_auc", "shard_records",
]
