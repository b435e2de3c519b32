"""Adaptive reweighting of kept negatives by hardness: a softmax of their similarity."""

from __future__ import annotations

import torch
from torch import Tensor


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
        logits = (sims.detach().float() / self.temperature).masked_fill(~keep, float("-inf"))
        weights = logits.softmax(dim=dim)
        # An anchor without kept negatives gives a row of NaN (softmax of all -inf): zero it.
        return torch.nan_to_num(weights, nan=0.0) * keep
