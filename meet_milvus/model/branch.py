"""Concept branch: each image or text attends over the graph's concepts -> concept descriptor."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from meet_milvus.model.graph import ConceptGraphNetwork

Modality = Literal["image", "text"]


class ConceptBranch(nn.Module):
    """Concept-level descriptors for both modalities.

    An instance embedding (B, embed_dim) is projected to a query per modality; cosine attention
    (temperature `attention_temperature`) over the concept embeddings (C, concept_dim) from the
    graph network gives weights (B, C); the descriptor is the attended mixture of concepts,
    projected and l2-normalised. Both modalities share the concepts, so an image and a caption
    meet in the same concept space.
    """

    def __init__(
        self,
        graph: ConceptGraphNetwork,
        embed_dim: int,
        concept_dim: int,
        attention_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.graph = graph
        self.attention_temperature = attention_temperature
        self.query = nn.ModuleDict(
            {m: nn.Linear(embed_dim, concept_dim) for m in ("image", "text")}
        )
        self.output = nn.Linear(concept_dim, concept_dim)

    def _attend(self, instance: Tensor, modality: Modality) -> tuple[Tensor, Tensor]:
        concepts = self.graph()  # unit rows
        q = F.normalize(self.query[modality](instance), dim=1)
        return F.softmax(q @ concepts.T / self.attention_temperature, dim=1), concepts

    def attention(self, instance: Tensor, modality: Modality) -> Tensor:
        """(B, C) attention of each instance over the concepts."""
        return self._attend(instance, modality)[0]

    def forward(self, instance: Tensor, modality: Modality) -> Tensor:
        """(B, concept_dim) l2-normalised concept descriptors."""
        weights, concepts = self._attend(instance, modality)
        return F.normalize(self.output(weights @ concepts), dim=1)
