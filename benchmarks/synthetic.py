"""A synthetic gallery for the cascade benchmark, deterministic from a seed and cached on disk.

Dense vectors are a mixture of Gaussians with a power-law spectrum (eigenvalue j ~ j^-decay, so a
few directions carry most of the variance as in real embeddings), randomly rotated into `dim` and
l2-normalised. The "hash head" is a fixed projection fitted to the data (PCA to `bits` dims, then an
ITQ rotation, then tanh): a stand-in for a learned head, not a random one. Codes follow the
`meet_milvus.model.Encoded` contract: packed sign bits of the head (big bit order) and PQ codes
of the head (`pq_m` sub-spaces x 2**pq_nbits codewords, k-means by faiss). Queries are gallery
items plus noise drawn from the same spectrum; their exact top-k by dense dot product is recorded.

Dense vectors are stored as float16 (2 bytes a dimension); the truth is computed on exactly those
values upcast to float32, which is also what Milvus receives.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from meet_milvus.model.hashing import pack_codes
from meet_milvus.model.quantization import pq_encode, pq_reconstruct

CHUNK = (
    65_536  # rows per generation step; part of the definition of the data (fixes the RNG streams)
)
_FILES = (
    "dense",
    "head",
    "hash_codes",
    "pq_codes",
    "codebooks",
    "head_weight",
    "head_bias",
    "q_dense",
    "q_head",
    "q_hash_codes",
    "q_source",
    "truth_ids",
    "truth_scores",
)


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that defines a synthetic gallery; equal specs give identical arrays."""

    n_items: int = 1_000_000
    n_queries: int = 1_000
    dim: int = 1024
    bits: int = 64
    pq_m: int = 8
    pq_nbits: int = 8
    n_clusters: int = 2_000
    decay: float = 1.0  # eigenvalue of direction j ~ j**-decay
    spread: float = 1.0  # within-cluster std relative to the spread of cluster centres
    query_noise: float = 0.5  # noise norm added to a gallery item to make a query
    k: int = 10
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True) + f"|chunk={CHUNK}|v1"
        return hashlib.sha1(text.encode()).hexdigest()[:12]


@dataclass
class SyntheticGallery:
    """Gallery codes and dense vectors, queries, and the exact top-k of every query."""

    spec: SyntheticSpec
    dense: np.ndarray  # (N, dim) float16, l2-normalised before the cast
    head: np.ndarray  # (N, bits) float32 in (-1, 1)
    hash_codes: np.ndarray  # (N, bits // 8) uint8
    pq_codes: np.ndarray  # (N, pq_m) uint8
    codebooks: np.ndarray  # (pq_m, 2**pq_nbits, bits // pq_m) float32
    head_weight: np.ndarray  # (dim, bits) float32: head = tanh(dense @ W + b)
    head_bias: np.ndarray  # (bits,) float32
    q_dense: np.ndarray  # (Q, dim) float32, l2-normalised
    q_head: np.ndarray  # (Q, bits) float32
    q_hash_codes: np.ndarray  # (Q, bits // 8) uint8
    q_source: np.ndarray  # (Q,) int64: the gallery item each query was drawn near
    truth_ids: np.ndarray  # (Q, k) int64: exact top-k by dense dot, best first
    truth_scores: np.ndarray  # (Q, k) float32

    @property
    def n_items(self) -> int:
        return self.spec.n_items

    def pq_reconstruct(self, pq_codes: np.ndarray) -> np.ndarray:
        """(n, bits) float32 head vectors the PQ codes stand for."""
        return pq_reconstruct(pq_codes, self.codebooks)

    def encode_pq(self, head: np.ndarray) -> np.ndarray:
        """(n, pq_m) uint8: the nearest codeword of each sub-space (what faiss assigned)."""
        return pq_encode(head, self.codebooks)


