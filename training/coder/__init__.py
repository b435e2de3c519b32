"""CODER (ECCV 2022): coupled diversity-sensitive momentum contrastive learning, as an objective.

Pieces, each usable and switchable on its own: momentum encoders and queues (`momentum`,
`queue`), diversity-sensitive weighting and the contrastive loss (`weighting`, `loss`), online
clustering pseudo-labels (`clustering`), the concept vocabulary, commonsense graph, graph network
and concept branch (`concepts`, `graph`, `branch`), branch fusion (`fusion`), the loss that
composes them (`criterion`) and the `meet-train --objective coder` objective (`objective`).

Names load on first use, so `training.config` can import `training.coder.config` cheaply.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ConceptBranch": "branch",
    "OnlineClusterer": "clustering",
    "sinkhorn": "clustering",
    "spherical_kmeans": "clustering",
    "cooccurrence_graph": "concepts",
    "mine_concepts": "concepts",
    "CoderConfig": "config",
    "ConceptNetConfig": "config",
    "CoderCriterion": "criterion",
    "CoderOutputs": "criterion",
    "ConceptFusion": "fusion",
    "fuse": "fusion",
    "fused_similarity": "fusion",
    "ConceptGraphNetwork": "graph",
    "normalize_adjacency": "graph",
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
        return getattr(importlib.import_module(f"training.coder.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'training.coder' has no attribute {name!r}")
