"""Evaluate a loaded gallery through Milvus: every query of its split against the gallery, for
several methods (dense exact, hash only, PQ only, cascade, cascade + re-ranking in both modes:
the weighted default and MEET's reference rule), with R@K,
per-stage latency and the share of true matches each stage keeps; and tune the re-ranker.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from meet_milvus.cascade import Candidates, Rerank
from meet_milvus.evaluation import Captioned, Recall, recall_from_rankings, topk_overlap
from meet_milvus.inputs import check_count
from meet_milvus.model.meet_model import Encoded
from meet_milvus.rerank import Reranker
from meet_milvus.search_config import SearchConfig
from meet_milvus.searcher import MeetSearcher

DEPTH = 100  # ranked list length per query (R@10 and ranks up to 100)
DIRECTIONS = {"i2t": "text", "t2i": "image"}  # direction -> gallery modality searched

# The single-stage methods measure MEET's own codes (or none), whatever the first filter is.
METHODS: dict[str, dict] = {
    "dense exact": dict(filter="meet", hash=False, pq=False, exact=True, rerank=False),
    "hash only": dict(filter="meet", hash=True, pq=False, exact=False, rerank=False,
                      hash_keep_images=DEPTH, hash_keep_texts=DEPTH),
    "PQ only": dict(filter="meet", hash=False, pq=True, exact=False, rerank=False,
                    pq_keep_images=DEPTH, pq_keep_texts=DEPTH),
    "cascade": dict(rerank=False),
    "cascade + re-ranking": dict(rerank="weighted"),
    "cascade + reference re-ranking": dict(rerank="reference"),
}  # fmt: skip
RERANK_METHODS = {"weighted": "cascade + re-ranking", "reference": "cascade + reference re-ranking"}


@dataclass
class StageStat:
    name: str
    ms_per_query: float  # wall time of the stage over the run / queries
    width: float  # candidates it passes on (mean per query)
    kept: float  # % of queries whose true match is still among them


@dataclass
class MethodResult:
    name: str
    recall: Recall
    stages: dict[str, list[StageStat]] = field(default_factory=dict)  # direction -> stats


def truth_masks(split: Captioned) -> dict[str, callable]:
    """Per direction: (query ids, candidate ids (nq, n)) -> bool (nq, n) of true matches."""
    ci = np.asarray(split.caption_image)
    return {
        "i2t": lambda q, ids: (ids >= 0) & (ci[ids.clip(0)] == q[:, None]),
        "t2i": lambda q, ids: ids == ci[q][:, None],
    }


def run_method(
    searcher: MeetSearcher,
    name: str,
    split: Captioned,
    queries: dict[str, Encoded],
    batch: int = 256,
    config: SearchConfig | None = None,
) -> MethodResult:
    """One method over every query of both directions, on the searcher's config (or
    `config`) with the method's switches."""
    check_count(batch, "batch")
    config = (config or searcher.config).updated(**METHODS[name], exact_keep=DEPTH)
    truth = truth_masks(split)
    rankings, scores, stats = {}, {}, {}
    for direction, gallery in DIRECTIONS.items():
        encoded = queries[direction]
        cascade = searcher.cascade(gallery, k=DEPTH, config=config)
        n = len(encoded)
        seconds = np.zeros(len(cascade.stages))
        widths = np.zeros(len(cascade.stages))
        kept = np.zeros(len(cascade.stages))
        ranked, ranked_scores = [], []
        for lo in range(0, n, batch):
            q = np.arange(lo, min(n, lo + batch))
            traces = cascade.trace(encoded[q])
            for s, trace in enumerate(traces):
                ids = trace.candidates.ids
                seconds[s] += trace.seconds
                widths[s] += (ids >= 0).sum()
                kept[s] += truth[direction](q, ids).any(axis=1).sum()
            final = traces[-1].candidates.head(DEPTH)
            ranked.extend(row[row >= 0] for row in final.ids)
            ranked_scores.extend(
                s[row >= 0] for row, s in zip(final.ids, final.scores, strict=True)
            )
        rankings[direction], scores[direction] = ranked, ranked_scores
        stats[direction] = [
            StageStat(st.name, 1000 * seconds[s] / n, widths[s] / n, 100 * kept[s] / n)
            for s, st in enumerate(cascade.stages)
        ]
    recall = recall_from_rankings(
        rankings["i2t"], rankings["t2i"], split.caption_image, split.n_images,
        scores["i2t"], scores["t2i"],
    )  # fmt: skip
    return MethodResult(name, recall, stats)


