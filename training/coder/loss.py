"""InfoNCE against a positive and a pool of (masked, optionally reweighted) negatives."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from meet_milvus_training.coder.weighting import diversity_weights


class DiversityContrastiveLoss(nn.Module):
    """CODER's diversity-sensitive contrastive loss (DCL) for one retrieval direction.

    loss_i = -log( e^{s_i+/t} / (e^{s_i+/t} + sum_j w_ij e^{s_ij/t}) ), with s cosine similarities,
    t the temperature and w_ij from `diversity_weights` (adaptive) or 1 (plain InfoNCE). Masked
    negatives (w = 0) do not enter the sum.
    """

    def __init__(
        self, temperature: float = 0.07, adaptive: bool = True, weight_temperature: float = 0.1
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.adaptive = adaptive
        self.weight_temperature = weight_temperature

    def forward(
        self, queries: Tensor, positives: Tensor, negatives: Tensor, mask: Tensor
    ) -> Tensor:
        """queries, positives (B, D); negatives (N, D) shared by all queries; mask (B, N) bool."""
        pos = (queries * positives).sum(dim=1, keepdim=True)  # (B, 1)
        neg = queries @ negatives.T  # (B, N)
        if self.adaptive:
            weights = diversity_weights(neg, mask, self.weight_temperature)
        else:
            weights = mask.to(neg.dtype)
        # log w = -inf removes a negative exactly; masked_fill keeps log(0) out of the graph.
        log_w = torch.log(weights.clamp_min(1e-30)).masked_fill(~mask, float("-inf"))
        t = self.temperature
        logits = torch.cat([pos / t, neg / t + log_w], dim=1)
        return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
