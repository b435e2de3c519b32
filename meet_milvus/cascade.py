"""MEET's progressive filtering over a Milvus gallery, one small object per stage.

Every stage takes a batch of encoded queries (`meet_milvus.model.Encoded`: hash codes, head outputs,
dense embeddings of the *other* modality) and the previous stage's candidates, and returns
ranked candidates: FAISS-style (nq, n) arrays of ids (-1 where a row ran short) and scores
(higher = better). A first stage gets `None` and searches the whole gallery.

    HammingFilter   Hamming distance on the packed hash codes -> top R: Milvus BIN_IVF_FLAT
                    search (`milvus`) or a client-side scan of the cached codes (`client`)
    QuantizedFilter asymmetric PQ distance over the survivors -> top Q: client-side ADC on
                    MEET's own codes (`adc`, default) or Milvus IVF_PQ filtered by id (`milvus`)
    AnnFilter       approximate dense similarity from the local tier's ANN index (IVF over RaBitQ
                    codes of a PCA-reduced dense vector) -> top Q, as a first stage
    MilvusAnn       the server-side counterpart: Milvus's HNSW on the dense field -> top k with
                    exact scores, as a first stage
    ExactRescore    exact dense dot product of the survivors -> top k: their vectors read from
                    the store (`read`), or a Milvus search filtered to their ids (`search`)
    Rerank          consistency + complementarity over the top z (meet_milvus.rerank)

Stages read the gallery through one interface, a `GalleryReader` (meet_milvus.reader): the
client's local tier (codes in RAM, dense vectors on disk) or the Milvus collections themselves
(the server-side mode). Deleted items are tombstones there (`dead()`); the first stage never
passes one on. The modes that let Milvus search go through a `MilvusSide`.

`Cascade(stages)` runs them in order and can return each stage's output with its latency.
Sizes (`keep`) are a count (int) or a fraction (float in (0, 1]) of what the stage receives.
The stages hold no defaults for search settings: the caller passes each one (the searcher
passes `SearchConfig`'s, where every default is defined).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol

import numpy as np

from meet_milvus.errors import ParameterError
from meet_milvus.gallery_layout import HNSW_EXACT_SHARE
from meet_milvus.milvus_arrays import MAX_TOPK
from meet_milvus.model.meet_model import Encoded
from meet_milvus.model.quantization import adc_scores, adc_tables
from meet_milvus.reader import GalleryReader, MilvusSide
from meet_milvus.rerank import Reranker
from meet_milvus.search_config import Keep, check_keep
from meet_milvus.tier import LocalTier


@dataclass(frozen=True)
class Candidates:
    """Ranked candidates per query: ids (nq, n) int64 (-1 = empty), scores (nq, n) float32."""

    ids: np.ndarray
    scores: np.ndarray

    @property
    def nq(self) -> int:
        return self.ids.shape[0]

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def head(self, n: int) -> Candidates:
        return Candidates(self.ids[:, :n], self.scores[:, :n])

    @classmethod
    def top(cls, ids: np.ndarray, scores: np.ndarray, n: int) -> Candidates:
        """The best `n` of each row (ids -1 never win), sorted best first."""
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        n = max(1, min(n, ids.shape[1]))
        if n < ids.shape[1]:
            part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
        else:
            part = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.take_along_axis(part, np.argsort(-part_scores, axis=1, kind="stable"), axis=1)
        return cls(np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, 1))


class Stage(Protocol):
    name: str

    def __call__(self, queries: Encoded, candidates: Candidates | None = None) -> Candidates: ...


def resolve_keep(keep: Keep, available: int, cap: int = MAX_TOPK, least: int = 1) -> int:
    """A stage size as a count: `keep` items, or that fraction of `available`; at least `least`
    (the k asked for: a filter that keeps fewer would return fewer than k hits)."""
    check_keep(keep)
    if isinstance(keep, float):
        # The decimal the user wrote, times the count, rounded down. MEET's reference floors the
        # float product, which falls one short where it lands just under an integer (0.29 * 100
        # = 28.999999999999996); at its rates (0.3, 0.5, 0.6) the two agree (README).
        keep = int(Fraction(repr(keep)) * available)
    return int(max(1, min(max(keep, least), available, cap)))


class _GalleryStage:
    """Shared plumbing: the store the stage reads (a `GalleryReader`: the local tier or Milvus)
    and, for stages that let Milvus search, the gallery's collections (`MilvusSide`)."""

    def __init__(self, store: GalleryReader, milvus: MilvusSide | None = None) -> None:
        self.store = store
        self.milvus = milvus if milvus is not None else getattr(store, "milvus", None)
        self.meta = store.meta

    def _side(self, what: str) -> MilvusSide:
        if self.milvus is None:
            raise ParameterError(f"{what} searches in Milvus: give the stage milvus=")
        return self.milvus

    def _dense_search(
        self, what: str, dense: np.ndarray, limit: int, params: dict | None
    ) -> Candidates:
        """Milvus's top `limit` of the whole dense field by inner product, as Candidates."""
        ids, dist = self._side(what).search(
            "dense", np.asarray(dense, np.float32), limit, "IP", params
        )
        return Candidates(ids, np.where(ids >= 0, dist, -np.inf).astype(np.float32))

    def _live(self) -> int:
        dead = self.store.dead()
        return self.store.rows - (0 if dead is None else int(dead.sum()))

    def _gather(self, ids: np.ndarray, fields: list[str]) -> dict[str, np.ndarray]:
        """Values of `fields` for a (nq, n) id array, zeros where ids are -1; each distinct id
        read once."""
        valid = ids >= 0
        unique, inverse = np.unique(ids[valid], return_inverse=True)
        readers = {"dense": self.store.dense, "neighbours": self.store.neighbours,
                   "codes": lambda u: self.store.codes("codes")[u]}  # fmt: skip
        out = {}
        for name in fields:
            values = np.asarray(readers[name](unique))[inverse]
            full = np.zeros((*ids.shape, *values.shape[1:]), dtype=values.dtype)
            full[valid] = values
            out[name] = full
        return out


