"""Fusing the instance and concept branches into one similarity that is still a dot product.

CODER scores a pair by (1 - w) * s_instance + w * s_concept. With both embeddings l2-normalised,
concatenating sqrt(1 - w) * instance and sqrt(w) * concept gives unit vectors whose dot product
is exactly that fused score, so the runtime (Milvus inner product, dot products) serves it as is.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from meet_milvus.model.branch import ConceptBranch, Modality
from meet_milvus.model.config import ConceptNetConfig
from meet_milvus.model.graph import ConceptGraphNetwork


def _check(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")


def fuse(instance: Tensor, concept: Tensor | None, weight: float) -> Tensor:
    """(N, D_i + D_c) unit embeddings whose dot product is the fused similarity.

    `instance` and `concept` must be l2-normalised; without a concept branch (None) or with
    weight 0 the instance embedding is returned unchanged.
    """
    _check(weight)
    if concept is None or weight == 0.0:
        return instance
    return torch.cat([instance * math.sqrt(1.0 - weight), concept * math.sqrt(weight)], dim=1)


def fused_similarity(
    image_instance: Tensor,
    text_instance: Tensor,
    image_concept: Tensor | None,
    text_concept: Tensor | None,
    weight: float,
) -> Tensor:
    """(N_images, N_texts) fused similarity (1 - w) * s_instance + w * s_concept."""
    _check(weight)
    sims = image_instance @ text_instance.T
    if image_concept is None or text_concept is None or weight == 0.0:
        return sims
    return (1.0 - weight) * sims + weight * (image_concept @ text_concept.T)


class ConceptFusion(nn.Module):
    """The concept branch as the network serves it: instance embedding -> fused dense embedding.

    Sits after an encoder: `forward(instance, modality)` returns the fused unit vector (instance
    dims first), `split` recovers both parts (for the training loss) from it.
    """

    def __init__(self, branch: ConceptBranch, instance_dim: int, weight: float) -> None:
        super().__init__()
        _check(weight)
        if not 0.0 < weight < 1.0:
            raise ValueError(f"a fused embedding needs 0 < fusion weight < 1, got {weight}")
        self.branch = branch
        self.instance_dim = instance_dim
        self.weight = weight

    @classmethod
    def build(cls, config: ConceptNetConfig) -> ConceptFusion:
        """An untrained fusion of `config`'s shape (graph and nodes are filled by training or by
        loading a checkpoint's weights)."""
        n = len(config.concepts)
        graph = ConceptGraphNetwork(
            torch.eye(n),
            torch.zeros(n, config.node_dim),
            config.concept_dim,
            None,
            config.graph_layers,
        )
        branch = ConceptBranch(graph, config.instance_dim, config.concept_dim)
        return cls(branch, config.instance_dim, config.fusion_weight)

    @property
    def dense_dim(self) -> int:
        return self.instance_dim + self.branch.output.out_features

    def forward(self, instance: Tensor, modality: Modality) -> Tensor:
        return fuse(instance, self.branch(instance, modality), self.weight)

    def split(self, fused: Tensor) -> tuple[Tensor, Tensor]:
        """(instance, concept) unit embeddings back from fused ones."""
        d = self.instance_dim
        return (
            fused[:, :d] / math.sqrt(1.0 - self.weight),
            fused[:, d:] / math.sqrt(self.weight),
        )