def format_stages(results: list[MethodResult]) -> str:
    """A markdown table: per method, direction and stage: ms/query, width, % true kept."""
    lines = [
        "| method | direction | stage | ms/query | candidates | true match kept % |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in results:
        for direction, stats in r.stages.items():
            for st in stats:
                lines.append(
                    f"| {r.name} | {direction} | {st.name} | {st.ms_per_query:.2f} | "
                    f"{st.width:.0f} | {st.kept:.1f} |"
                )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Tuning the re-ranker (on a dev gallery, never on test)


@dataclass(frozen=True)
class TuneResult:
    alpha: float
    beta: float
    z: int
    rsum: float


def tune_rerank(
    searcher: MeetSearcher,
    split: Captioned,
    queries: dict[str, Encoded],
    alphas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4),
    betas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4),
    zs: tuple[int, ...] = (5, 10, 15, 30),
    temperature: float | None = None,
    batch: int = 256,
) -> list[TuneResult]:
    """rSum of cascade + re-ranking for every (alpha, beta, z), best first. The cascade runs
    once; the re-ranker's inputs are fetched once for the deepest z."""
    check_count(batch, "batch")
    temperature = temperature or searcher.config.temperature
    config = searcher.config.updated(rerank=False, exact_keep=DEPTH)
    prepared = {}
    for direction, gallery in DIRECTIONS.items():
        encoded = queries[direction]
        cascade = searcher.cascade(gallery, k=DEPTH, config=config)
        stage = Rerank(searcher.store(gallery), config.reranker(gallery))  # for its inputs
        parts = []
        for lo in range(0, len(encoded), batch):
            q = encoded[lo : lo + batch]
            candidates: Candidates = cascade(q)
            parts.append(stage.inputs(q, candidates, max(zs)))
        prepared[direction] = [np.concatenate(p) for p in zip(*parts, strict=True)]
    results = []
    for alpha, beta, z in itertools.product(alphas, betas, zs):
        reranker = Reranker(alpha=alpha, beta=beta, z=z, temperature=temperature, mode="weighted")
        ranked = {}
        for direction, (ids, scores, vectors, neighbours) in prepared.items():
            out, out_scores = reranker.rerank(ids, scores, vectors, neighbours)
            keep = out[:, :DEPTH] >= 0
            ranked[direction] = (
                [row[k] for row, k in zip(out[:, :DEPTH], keep, strict=True)],
                [row[k] for row, k in zip(out_scores[:, :DEPTH], keep, strict=True)],
            )
        recall = recall_from_rankings(
            ranked["i2t"][0], ranked["t2i"][0], split.caption_image, split.n_images,
            ranked["i2t"][1], ranked["t2i"][1],
        )  # fmt: skip
        results.append(TuneResult(alpha, beta, z, recall.rsum))
    return sorted(results, key=lambda r: (-r.rsum, r.alpha + r.beta, r.z))


# ---------------------------------------------------------------------------------------------
# Choosing the PQ stage's keep per direction (on a dev gallery, never on test)

PQ_KEEPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
PQ_KEEP_METHODS = ("cascade", "cascade + re-ranking")


@dataclass(frozen=True)
class KeepResult:
    keep: float
    direction: str
    method: str
    recall_sum: float  # R@1 + R@5 + R@10 of this direction
    candidates: float  # mean survivors the PQ stage passes to the exact stage


def tune_pq_keep(
    searcher: MeetSearcher,
    split: Captioned,
    queries: dict[str, Encoded],
    keeps: tuple[float, ...] = PQ_KEEPS,
    methods: tuple[str, ...] = PQ_KEEP_METHODS,
    batch: int = 256,
) -> list[KeepResult]:
    """Each direction's R@1+5+10 with the PQ stage keeping each fraction of the Hamming
    survivors (the other stages as configured); both directions run with the same keep."""
    out = []
    for keep in keeps:
        config = searcher.config.updated(pq_keep_images=keep, pq_keep_texts=keep)
        for name in methods:
            result = run_method(searcher, name, split, queries, batch, config)
            for direction in DIRECTIONS:
                r = result.recall
                total = sum(getattr(r, f"r{k}_{direction}") for k in (1, 5, 10))
                pq = next(s for s in result.stages[direction] if s.name == "pq")
                out.append(KeepResult(keep, direction, name, total, pq.width))
    return out


# ---------------------------------------------------------------------------------------------
# Which quantized stage reproduces the trained model's PQ ranking


@dataclass(frozen=True)
class PQAgreement:
    mode: str
    direction: str
    agreement: float  # % of the model's own ADC top-`depth` that the mode returns
    ms_per_query: float


def pq_agreement(
    searcher: MeetSearcher, queries: dict[str, Encoded], depth: int = 10, batch: int = 256
) -> list[PQAgreement]:
    """PQ-only search through Milvus in each quantized-stage mode, against the model's own
    ranking: ADC with the checkpoint's codebooks over the gallery's codes, in numpy."""
    check_count(batch, "batch")
    model, base = searcher.model, searcher.config
    out = []
    for direction, gallery in DIRECTIONS.items():
        encoded, items = queries[direction], queries[_other(direction)]
        reference = encoded.head @ model.pq_reconstruct(items.pq_codes, gallery).T
        expected = np.argsort(-reference, axis=1, kind="stable")[:, :depth]
        for mode in ("adc", "milvus"):
            update = dict(hash=False, pq=True, exact=False, rerank=False, pq_mode=mode)
            config = base.updated(**update, pq_keep_images=depth, pq_keep_texts=depth)
            cascade = searcher.cascade(gallery, k=depth, config=config)
            found, start = [], time.perf_counter()
            for lo in range(0, len(encoded), batch):
                found.append(cascade(encoded[lo : lo + batch]).ids[:, :depth])
            seconds = time.perf_counter() - start
            share = 100 * topk_overlap(np.concatenate(found), expected)
            out.append(PQAgreement(mode, direction, share, 1000 * seconds / len(encoded)))
    return out


def _other(direction: str) -> str:
    return "t2i" if direction == "i2t" else "i2t"