class HammingFilter(_GalleryStage):
    """Stage 1: the R gallery items nearest in Hamming distance. Scores are negated distances.

    mode `client`: an exact scan of every item's codes (H/8 bytes an item), R up to the whole
    gallery; ties at the cut-off are taken in id order; deleted ids never. mode `milvus`:
    BIN_IVF_FLAT search; `nprobe` None probes every list, i.e. exact Hamming ranking as in
    MEET's reference; R is capped by Milvus's topk (16384).
    """

    name = "hash"

    def __init__(
        self,
        store: GalleryReader,
        *,
        keep: Keep,
        mode: Literal["milvus", "client"],
        nprobe: int | None = None,
        least: int = 1,
        milvus: MilvusSide | None = None,
    ) -> None:
        super().__init__(store, milvus)
        if mode not in ("milvus", "client"):
            raise ParameterError(f"Hamming filter mode '{mode}': use 'milvus' or 'client'")
        self.keep, self.least = keep, least
        self.mode = mode
        self.nprobe = nprobe or self.meta.nlist

    def __call__(self, queries: Encoded, candidates: Candidates | None = None) -> Candidates:
        if candidates is not None:
            raise ParameterError("HammingFilter searches the whole gallery: put it first")
        codes = np.ascontiguousarray(queries.hash_codes, np.uint8)
        live = self._live()
        if self.mode == "client":
            limit = resolve_keep(self.keep, live, cap=max(live, 1), least=self.least)
            return hamming_top(self.words(), as_words(codes), limit, self.meta.H,
                               self.store.dead())  # fmt: skip
        limit = resolve_keep(self.keep, live, least=self.least)
        ids, dist = self._side("mode 'milvus'").search(
            "hash", [row.tobytes() for row in codes], limit, "HAMMING", {"nprobe": self.nprobe}
        )
        return Candidates(ids, np.where(ids >= 0, -dist, -np.inf).astype(np.float32))

    def words(self) -> np.ndarray:
        """Every item's code as 64-bit words (rows, ceil(H/64))."""
        return as_words(self.store.codes("hash"))


