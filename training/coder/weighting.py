"""Diversity-sensitive adaptive weighting of negatives (CODER's replacement for uniform weights)."""

from __future__ import annotations

import torch
from torch import Tensor


def diversity_weights(similarities: Tensor, mask: Tensor, temperature: float = 0.1) -> Tensor:
    """Weight each valid negative by its hardness relative to the query's other negatives.

    w_ij = n_i * softmax_j(s_ij / temperature) over the n_i valid negatives of query i, so the
    weights of a row average to one (uniform weighting is the limit temperature -> inf) and masked
    entries weigh zero. The weights are constants for the gradient (an importance weighting, not
    a path for the similarities to learn through).
    """
    if temperature <= 0:
        raise ValueError(f"weighting temperature must be positive, got {temperature}")
    logits = (similarities.detach() / temperature).masked_fill(~mask, float("-inf"))
    # Rows without any valid negative would softmax to NaN; give them a finite dummy row.
    empty = ~mask.any(dim=1, keepdim=True)
    probs = torch.softmax(logits.masked_fill(empty, 0.0), dim=1)
    weights = probs * mask.sum(dim=1, keepdim=True)
    return weights.masked_fill(~mask, 0.0)
