"""Diversity-sensitive adaptive weighting of negatives (CODER's replacement for uniform weights)."""

from __future__ import annotations

from torch import Tensor

from meet_milvus_training.weighting import masked_softmax


def diversity_weights(similarities: Tensor, mask: Tensor, temperature: float = 0.1) -> Tensor:
    """Weight each valid negative by its hardness relative to the query's other negatives.

    w_ij = n_i * softmax_j(s_ij / temperature) over the n_i valid negatives of query i, so the
    weights of a row average to one (uniform weighting is the limit temperature -> inf) and masked
    entries weigh zero. The weights are constants for the gradient (an importance weighting, not
    a path for the similarities to learn through).
    """
    return masked_softmax(similarities, mask, temperature, dim=1) * mask.sum(dim=1, keepdim=True)