def as_words(codes: np.ndarray) -> np.ndarray:
    """Packed codes (n, B) uint8 as (n, ceil(B/8)) uint64 words (zero-padded; a view, no copy,
    when B is a multiple of 8)."""
    n, width = codes.shape
    if width % 8 == 0:
        return np.ascontiguousarray(codes, np.uint8).view(np.uint64)
    padded = np.zeros((n, -(-width // 8) * 8), dtype=np.uint8)
    padded[:, :width] = codes
    return padded.view(np.uint64)


def hamming_top(
    gallery: np.ndarray, queries: np.ndarray, limit: int, bits: int, dead: np.ndarray | None = None
) -> Candidates:
    """Exact top `limit` by Hamming distance, as (ids, -distance), nearest first; ids marked in
    `dead` (deleted) are never taken, and a row runs short (-1) when too few are left.

    Distances take only bits+1 values, so the cut-off comes from a histogram instead of a
    sort: one pass over the gallery per query, then a sort of the `limit` survivors only.
    """
    nq = len(queries)
    ids = np.full((nq, limit), -1, dtype=np.int64)
    scores = np.full((nq, limit), -np.inf, dtype=np.float32)
    for q, word in enumerate(queries):
        dist = np.bitwise_count(gallery[:, 0] ^ word[0])
        for w in range(1, gallery.shape[1]):
            dist = dist + np.bitwise_count(gallery[:, w] ^ word[w])
        if dead is not None:
            dist = np.where(dead, bits + 1, dist)  # past every real distance: never taken
        counts = np.cumsum(np.bincount(dist, minlength=bits + 2)[: bits + 1])
        cut = min(int(np.searchsorted(counts, limit)), bits)
        near = np.flatnonzero(dist <= cut)
        below = near[dist[near] < cut]
        chosen = np.concatenate([below, near[dist[near] == cut][: limit - len(below)]])
        chosen = chosen[np.argsort(dist[chosen], kind="stable")]
        ids[q, : len(chosen)] = chosen
        scores[q, : len(chosen)] = -dist[chosen].astype(np.float32)
    return Candidates(ids, scores)


class QuantizedFilter(_GalleryStage):
    """Stage 2: asymmetric quantized inner product <query head, quantized item>, top Q.

    mode `adc`: look-up tables of the query against MEET's codebooks (those of the modality
    searched), summed over the items' PQ codes (M bytes an item, read from the store). mode
    `milvus`: Milvus IVF_PQ search over the `head` vectors, filtered to the survivors by a
    literal id list (one request per query), with Milvus's own codebooks (`codebooks` None).
    """

    name = "pq"

    def __init__(
        self,
        store: GalleryReader,
        codebooks: np.ndarray | None,
        *,
        keep: Keep,
        mode: Literal["adc", "milvus"],
        nprobe: int | None = None,
        least: int = 1,
        milvus: MilvusSide | None = None,
    ) -> None:
        super().__init__(store, milvus)
        if mode not in ("adc", "milvus"):
            raise ParameterError(f"quantizer mode '{mode}': use 'adc' or 'milvus'")
        if mode == "adc":
            if codebooks is None:
                raise ParameterError("QuantizedFilter(mode='adc') needs the model's codebooks")
            expected = (self.meta.M, 2**self.meta.K, self.meta.H // self.meta.M)
            if tuple(codebooks.shape) != expected:
                raise ParameterError(
                    f"codebooks of shape {codebooks.shape}: the gallery needs {expected}"
                )
            self.codebooks = np.asarray(codebooks, dtype=np.float32)
        self.keep, self.least = keep, least
        self.mode = mode
        self.nprobe = nprobe or self.meta.nlist

    def __call__(self, queries: Encoded, candidates: Candidates | None = None) -> Candidates:
        available = self._live() if candidates is None else candidates.width
        head = np.asarray(queries.head, dtype=np.float32)
        if self.mode == "milvus":
            limit = resolve_keep(self.keep, available, least=self.least)
            return self._milvus(head, candidates, limit)
        limit = resolve_keep(self.keep, available, cap=max(available, 1), least=self.least)
        lut = adc_tables(head, self.codebooks)  # (nq, M, 2**K)
        if candidates is None:
            codes = self.store.codes("codes")
            scores = adc_scores(lut, codes)  # every item: (nq, rows)
            dead = self.store.dead()
            if dead is not None:
                scores[:, dead] = -np.inf
            ids = np.broadcast_to(np.arange(scores.shape[1], dtype=np.int64), scores.shape)
            ids = np.where(np.isfinite(scores), ids, -1)
            return Candidates.top(ids, scores, limit)
        ids = candidates.ids
        codes = self.store.codes("codes")[np.where(ids >= 0, ids, 0)]  # (nq, n, M)
        return Candidates.top(ids, adc_scores(lut, codes), limit)

    def _milvus(self, head: np.ndarray, candidates: Candidates | None, limit: int) -> Candidates:
        side, params = self._side("mode 'milvus'"), {"nprobe": self.nprobe}
        if candidates is None:
            ids, dist = side.search("head", head, limit, "IP", params)
            return Candidates(ids, np.where(ids >= 0, dist, -np.inf).astype(np.float32))
        ids = np.full((len(head), limit), -1, dtype=np.int64)
        scores = np.full((len(head), limit), -np.inf, dtype=np.float32)
        for q, row in enumerate(candidates.ids):
            row = row[row >= 0]
            if not len(row):
                continue
            got, dist = side.search("head", head[q : q + 1], min(limit, len(row)), "IP", params,
                                    ids=row)  # fmt: skip
            ids[q, : got.shape[1]], scores[q, : got.shape[1]] = got[0], dist[0]
        return Candidates(ids, np.where(ids >= 0, scores, -np.inf).astype(np.float32))


class AnnFilter(_GalleryStage):
    """Stage 1 for large galleries: approximate dense similarity, top Q, from the local tier's
    ANN index (faiss: PCA to 256 dims, an IVF partition, RaBitQ sign codes with their
    correction factors; ~48 B an item; deleted ids removed). `nprobe` lists are scanned; scores
    approximate the dense inner product (unit vectors: 1 - |q - x|^2 / 2)."""

    name = "ann"

    def __init__(self, store: LocalTier, *, keep: int, nprobe: int | float) -> None:
        if not hasattr(store, "ann_search"):
            raise ParameterError("AnnFilter reads the gallery's local tier (tier='local')")
        super().__init__(store)
        self.keep = keep
        self.nprobe = nprobe

    def lists(self) -> int:
        """IVF lists scanned: `nprobe` as a count or a fraction of the index's lists."""
        nlist = self.store.ann_lists()
        return resolve_keep(self.nprobe, nlist, cap=nlist)

    def __call__(self, queries: Encoded, candidates: Candidates | None = None) -> Candidates:
        if candidates is not None:
            raise ParameterError("AnnFilter searches the whole gallery: put it first")
        live = self._live()
        limit = resolve_keep(self.keep, max(live, 1), cap=max(live, 1))
        ids, scores = self.store.ann_search(queries.dense, limit, self.lists())
        return Candidates(ids, scores)


class MilvusAnn(_GalleryStage):
    """Stage 1 of the server-side mode on large galleries: Milvus's HNSW index on the dense
    field, top `keep` by inner product, `ef` candidates examined (at least `keep`). HNSW keeps
    the vectors, so the scores of the hits it finds are exact: no rescoring stage follows, and
    no vector leaves the server. Deleted items are deleted in Milvus too: never returned."""

    name = "ann"

    def __init__(
        self, store: GalleryReader, *, keep: int, ef: int, milvus: MilvusSide | None = None
    ) -> None:
        super().__init__(store, milvus)
        self.keep, self.ef = keep, ef

    def __call__(self, queries: Encoded, candidates: Candidates | None = None) -> Candidates:
        if candidates is not None:
            raise ParameterError("MilvusAnn searches the whole gallery: put it first")
        limit = resolve_keep(self.keep, max(self._live(), 1))
        params = {"ef": min(MAX_TOPK, max(self.ef, limit))}
        return self._dense_search("the server-side ANN", queries.dense, limit, params)


class ExactRescore(_GalleryStage):
    """Stage 3: exact dense similarity of the survivors, top k.

    mode `read`: the survivors' vectors are read from the store (one read each, shared within
    a batch) and scored in one matmul. mode `search`: a Milvus search of the dense collection
    filtered to each query's survivors (`id in [...]`, one request per query): only the top k
    travel back. `auto`: `read` from the local tier; from Milvus, `read` when a batch's
    survivors overlap (a small gallery), else `search`: fetching a dense vector through a
    Milvus query costs about as much as filtering and scoring FETCH_COST ids in a search
    (benchmarks/bench_client.py times both). A filtered search scores every survivor only on
    FLAT, or on HNSW (`dense_index`) when the survivors are a small share of the gallery
    (HNSW_EXACT_SHARE); otherwise `auto` reads.

    As a first stage it is exact brute-force search: a scan of the local tier's vectors, or a
    Milvus search of a FLAT dense field; on an HNSW field Milvus answers from its graph (ef =
    FIRST_EF_FACTOR times k), which is approximate.
    """

    name = "dense"
    FETCH_COST = 8
    FIRST_EF_FACTOR = 4
    SCAN_ROWS = 16384  # the first stage's scan reads the tier's vectors in blocks of this many

    def __init__(
        self,
        store: GalleryReader,
        *,
        keep: Keep,
        mode: Literal["auto", "read", "search"] = "auto",
        milvus: MilvusSide | None = None,
        dense_index: str = "FLAT",
    ) -> None:
        super().__init__(store, milvus)
        if mode not in ("auto", "read", "search"):
            raise ParameterError(f"exact stage mode '{mode}': use 'auto', 'read' or 'search'")
        self.keep = keep
        self.mode = mode
        self.dense_index = dense_index

    def __call__(self, queries: Encoded, candidates: Candidates | None = None) -> Candidates:
        dense = np.asarray(queries.dense, dtype=np.float32)
        if candidates is None:
            return self._first(dense)
        limit = resolve_keep(self.keep, candidates.width)
        ids = candidates.ids
        valid = ids >= 0
        if not valid.any():
            return Candidates.top(ids, np.zeros(ids.shape, np.float32), limit)
        unique, inverse = np.unique(np.where(valid, ids, ids.max()), return_inverse=True)
        mode = self.mode
        remote = getattr(self.store, "remote", False)
        if mode == "auto":
            overlap = len(unique) * self.FETCH_COST < valid.sum()
            share = 1.0 if self.dense_index == "FLAT" else HNSW_EXACT_SHARE
            few = valid.sum(axis=1).max() <= share * max(self._live(), 1)
            mode = "search" if remote and not overlap and few else "read"
        if mode == "search":
            return self._search(dense, ids, limit)
        if len(unique) * len(ids) > 4 * valid.sum():
            # Little overlap between the queries' survivors (a large gallery): score each
            # query against its own survivors only, not against every query's. From the local
            # tier they are read straight into place (nq, n, D); a Milvus fetch returns an id
            # once however often it is asked for.
            if remote:
                own = np.asarray(self.store.dense(unique), np.float32)[inverse]
            else:
                own = self.store.dense(np.where(valid, ids, unique[0]).reshape(-1))
            own = own.reshape(*ids.shape, -1)
            return Candidates.top(ids, np.einsum("qnd,qd->qn", own, dense), limit)
        vectors = np.asarray(self.store.dense(unique), np.float32)
        sims = dense @ vectors.T  # (nq, unique)
        scores = np.take_along_axis(sims, inverse.reshape(ids.shape), axis=1)
        return Candidates.top(ids, scores, limit)

    def _first(self, dense: np.ndarray) -> Candidates:
        """Brute force over the whole gallery: the local tier scanned, or Milvus's search."""
        limit = resolve_keep(self.keep, max(self._live(), 1))
        if not getattr(self.store, "remote", False):
            dead = self.store.dead()
            best = Candidates(np.full((len(dense), 0), -1, np.int64), np.zeros((len(dense), 0),
                              np.float32))  # fmt: skip
            for lo in range(0, self.store.rows, self.SCAN_ROWS):
                block = np.arange(lo, min(self.store.rows, lo + self.SCAN_ROWS))
                if dead is not None:
                    block = block[~dead[block]]
                if not len(block):
                    continue
                scores = dense @ np.asarray(self.store.dense(block), np.float32).T
                ids = np.broadcast_to(block, scores.shape)
                best = Candidates.top(np.hstack([best.ids, ids]),
                                      np.hstack([best.scores, scores]), limit)  # fmt: skip
            return best
        params = None
        if self.dense_index != "FLAT":
            params = {"ef": min(MAX_TOPK, self.FIRST_EF_FACTOR * limit)}
        return self._dense_search("the exact stage as a first stage", dense, limit, params)

    def _search(self, dense: np.ndarray, ids: np.ndarray, limit: int) -> Candidates:
        side = self._side("mode 'search'")
        out_ids = np.full((len(ids), limit), -1, dtype=np.int64)
        out_scores = np.full((len(ids), limit), -np.inf, dtype=np.float32)
        for q, row in enumerate(ids):
            row = row[row >= 0]
            if not len(row):
                continue
            got, dist = side.search("dense", dense[q : q + 1], min(limit, len(row)), "IP",
                                    ids=row)  # fmt: skip
            n = got.shape[1]
            out_ids[q, :n], out_scores[q, :n] = got[0], np.where(got[0] >= 0, dist[0], -np.inf)
        return Candidates(out_ids, out_scores)


class Rerank(_GalleryStage):
    """Stage 4: re-order each query's top z by similarity + consistency + complementarity."""

    name = "rerank"

    def __init__(self, store: GalleryReader, reranker: Reranker) -> None:
        super().__init__(store)
        self.reranker = reranker

    def __call__(self, queries: Encoded, candidates: Candidates | None = None) -> Candidates:
        if candidates is None:
            raise ParameterError("Rerank re-orders candidates: put it after a filter stage")
        ids, scores, vectors, neighbours = self.inputs(queries, candidates, self.reranker.z)
        return Candidates(*self.reranker.rerank(ids, scores, vectors, neighbours))

    def inputs(
        self, queries: Encoded, candidates: Candidates, z: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """What the re-ranker needs for the top z: (ids, scores) with the top z sorted by dense
        similarity, and their embeddings and neighbour statistics (nq, z, ...)."""
        z = min(z, candidates.width)
        top = candidates.ids[:, :z]
        got = self._gather(top, ["dense", "neighbours"])
        # Similarities from the embeddings themselves, whatever scored the previous stage.
        sims = np.einsum("qzd,qd->qz", got["dense"], np.asarray(queries.dense, np.float32))
        sims = np.where(top >= 0, sims, -np.inf)
        order = np.argsort(-sims, axis=1, kind="stable")
        vectors = np.take_along_axis(got["dense"], order[..., None], axis=1)
        neighbours = np.take_along_axis(got["neighbours"], order[..., None], axis=1)
        ids = np.concatenate([np.take_along_axis(top, order, 1), candidates.ids[:, z:]], axis=1)
        scores = np.concatenate(
            [np.take_along_axis(sims, order, 1), candidates.scores[:, z:]], axis=1
        )
        return ids, scores, vectors, neighbours


@dataclass(frozen=True)
class StageTrace:
    """One stage's output for a query batch and the wall time it took."""

    name: str
    candidates: Candidates
    seconds: float


class Cascade:
    """Stages run in order, each narrowing or re-ordering the previous one's candidates."""

    def __init__(self, stages: list[Stage]) -> None:
        if not stages:
            raise ParameterError("a cascade needs at least one stage")
        self.stages = list(stages)

    def __call__(self, queries: Encoded) -> Candidates:
        return self.trace(queries)[-1].candidates

    def trace(self, queries: Encoded) -> list[StageTrace]:
        """Every stage's output with its latency."""
        traces, candidates = [], None
        for stage in self.stages:
            start = time.perf_counter()
            candidates = stage(queries, candidates)
            traces.append(StageTrace(stage.name, candidates, time.perf_counter() - start))
        return traces