def generate(
    spec: SyntheticSpec, cache_dir: Path | None = None, progress: bool = True
) -> SyntheticGallery:
    """Build the gallery for `spec`, or load it from `cache_dir/synthetic-{key}` when cached."""
    out = None if cache_dir is None else Path(cache_dir) / f"synthetic-{spec.n_items}-{spec.key()}"
    if out is not None and (out / "spec.json").is_file():
        return _load(spec, out)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    log = print if progress else (lambda *a, **k: None)

    basis, sd = _space(spec)
    centres, weights = _clusters(spec)
    dense = _array(out, "dense", (spec.n_items, spec.dim), np.float16)
    for start in range(0, spec.n_items, CHUNK):
        stop = min(start + CHUNK, spec.n_items)
        dense[start:stop] = _items(spec, start, stop, basis, sd, centres, weights)
        log(f"  dense {stop:,}/{spec.n_items:,}", end="\r")
    log("")

    weight, bias = _fit_head(spec, dense)
    head = _array(out, "head", (spec.n_items, spec.bits), np.float32)
    for start in range(0, spec.n_items, CHUNK):
        head[start : start + CHUNK] = encode_head(dense[start : start + CHUNK], weight, bias)
    hash_codes = pack_codes(head)
    codebooks, pq_codes = _fit_pq(spec, head)

    rng = np.random.default_rng([spec.seed, 3])
    q_source = rng.choice(spec.n_items, size=spec.n_queries, replace=False).astype(np.int64)
    noise = (rng.standard_normal((spec.n_queries, spec.dim), dtype=np.float32) * sd) @ basis.T
    q_dense = np.asarray(dense[q_source], dtype=np.float32)
    q_dense = _normalise(q_dense + spec.query_noise * noise)
    q_head = encode_head(q_dense, weight, bias)
    q_hash_codes = pack_codes(q_head)
    log("  exact top-k ...")
    truth_ids, truth_scores = exact_topk(q_dense, dense, spec.k)

    arrays = dict(
        dense=dense, head=head, hash_codes=hash_codes, pq_codes=pq_codes, codebooks=codebooks,
        head_weight=weight, head_bias=bias, q_dense=q_dense, q_head=q_head,
        q_hash_codes=q_hash_codes, q_source=q_source, truth_ids=truth_ids,
        truth_scores=truth_scores,
    )  # fmt: skip
    if out is not None:
        for name, arr in arrays.items():
            if isinstance(arr, np.memmap):
                arr.flush()
            else:
                np.save(out / f"{name}.npy", arr)
        # Written last: its presence marks a complete cache entry.
        (out / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
    return SyntheticGallery(spec=spec, **arrays)


def encode_head(dense: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The hash head: tanh of a fixed affine projection, (n, bits) float32."""
    return np.tanh(np.asarray(dense, dtype=np.float32) @ weight + bias)


def exact_topk(
    queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by dot product, chunked over the gallery: (ids, scores), best first."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_s = torch.full((len(q), k), -torch.inf)
    best_i = torch.zeros((len(q), k), dtype=torch.int64)
    for start in range(0, len(gallery), chunk):
        g = torch.from_numpy(np.asarray(gallery[start : start + chunk], dtype=np.float32))
        s, i = torch.topk(q @ g.T, min(k, len(g)), dim=1)
        cat_s, cat_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + start], 1)
        best_s, order = torch.topk(cat_s, k, dim=1)
        best_i = torch.gather(cat_i, 1, order)
    return best_i.numpy(), best_s.numpy()


def _space(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """A random orthonormal basis and the per-direction std of the power-law spectrum."""
    rng = np.random.default_rng([spec.seed, 0])
    basis, r = np.linalg.qr(rng.standard_normal((spec.dim, spec.dim)))
    basis = (basis * np.sign(np.diag(r))).astype(np.float32)  # unique QR
    lam = np.arange(1, spec.dim + 1, dtype=np.float64) ** -spec.decay
    return basis, np.sqrt(lam / lam.sum()).astype(np.float32)


def _clusters(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    """Cluster centres in the eigen-basis (unit-variance units) and their (lognormal) weights."""
    rng = np.random.default_rng([spec.seed, 1])
    centres = rng.standard_normal((spec.n_clusters, spec.dim), dtype=np.float32)
    weights = rng.lognormal(0.0, 1.0, spec.n_clusters)
    return centres, weights / weights.sum()


def _items(spec, start, stop, basis, sd, centres, weights) -> np.ndarray:
    rng = np.random.default_rng([spec.seed, 2, start])
    which = rng.choice(spec.n_clusters, size=stop - start, p=weights)
    z = centres[which] + spec.spread * rng.standard_normal(
        (stop - start, spec.dim), dtype=np.float32
    )
    return _normalise((z * sd) @ basis.T)


def _fit_head(spec: SyntheticSpec, dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA to `bits` dims, an ITQ rotation (balanced, low-error bits), scaled for tanh."""
    rng = np.random.default_rng([spec.seed, 4])
    n = min(spec.n_items, 50_000)
    sample = np.asarray(dense[np.sort(rng.choice(spec.n_items, n, replace=False))], np.float32)
    mean = sample.mean(0)
    x = sample - mean
    _, vecs = np.linalg.eigh(x.T @ x / n)
    pca = vecs[:, ::-1][:, : spec.bits].astype(np.float32)
    v = x @ pca
    rot, _ = np.linalg.qr(rng.standard_normal((spec.bits, spec.bits)))
    for _ in range(50):  # ITQ: alternate B = sign(VR) and the orthogonal Procrustes R
        u, _, wt = np.linalg.svd(v.T @ np.sign(v @ rot))
        rot = u @ wt
    weight = pca @ rot.astype(np.float32)
    weight /= (
        (x @ weight).std(0).mean()
    )  # unit-scale pre-activations: tanh neither flat nor saturated
    return weight.astype(np.float32), (-mean @ weight).astype(np.float32)


def _fit_pq(spec: SyntheticSpec, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    rng = np.random.default_rng([spec.seed, 5])
    n = min(spec.n_items, 100_000)
    sample = np.ascontiguousarray(head[np.sort(rng.choice(spec.n_items, n, replace=False))])
    pq = faiss.ProductQuantizer(spec.bits, spec.pq_m, spec.pq_nbits)
    pq.cp.seed = spec.seed
    pq.train(sample)
    codes = np.empty((spec.n_items, pq.code_size), np.uint8)
    for start in range(0, spec.n_items, CHUNK):
        codes[start : start + CHUNK] = pq.compute_codes(
            np.ascontiguousarray(head[start : start + CHUNK])
        )
    books = faiss.vector_to_array(pq.centroids).reshape(spec.pq_m, 2**spec.pq_nbits, -1)
    return books.astype(np.float32), codes


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _array(out: Path | None, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype)
    return np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)


def _load(spec: SyntheticSpec, out: Path) -> SyntheticGallery:
    arrays = {n: np.load(out / f"{n}.npy", mmap_mode="r" if n == "dense" else None) for n in _FILES}
    return SyntheticGallery(spec=spec, **arrays)
