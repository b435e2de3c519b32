"""Adaptive reweighting of kept negatives by hardness: a softmax of their similarity.

`masked_softmax` is the one implementation; MEET's `HardnessWeighting` and CODER's
`diversity_weights` (meet_milvus_training.coder.weighting) scale it their own way.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_softmax(sims: Tensor, mask: Tensor, temperature: float, dim: int) -> Tensor:
    """softmax(sims / temperature) along `dim` over the entries `mask` keeps, 0 elsewhere and
    in a row without any kept entry. No gradient flows through the weights."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logits = (sims.detach() / temperature).masked_fill(~mask, float("-inf"))
    # A row without kept entries gives NaN (softmax of all -inf): zero it.
    return torch.nan_to_num(logits.softmax(dim=dim), nan=0.0) * mask


class HardnessWeighting:
    """Per anchor, weights over its kept negatives = softmax(similarity / temperature).

    Each anchor's weights sum to 1 over its kept negatives (all zero when none is kept); a low
    temperature approaches max violation, a high one the plain average. Weights carry no gradient.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def __call__(self, sims: Tensor, keep: Tensor, dim: int) -> Tensor:
        """(B, B) weights; `dim` runs over an anchor's negatives (1: image anchors, 0: captions)."""
        return masked_softmax(sims.float(), keep, self.temperature, dim)
