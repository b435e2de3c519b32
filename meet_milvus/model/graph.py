"""A small graph network that propagates the concept co-occurrence graph into concept embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def normalize_adjacency(
    cond_prob: Tensor, threshold: float = 0.1, self_weight: float = 0.5
) -> Tensor:
    """Row-stochastic propagation matrix from P(b|a).

    Edges weaker than `threshold` are dropped (rare co-occurrences are noise, as in ML-GCN); each
    row keeps `self_weight` for the concept itself and shares the rest among its neighbours in
    proportion to P(b|a). A concept without neighbours keeps all its weight.
    """
    if not 0.0 <= self_weight <= 1.0:
        raise ValueError(f"self_weight must be in [0, 1], got {self_weight}")
    a = cond_prob.float().clone()
    a.fill_diagonal_(0.0)
    a = a * (a >= threshold)
    row = a.sum(dim=1, keepdim=True)
    has = row > 0
    neighbours = torch.where(has, a / row.clamp_min(1e-12), torch.zeros_like(a))
    self_w = torch.where(has, torch.full_like(row, self_weight), torch.ones_like(row))
    return neighbours * (1.0 - self_w) + torch.diag(self_w.squeeze(1))


class ConceptGraphNetwork(nn.Module):
    """Graph convolution layers H' = act(A H W) over the concept graph, learned input features.

    `features` (C, in_dim) initialises the concept nodes (e.g. text-encoder embeddings of the
    concept words); the nodes stay trainable. The output (C, out_dim) is l2-normalised.
    """

    def __init__(
        self,
        adjacency: Tensor,
        features: Tensor,
        out_dim: int,
        hidden_dim: int | None = None,
        layers: int = 2,
    ) -> None:
        super().__init__()
        n = adjacency.shape[0]
        if adjacency.shape != (n, n) or features.shape[0] != n:
            raise ValueError(
                f"adjacency {tuple(adjacency.shape)} and features {tuple(features.shape)} "
                "must agree on the number of concepts"
            )
        if layers < 1:
            raise ValueError("the graph network needs at least one layer")
        self.register_buffer("adjacency", adjacency.float())
        self.features = nn.Parameter(features.float().clone())
        hidden_dim = hidden_dim or out_dim
        dims = [features.shape[1]] + [hidden_dim] * (layers - 1) + [out_dim]
        self.layers = nn.ModuleList(
            nn.Linear(i, o, bias=False) for i, o in zip(dims, dims[1:], strict=False)
        )

    @property
    def n_concepts(self) -> int:
        return self.adjacency.shape[0]

    def forward(self) -> Tensor:
        h = self.features
        for i, layer in enumerate(self.layers):
            h = self.adjacency @ layer(h)
            if i < len(self.layers) - 1:
                h = F.leaky_relu(h, 0.2)
        return F.normalize(h, dim=1)
