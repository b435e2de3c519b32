"""Negative filtering: which in-batch pairs may serve as negatives (misleading-negative filter).

Pairs are (image of row a, caption of column b) of an item-aligned batch, whose diagonal holds the
positives. A pair is never a negative when it shares the image. The filter also drops pairs that
are likely false negatives: the caption's text also describes the image (same caption text), the
two items come from the same source image, or the pair scores above the anchor's positive by more
than a margin.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class PairInfo:
    """What the filter knows about a batch's pairs, all (B, B) bool except image_ids (B,)."""

    image_ids: Tensor
    same_text: Tensor  # the caption's text is also a caption of the row's image
    same_source: Tensor  # the row's image and the caption's image share a source image


def base_negatives(image_ids: Tensor) -> Tensor:
    """(B, B) True where row a's image differs from column b's image (VSE's repeat masking)."""
    return image_ids[:, None] != image_ids[None, :]


class NegativeFilter:
    """Keep masks for both directions; False entries contribute nothing to a ranking loss.

    `margin=None` switches the similarity criterion off (e.g. while the similarities are still
    untrained).
    """

    def __init__(
        self, same_text: bool = True, same_source: bool = True, margin: float | None = 0.1
    ) -> None:
        self.same_text = same_text
        self.same_source = same_source
        self.margin = margin

    def __call__(self, sims: Tensor, pairs: PairInfo) -> tuple[Tensor, Tensor]:
        """(keep_i2t, keep_t2i): caption b kept as negative of image a; image a of caption b."""
        keep = base_negatives(pairs.image_ids)
        if self.same_text:
            keep = keep & ~pairs.same_text
        if self.same_source:
            keep = keep & ~pairs.same_source
        keep_i2t, keep_t2i = keep, keep
        if self.margin is not None:
            sims = sims.detach()
            pos = sims.diagonal()
            keep_i2t = keep_i2t & (sims <= pos[:, None] + self.margin)
            keep_t2i = keep_t2i & (sims <= pos[None, :] + self.margin)
        return keep_i2t, keep_t2i


def kept_fraction(keep: Tensor, image_ids: Tensor) -> float:
    """Share of the base negatives that a keep mask retains (for logging)."""
    base = base_negatives(image_ids)
    return float((keep & base).sum()) / max(1, int(base.sum()))
