"""CODER (ECCV 2022): coupled diversity-sensitive momentum contrastive learning, as an objective.

Pieces, each usable and switchable on its own: momentum encoders and queues (`momentum`,
`queue`), diversity-sensitive weighting and the contrastive loss (`weighting`, `loss`), online
clustering pseudo-labels (`clustering`), the concept vocabulary and commonsense graph
(`concepts`), the loss that composes them (`criterion`) and the `meet-train --objective coder`
objective (`objective`). The served part of the concept branch (graph network, branch, fusion,
ConceptNetConfig) belongs to the runtime: `meet_milvus.model.graph`, `.branch`, `.fusion`.

Names load on first use, so `meet_milvus_training.config` can import
`meet_milvus_training.coder.config` without loading the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "OnlineClusterer": "clustering",
    "sinkhorn": "clustering",
    "spherical_kmeans": "clustering",
    "cooccurrence_graph": "concepts",
    "mine_concepts": "concepts",
    "CoderConfig": "config",
    "CoderCriterion": "criterion",
    "CoderOutputs": "criterion",
    "DiversityContrastiveLoss": "loss",
    "MomentumEncoder": "momentum",
    "ema_update": "momentum",
    "momentum_copy": "momentum",
    "EmbeddingQueue": "queue",
    "diversity_weights": "weighting",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"meet_milvus_training.coder.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'meet_milvus_training.coder' has no attribute {name!r}")
