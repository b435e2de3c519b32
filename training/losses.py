"""MEET's loss terms, each a small module: ranking hinge, L_f (similarity preservation), L_q."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from meet_milvus.model.hashing import code_bits


class RankingLoss(nn.Module):
    """Bidirectional hinge triplet loss on an item-aligned (B, B) score matrix (positives on the
    diagonal), summed over anchors as in the reference.

    Per anchor the hinge costs [margin + s(neg) - s(pos)]+ over its kept negatives are combined by
    the hardest one (`max_violation`) or their sum; with `weights` (per anchor summing to 1, see
    weighting.HardnessWeighting) they are combined by the weighted sum instead: a soft hardest
    negative under max violation, and under the sum the weights are rescaled to average 1 over
    the kept negatives so the loss keeps the plain sum's scale.
    """

    def __init__(self, margin: float = 0.2, max_violation: bool = True) -> None:
        super().__init__()
        self.margin = margin
        self.max_violation = max_violation

    def forward(
        self,
        sims: Tensor,
        keep_i2t: Tensor,
        keep_t2i: Tensor,
        weights_i2t: Tensor | None = None,
        weights_t2i: Tensor | None = None,
    ) -> Tensor:
        pos = sims.diagonal()
        cost_cap = (self.margin + sims - pos[:, None]).clamp(min=0) * keep_i2t  # image anchors
        cost_img = (self.margin + sims - pos[None, :]).clamp(min=0) * keep_t2i  # caption anchors
        return self._reduce(cost_cap, keep_i2t, weights_i2t, 1) + self._reduce(
            cost_img, keep_t2i, weights_t2i, 0
        )

    def _reduce(self, cost: Tensor, keep: Tensor, weights: Tensor | None, dim: int) -> Tensor:
        if weights is None:
            return cost.max(dim).values.sum() if self.max_violation else cost.sum()
        if not self.max_violation:
            weights = weights * keep.sum(dim, keepdim=True)
        return (weights * cost).sum()


class SimilarityPreservationLoss(nn.Module):
    """L_f: the hash space's cross-modal cosine similarities (for binary codes 1 - 2 Hamming / H)
    follow the dense space's, taken as fixed targets. Cosine, not the raw product, so that the
    term cannot be lowered by shrinking the head outputs. Mean squared difference per anchor,
    summed over the batch's anchors."""

    def forward(self, img_head: Tensor, txt_head: Tensor, dense_sims: Tensor) -> Tensor:
        head_sims = F.normalize(img_head, dim=1) @ F.normalize(txt_head, dim=1).T
        return ((head_sims - dense_sims.detach()) ** 2).mean(1).sum()


class QuantizationLoss(nn.Module):
    """L_q: head outputs close to their product-quantization reconstruction and to their code
    (+-1 by `code_bits`, the rule the stored codes follow). Mean squared error per item, summed
    over items. Codes and signs are fixed targets."""

    def forward(self, head: Tensor, reconstruction: Tensor) -> Tensor:
        to_pq = ((head - reconstruction.detach()) ** 2).mean(1)
        code = code_bits(head.detach()).to(head.dtype) * 2 - 1
        to_sign = ((head - code) ** 2).mean(1)
        return (to_pq + to_sign).sum()
