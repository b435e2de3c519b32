"""Product quantization of the H-dim head outputs: M sub-spaces x 2**K codewords each.

A code is the nearest codeword (l2) per sub-space, which is what Milvus IVF_PQ (m=M, nbits=K)
stores for the same vectors. Scores are asymmetric (ADC): a continuous query against the
reconstruction of a coded gallery, computed through per-query lookup tables.

`ProductQuantizer` (torch) fits, encodes and scores during training; the numpy functions below
do the same for the runtime's stages and the benchmarks, on codebooks (M, 2**K, H // M).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor


def pq_encode(x: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(N, H) vectors -> (N, M) uint8 codes: the nearest codeword (l2) per sub-space."""
    m, _, d = codebooks.shape
    sub = np.asarray(x, np.float32).reshape(len(x), m, 1, d)
    return ((sub - codebooks[None]) ** 2).sum(-1).argmin(-1).astype(np.uint8)


def pq_reconstruct(codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(N, M) codes -> (N, H) float32 codeword concatenations."""
    m = np.arange(codebooks.shape[0])
    return codebooks[m, np.asarray(codes).astype(np.intp)].reshape(len(codes), -1)


def adc_tables(head: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """(nq, M, 2**K) lookup tables: each query's sub-vectors against every codeword."""
    m, _, d = codebooks.shape
    return np.einsum("qmd,mcd->qmc", np.asarray(head, np.float32).reshape(-1, m, d), codebooks)


def adc_scores(tables: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(nq, n) inner products <query, reconstruction> from `adc_tables`: codes (n, M) shared by
    every query, or (nq, n, M) per query (each query's own candidates)."""
    if codes.ndim == 2:
        return sum(tables[:, m, codes[:, m]] for m in range(codes.shape[1]))
    rows = np.arange(len(tables))[:, None]
    return sum(tables[rows, m, codes[:, :, m]] for m in range(codes.shape[2]))


def kmeans(
    x: Tensor,
    k: int,
    iters: int,
    generator: torch.Generator,
    init: Tensor | None = None,
) -> Tensor:
    """(k, d) centroids of the rows of x by Lloyd's algorithm; empty clusters get a random row."""
    n = x.shape[0]
    centroids = _kmeans_pp(x, k, generator) if init is None else init.to(x.device).float().clone()
    for _ in range(iters):
        assign = _nearest(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], centroids, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            rows = torch.randint(n, (int(empty.sum()),), generator=generator).to(x.device)
            centroids[empty] = x[rows]
    return centroids


def _kmeans_pp(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each next centroid drawn with probability ~ squared distance."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator))
    chosen = [first]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        probs = (d2 / total).cpu() if total > 0 else torch.ones(x.shape[0])
        nxt = int(torch.multinomial(probs, 1, generator=generator))
        chosen.append(nxt)
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    return x[torch.tensor(chosen, device=x.device)].clone()


def _nearest(x: Tensor, centroids: Tensor) -> Tensor:
    # ||x - c||^2 up to the constant ||x||^2.
    dist = (centroids * centroids).sum(1)[None, :] - 2 * x @ centroids.T
    return dist.argmin(1)


class ProductQuantizer:
    """One codebook set (M, 2**K, H // M); `Quantizers` says which modalities use it."""

    def __init__(self, dim: int, M: int, K: int, codebooks: Tensor | None = None) -> None:
        if dim % M:
            raise ValueError(f"dim={dim} is not divisible by M={M}")
        if not 1 <= K <= 8:
            raise ValueError(f"K={K}: codes are stored as uint8, so 1 <= K <= 8")
        self.dim, self.M, self.K = dim, M, K
        self.sub = dim // M
        shape = (M, 2**K, self.sub)
        if codebooks is None:
            codebooks = torch.zeros(shape)
        if tuple(codebooks.shape) != shape:
            raise ValueError(f"codebooks of shape {tuple(codebooks.shape)}, expected {shape}")
        self.codebooks = codebooks.float()

    def to(self, device: str | torch.device) -> ProductQuantizer:
        self.codebooks = self.codebooks.to(device)
        return self

    def fit(self, x: Tensor, iters: int = 25, seed: int = 0, warm_start: bool = False) -> Tensor:
        """k-means per sub-space on the rows of x (N, dim); returns and keeps the codebooks.

        `warm_start` starts from the current codebooks, so a refresh keeps codeword identities.
        """
        x = x.detach().float().to(self.codebooks.device)
        generator = torch.Generator().manual_seed(seed)
        parts = x.view(x.shape[0], self.M, self.sub)
        self.codebooks = torch.stack(
            [
                kmeans(
                    parts[:, m].contiguous(),
                    2**self.K,
                    iters,
                    generator,
                    self.codebooks[m] if warm_start else None,
                )
                for m in range(self.M)
            ]
        )
        return self.codebooks

    def encode(self, x: Tensor, chunk: int = 8192) -> Tensor:
        """(N, dim) -> (N, M) int64 codes: the nearest codeword per sub-space."""
        x = x.detach().float().to(self.codebooks.device)
        out = []
        sq = (self.codebooks * self.codebooks).sum(-1)  # (M, k)
        for s in range(0, x.shape[0], chunk):
            parts = x[s : s + chunk].view(-1, self.M, self.sub)
            dots = torch.einsum("nms,mks->nmk", parts, self.codebooks)
            out.append((sq[None] - 2 * dots).argmin(-1))
        if not out:
            return torch.zeros(0, self.M, dtype=torch.long, device=self.codebooks.device)
        return torch.cat(out)

    def reconstruct(self, codes: Tensor) -> Tensor:
        """(N, M) codes -> (N, dim) codeword concatenations."""
        codes = codes.long().to(self.codebooks.device)
        parts = self.codebooks[torch.arange(self.M, device=codes.device)[None, :], codes]
        return parts.reshape(codes.shape[0], self.dim)

    def adc(self, queries: Tensor, codes: Tensor) -> Tensor:
        """(Nq, Ng) inner products <query, reconstruct(code)> through lookup tables."""
        queries = queries.detach().float().to(self.codebooks.device)
        codes = codes.long().to(self.codebooks.device)
        tables = torch.einsum("qms,mks->qmk", queries.view(-1, self.M, self.sub), self.codebooks)
        scores = torch.zeros(queries.shape[0], codes.shape[0], device=queries.device)
        for m in range(self.M):
            scores += tables[:, m][:, codes[:, m]]
        return scores


PQLayout = Literal["shared", "per_modality"]
MODALITIES = ("image", "text")


class Quantizers:
    """A model's PQ codebooks by modality: one set shared by images and texts (`shared`), or
    one set each (`per_modality`, as MEET's reference learns C_img and C_txt). An item's codes
    and any query scored against them use the item's modality's set.

    `codebooks` is what a checkpoint stores: (M, 2**K, d) shared, or (2, M, 2**K, d), the
    image set then the text set.
    """

    def __init__(
        self, dim: int, M: int, K: int, layout: PQLayout = "shared", codebooks: Tensor | None = None
    ) -> None:
        if layout not in ("shared", "per_modality"):
            raise ValueError(f"PQ layout '{layout}': use 'shared' or 'per_modality'")
        self.layout = layout
        if layout == "shared":
            pq = ProductQuantizer(dim, M, K, codebooks)
            self.by_modality = {"image": pq, "text": pq}
            return
        shape = (2, M, 2**K, dim // M)
        if codebooks is not None and tuple(codebooks.shape) != shape:
            raise ValueError(
                f"codebooks of shape {tuple(codebooks.shape)}, expected {shape} (per modality)"
            )
        parts = [None, None] if codebooks is None else list(codebooks)
        self.by_modality = {
            m: ProductQuantizer(dim, M, K, p) for m, p in zip(MODALITIES, parts, strict=True)
        }

    @classmethod
    def from_codebooks(cls, codebooks: Tensor) -> Quantizers:
        """Stored codebooks, the layout read from their shape (4-D: one set per modality)."""
        M, codewords, sub = codebooks.shape[-3:]
        layout = "per_modality" if codebooks.ndim == 4 else "shared"
        return cls(M * sub, M, int(codewords).bit_length() - 1, layout, codebooks)

    def __getitem__(self, modality: str) -> ProductQuantizer:
        return self.by_modality[modality]

    @property
    def codebooks(self) -> Tensor:
        if self.layout == "shared":
            return self["image"].codebooks
        return torch.stack([self[m].codebooks for m in MODALITIES])

    def to(self, device: str | torch.device) -> Quantizers:
        for pq in set(self.by_modality.values()):
            pq.to(device)
        return self

    def fit(
        self, images: Tensor, texts: Tensor, iters: int = 25, seed: int = 0,
        warm_start: bool = False,
    ) -> None:  # fmt: skip
        """k-means per sub-space: on both modalities' head outputs together (shared), or on
        each modality's own."""
        if self.layout == "shared":
            self["image"].fit(torch.cat([images, texts]), iters, seed, warm_start)
            return
        for m, x in zip(MODALITIES, (images, texts), strict=True):
            self[m].fit(x, iters, seed, warm_start)

    def quantize(self, head: Tensor, modality: str) -> Tensor:
        """Head outputs replaced by their reconstruction in `modality`'s codebooks."""
        pq = self[modality]
        return pq.reconstruct(pq.encode(head))
