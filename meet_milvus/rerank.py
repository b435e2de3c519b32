"""MEET's query-time relationship-redundancy mitigation: re-rank the top z by consistency and
complementarity.

For a query q and its top-z candidates j (similarities s_j, embeddings v_j):

* complementarity: how highly j ranks q among j's own nearest neighbours of q's modality (a
  reverse rank, in the spirit of k-reciprocal re-ranking). The loader stores each item's top-k
  neighbour similarities, so the reverse rank of a new query is the number of them above s_j:
  no pass over the gallery at query time.
  Score: 1 - log(1 + r) / log(1 + k), 1 for r = 0, 0 for r >= k.
* consistency: external attention of the query over the candidate set (weights
  softmax(s / T)) gives the attended context; a candidate scores its cosine with the context
  of the *other* candidates (leave-one-out, so its own weight does not count twice).

Two modes:

* `weighted`: final_j = s_j + alpha * consistency_j + beta * complementarity_j;
  the top z are re-ordered by it, candidates past z keep their order (and score s_j) behind them.
* `reference`: MEET's reference rule (`i2t_rerank` in at_bert/lib/evalution_AHR.py, applied
  in both directions): the top K1 (`SearchConfig.reference_k_*`; z carries it) are
  sorted by reverse rank alone, ties kept in similarity order, and keep their similarities as
  scores. The reference counts the queries of its evaluation set that the item survived the
  filters for; a live query has no such set, so the stored neighbours stand in for it (the same
  split's items of the query's modality, ranks capped at k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from meet_milvus.errors import ParameterError

# Similarities within float error are a tie, not a rank: the stored neighbour similarities come
# from a matrix product, the query's from an einsum, and for an item queried again the two differ
# by float32 rounding (`python -m benchmarks.tie_error`; TIE is a round figure just above it).
# Any wider and near-ties that MEET's reference ranks by plain sort position would be counted as
# ties (tests/test_reference_agreement.py).
TIE = 1e-6


def reverse_ranks(sims: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Rank of each query among each candidate's stored neighbours, 0 = its nearest.

    sims (nq, z): query-candidate similarity; neighbours (nq, z, k): each candidate's top-k
    similarities to items of the query's modality, descending. Returns (nq, z) ints in [0, k]:
    how many stored neighbours are more similar than the query by more than `TIE`.
    """
    return (neighbours > sims[..., None] + TIE).sum(axis=-1)


def complementarity(ranks: np.ndarray, k: int) -> np.ndarray:
    """Reverse rank as a score in [0, 1]: 1 at rank 0, falling logarithmically to 0 at k."""
    k = max(int(k), 1)
    return 1.0 - np.log1p(np.minimum(ranks, k)) / np.log1p(k)


def consistency(
    sims: np.ndarray, vectors: np.ndarray, temperature: float, valid: np.ndarray | None = None
) -> np.ndarray:
    """Agreement of each candidate with the query-attended context of the others.

    sims (nq, z), vectors (nq, z, D) l2-normalised, valid (nq, z) marks real candidates.
    Returns (nq, z) cosines in [-1, 1] (0 where no other candidate exists).
    """
    if valid is None:
        valid = np.ones(sims.shape, dtype=bool)
    logits = np.where(valid, sims / max(temperature, 1e-6), -np.inf)
    top = logits.max(axis=1, keepdims=True)
    weights = np.where(valid, np.exp(logits - np.where(np.isfinite(top), top, 0.0)), 0.0)
    weights /= weights.sum(axis=1, keepdims=True).clip(min=1e-12)
    context = np.einsum("qz,qzd->qd", weights, vectors)
    # Leave one out: the context of the other candidates.
    others = context[:, None, :] - weights[..., None] * vectors
    norms = np.linalg.norm(others, axis=-1)
    agree = np.einsum("qzd,qzd->qz", vectors, others) / norms.clip(min=1e-12)
    return np.where(valid & (norms > 1e-6), agree, 0.0)


@dataclass(frozen=True, kw_only=True)
class Reranker:
    """Re-orders each query's top z: `weighted`, final = sim + alpha·consistency +
    beta·complementarity; `reference`, by reverse rank alone (`Reranker.reference(k1)`).
    No defaults here: `SearchConfig` holds them."""

    alpha: float
    beta: float
    z: int
    temperature: float
    mode: Literal["weighted", "reference"]

    @classmethod
    def reference(cls, k1: int) -> Reranker:
        """MEET's reference rule over the top `k1` (alpha, beta and temperature unused)."""
        return cls(alpha=0.0, beta=0.0, z=k1, temperature=1.0, mode="reference")

    def __post_init__(self) -> None:
        if self.mode not in ("weighted", "reference"):
            raise ParameterError(f"re-ranking mode '{self.mode}': use 'weighted' or 'reference'")
        if self.z < 1:
            raise ParameterError(f"re-ranking depth z={self.z}: must be at least 1")
        if self.temperature <= 0:
            raise ParameterError(f"re-ranking temperature {self.temperature}: must be positive")

    def scores(
        self, sims: np.ndarray, vectors: np.ndarray, neighbours: np.ndarray, valid: np.ndarray
    ) -> np.ndarray:
        """The sort key (nq, z) of candidates with similarities `sims` (nq, z): the final score,
        or in `reference` mode minus the reverse rank."""
        if self.mode == "reference":
            ranks = reverse_ranks(sims, neighbours)
            return np.where(valid, -ranks.astype(np.float64), -np.inf)
        final = sims.astype(np.float64)
        if self.alpha:
            final = final + self.alpha * consistency(sims, vectors, self.temperature, valid)
        if self.beta:
            comp = complementarity(reverse_ranks(sims, neighbours), neighbours.shape[-1])
            final = final + self.beta * comp
        return np.where(valid, final, -np.inf)

    def rerank(
        self, ids: np.ndarray, sims: np.ndarray, vectors: np.ndarray, neighbours: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Re-order each row's first z candidates (ids (nq, n) -1 padded, sorted by `sims`).

        `vectors` (nq, z', D) and `neighbours` (nq, z', k) belong to the first z' = min(z, n)
        candidates. Returns (ids, scores) of the same shape, re-ordered within the top z (ties
        keep their similarity order); scores are the final scores (`weighted`) or the
        similarities (`reference`, whose key is a rank, not a score).
        """
        z = min(self.z, ids.shape[1])
        head_ids, head_sims = ids[:, :z], sims[:, :z]
        valid = head_ids >= 0
        key = self.scores(head_sims, vectors[:, :z], neighbours[:, :z], valid)
        order = np.argsort(-key, axis=1, kind="stable")
        shown = np.where(valid, head_sims, -np.inf) if self.mode == "reference" else key
        out_ids, out_scores = ids.copy(), sims.astype(np.float32).copy()
        out_ids[:, :z] = np.take_along_axis(head_ids, order, axis=1)
        out_scores[:, :z] = np.take_along_axis(shown, order, axis=1)
        return out_ids, out_scores
