"""Online clustering pseudo-labels: k-means prototypes over the queue, Sinkhorn-balanced codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3) -> Tensor:
    """Soft assignments (B, K) from scores (B, K) with every cluster taking an equal share.

    Sinkhorn-Knopp on exp(scores / epsilon) (as in SwAV): rows sum to one and, as iterations
    grow, each column sums to B / K, so no cluster can swallow the batch.
    """
    if epsilon <= 0 or iterations < 1:
        raise ValueError("sinkhorn needs epsilon > 0 and iterations >= 1")
    b, k = scores.shape
    # Log domain: a small epsilon would overflow exp().
    log_q = scores.float() / epsilon
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) + torch.log(torch.tensor(b / k))
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    return log_q.exp()


@torch.no_grad()
def spherical_kmeans(
    x: Tensor,
    k: int,
    iterations: int = 10,
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(k, D) unit centroids of the unit rows of x under cosine similarity.

    Starts from `init` (keeps cluster indices stable across refreshes) or k random rows; a cluster
    left empty is re-seeded with a random row.
    """
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {x.shape[0]}")
    x = F.normalize(x.float(), dim=1)
    if init is None:
        idx = torch.randperm(x.shape[0], generator=generator, device="cpu")[:k].to(x.device)
        centroids = x[idx].clone()
    else:
        centroids = F.normalize(init.float().to(x.device), dim=1)
    for _ in range(iterations):
        labels = (x @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k)
        empty = counts == 0
        if empty.any():
            pick = torch.randint(x.shape[0], (int(empty.sum()),), generator=generator)
            sums[empty] = x[pick.to(x.device)]
        centroids = F.normalize(sums, dim=1)
    return centroids


class OnlineClusterer(nn.Module):
    """Pseudo cluster labels for a batch of instance embeddings.

    Every `refresh_every` calls the prototypes are re-fitted by k-means over the pool (the queue),
    started from the previous prototypes so labels keep their meaning. A batch is assigned by
    Sinkhorn over the batch and the pool together, which balances clusters over more than B rows.
    """

    def __init__(
        self,
        n_clusters: int,
        dim: int,
        refresh_every: int = 50,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        kmeans_iterations: int = 10,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.n_clusters = n_clusters
        self.refresh_every = refresh_every
        self.epsilon = epsilon
        self.sinkhorn_iterations = sinkhorn_iterations
        self.kmeans_iterations = kmeans_iterations
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("prototypes", torch.zeros(n_clusters, dim))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def refresh(self, pool: Tensor) -> bool:
        """Re-fit the prototypes on `pool` when due (and possible); True when refitted."""
        due = not bool(self.ready) or int(self.calls) % self.refresh_every == 0
        self.calls += 1
        if not due or pool.shape[0] < self.n_clusters:
            return False
        init = self.prototypes if bool(self.ready) else None
        self.prototypes.copy_(
            spherical_kmeans(pool, self.n_clusters, self.kmeans_iterations, init, self.generator)
        )
        self.ready.fill_(True)
        return True

    @torch.no_grad()
    def assign(self, embeddings: Tensor, pool: Tensor | None = None) -> Tensor:
        """(B, K) balanced soft codes of the batch; requires fitted prototypes."""
        if not bool(self.ready):
            raise RuntimeError("cluster prototypes are not fitted yet (call refresh on a pool)")
        rows = embeddings if pool is None else torch.cat([embeddings, pool.to(embeddings)])
        scores = F.normalize(rows.float(), dim=1) @ self.prototypes.T
        codes = sinkhorn(scores, self.epsilon, self.sinkhorn_iterations)
        return codes[: embeddings.shape[0]]
