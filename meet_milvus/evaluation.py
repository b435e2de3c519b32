"""Retrieval metrics: R@1/5/10 both ways, rSum, median and mean rank (the VSE++/SCAN protocol).

Several captions per image, in any number and order: ``caption_image[c]`` is the index of caption
``c``'s image. Scores come from a similarity matrix (``sims[i, c]``, higher = more similar) or from
ranked candidate lists (what the search cascade returns).

Rules, the same for every entry point:

* image -> text: an image's rank is the best (smallest) rank among its ground-truth captions.
  Images with no caption are left out of the image -> text queries, but stay in the gallery that
  text -> image queries search.
* text -> image: a caption's rank is the rank of its image.
* Ranks are 1-based. R@K is the percentage of queries with rank <= K; rSum adds the six R@K
  unrounded (MEET's reference rounds each to 0.1 first: up to 0.3 apart).
  medr is ``floor(median(rank))`` and meanr ``mean(rank)``, as VSE++ reports them.
* Ties (similarity matrix) are pessimistic: a ground truth tied with a non-match ranks after it,
  so a constant matrix scores rank = gallery size, not rank 1. Ground truths tied with each other
  do not push each other down (only the best one counts).
* Ranked lists with scores (what the cascade returns, e.g. Hamming distances) follow the same
  tie policy: a ground truth ranks after the non-matches listed next to it with the same score,
  whatever order the stage broke the tie in. So a hash-only figure is the same whether it comes
  from a similarity matrix (meet-train's dev evaluation) or from the search's ranked lists
  (``meet-milvus eval``). Without scores, a list's order is its ranking.
* Truncated ranked lists: a ground truth missing from a list ranks just past it
  (``len(list) + 1``) for medr/meanr, which are then lower bounds of the full-gallery values, and it
  never counts as a hit, however short the list.

Protocols for :func:`evaluate`: ``"1k"`` scores the whole given set (Flickr30K 1K test);
``"coco_1k_5fold"`` splits the images into 5 folds of consecutive images (1000 each for COCO's
5000), each with its own captions, and averages every field over the folds; ``"coco_5k"`` scores
the whole set (COCO 5K). The sizes are not pinned to 1000/5000 so that smaller sets (the demo) run
the same protocols; the five folds need an image count divisible by 5.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from meet_milvus.errors import ParameterError

Protocol = Literal["1k", "coco_1k_5fold", "coco_5k"]
PROTOCOLS: tuple[str, ...] = ("1k", "coco_1k_5fold", "coco_5k")
N_FOLDS = 5
KS = (1, 5, 10)
TABLE_COLUMNS = (
    "R@1 (i2t)",
    "R@5 (i2t)",
    "R@10 (i2t)",
    "R@1 (t2i)",
    "R@5 (t2i)",
    "R@10 (t2i)",
    "rSum",
)
# Bounds the temporaries of the similarity path: about 16M comparisons (16 MiB of bools) at once.
_CHUNK_ELEMENTS = 1 << 24

SimilarityFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# Named wherever a figure is printed: Hamming distances tie heavily, and the policy moves them.
TIE_POLICY = "ties pessimistic: a true match ranks after every non-match scoring the same"


class Captioned(typing.Protocol):
    """What scoring needs of a data split (loaders' `Split` is one): the image of each caption."""

    caption_image: np.ndarray
    n_images: int


def topk_overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's reference top-k (rows of `truth`, k = its width) among its
    first k results in `found`: recall@k against an exact (or reference) ranking."""
    k = truth.shape[1]
    hits = [len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


class Recall(BaseModel):
    """Retrieval metrics; R@K in percent (0..100), ranks 1-based."""

    model_config = ConfigDict(frozen=True)

    r1_i2t: float
    r5_i2t: float
    r10_i2t: float
    r1_t2i: float
    r5_t2i: float
    r10_t2i: float
    rsum: float
    medr_i2t: float
    meanr_i2t: float
    medr_t2i: float
    meanr_t2i: float

    def as_row(self) -> tuple[float, ...]:
        """The values of :data:`TABLE_COLUMNS`, in order."""
        return (
            self.r1_i2t,
            self.r5_i2t,
            self.r10_i2t,
            self.r1_t2i,
            self.r5_t2i,
            self.r10_t2i,
            self.rsum,
        )


def format_table(rows: dict[str, Recall], digits: int = 1) -> str:
    """A markdown table: one line per named result, columns :data:`TABLE_COLUMNS`."""
    header = ["method", *TABLE_COLUMNS]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(TABLE_COLUMNS)) + "|",
    ]
    for name, recall in rows.items():
        cells = [name, *(f"{value:.{digits}f}" for value in recall.as_row())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def average(recalls: Sequence[Recall]) -> Recall:
    """The field-wise mean of several results (the five-fold average)."""
    if not recalls:
        raise ParameterError("recalls: nothing to average")
    fields = Recall.model_fields
    return Recall(**{f: float(np.mean([getattr(r, f) for r in recalls])) for f in fields})


# ---------------------------------------------------------------------------------------------
# Similarity matrix


def recall_from_similarity(sims: np.ndarray, caption_image: np.ndarray) -> Recall:
    """Metrics from ``sims`` (N_images, N_captions), higher = more similar; pessimistic ties."""
    sims = _check_sims(sims)
    n_images, n_captions = sims.shape
    caption_image = _check_caption_image(caption_image, n_images)
    if len(caption_image) != n_captions:
        raise ParameterError(
            f"sims: {n_captions} columns but caption_image has {len(caption_image)} captions"
        )
    i2t_rank, t2i_rank = _ranks_from_similarity(sims, caption_image)
    queries = np.bincount(caption_image, minlength=n_images) > 0
    i2t_rank = i2t_rank[queries]
    return _summarise(
        i2t_rank, np.ones_like(i2t_rank, bool), t2i_rank, np.ones_like(t2i_rank, bool)
    )


def _ranks_from_similarity(
    sims: np.ndarray, caption_image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of every image (i2t) and every caption (t2i), ties counted against."""
    n_images, n_captions = sims.shape
    columns = np.arange(n_captions)
    truth = sims[caption_image, columns]  # score of each caption with its own image
    best_truth = np.full(n_images, -np.inf, dtype=sims.dtype)
    np.maximum.at(best_truth, caption_image, truth)
    # Ground truths scoring exactly the best one count themselves in the ">=" below, once each;
    # all but one of them are taken off again, so only non-matches push an image down.
    tied_truths = np.bincount(
        caption_image, weights=truth >= best_truth[caption_image], minlength=n_images
    ).astype(np.int64)

    at_least_best = np.zeros(n_images, dtype=np.int64)
    t2i_rank = np.empty(n_captions, dtype=np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(n_images, 1))
    for start in range(0, n_captions, step):
        block = sims[:, start : start + step]
        at_least_best += np.count_nonzero(block >= best_truth[:, None], axis=1)
        # Counts the caption's own image too: that is the +1 of a 1-based rank.
        t2i_rank[start : start + step] = np.count_nonzero(
            block >= truth[None, start : start + step], axis=0
        )
    i2t_rank = at_least_best - tied_truths + 1
    return i2t_rank, t2i_rank


# ---------------------------------------------------------------------------------------------
# Ranked lists


def recall_from_rankings(
    i2t: Sequence[Sequence[int]] | np.ndarray,
    t2i: Sequence[Sequence[int]] | np.ndarray,
    caption_image: np.ndarray,
    n_images: int,
    i2t_scores: Sequence[Sequence[float]] | np.ndarray | None = None,
    t2i_scores: Sequence[Sequence[float]] | np.ndarray | None = None,
) -> Recall:
    """Metrics from ranked lists, best first: ``i2t[i]`` caption ids for image ``i``,
    ``t2i[c]`` image ids for caption ``c``. Lists may be truncated and of different lengths
    (a 2-D integer array is taken as equal-length lists); a ground truth missing from a list
    ranks ``len(list) + 1`` and is never a hit. Ids must be in range and not repeat in a list.
    With ``*_scores`` (one score per listed id, higher = better) ties are pessimistic, as for a
    similarity matrix (:data:`TIE_POLICY`); without them the list's order decides.
    """
    if int(n_images) < 1:
        raise ParameterError(f"n_images: must be at least 1, got {n_images}")
    n_images = int(n_images)
    caption_image = _check_caption_image(caption_image, n_images)
    n_captions = len(caption_image)

    lists, lengths = _pad(i2t, n_images, n_captions, "i2t", "caption")
    is_truth = (lists >= 0) & (caption_image[lists.clip(0)] == np.arange(n_images)[:, None])
    scores = _pad_scores(i2t_scores, lengths, "i2t_scores")
    i2t_rank, i2t_found = _first_hit(is_truth, lengths, scores)
    queries = np.bincount(caption_image, minlength=n_images) > 0

    lists, lengths = _pad(t2i, n_captions, n_images, "t2i", "image")
    scores = _pad_scores(t2i_scores, lengths, "t2i_scores")
    t2i_rank, t2i_found = _first_hit(lists == caption_image[:, None], lengths, scores)
    return _summarise(i2t_rank[queries], i2t_found[queries], t2i_rank, t2i_found)


def _first_hit(
    is_truth: np.ndarray, lengths: np.ndarray, scores: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of the first ground truth in each row, or length + 1 when none: its position,
    with scores moved behind the non-matches that tie with it (pessimistic)."""
    found = is_truth.any(axis=1)
    if not is_truth.shape[1]:
        rank = np.ones(len(lengths), np.int64)
    else:
        first = is_truth.argmax(axis=1)
        rank = first + 1
        if scores is not None:
            # The non-matches right after the first truth with its very score (contiguous, so
            # a re-ranked head is never compared with the raw scores after it) go before it.
            position = np.arange(is_truth.shape[1])
            listed = position < lengths[:, None]
            tied = scores == np.take_along_axis(scores, first[:, None], axis=1)
            run = np.logical_and.accumulate(tied | (position <= first[:, None]), axis=1)
            behind = run & listed & (position > first[:, None]) & ~is_truth
            rank = rank + np.count_nonzero(behind, axis=1)
    return np.where(found, rank, lengths + 1).astype(np.int64), found


def _pad_scores(
    scores: Sequence[Sequence[float]] | np.ndarray | None, lengths: np.ndarray, arg: str
) -> np.ndarray | None:
    """Ragged score lists -> (rows, longest) float64 padded with -inf; one score per listed id."""
    if scores is None:
        return None
    rows = [np.asarray(row, dtype=np.float64).reshape(-1) for row in scores]
    if len(rows) != len(lengths):
        raise ParameterError(f"{arg}: expected {len(lengths)} lists of scores, got {len(rows)}")
    padded = np.full((len(rows), int(lengths.max(initial=0))), -np.inf)
    for r, row in enumerate(rows):
        if row.size != lengths[r]:
            raise ParameterError(f"{arg}[{r}]: {row.size} scores for {lengths[r]} ids")
        if np.isnan(row).any():
            raise ParameterError(f"{arg}[{r}]: contains NaN")
        padded[r, : row.size] = row
    return padded


def _pad(
    lists: Sequence[Sequence[int]] | np.ndarray, n_rows: int, n_ids: int, arg: str, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id lists -> (n_rows, longest) int64 array padded with -1, and the lengths."""
    if isinstance(lists, np.ndarray) and lists.ndim == 2:
        if lists.dtype.kind not in "iu":
            raise ParameterError(f"{arg}: ids must be integers, got dtype {lists.dtype}")
        padded = lists.astype(np.int64, copy=False)
        lengths = np.full(len(padded), padded.shape[1], dtype=np.int64)
        flat = padded.ravel()
    else:
        rows = [np.asarray(row) for row in lists]
        for r, row in enumerate(rows):
            if row.ndim != 1 or (row.size and row.dtype.kind not in "iu"):
                raise ParameterError(f"{arg}[{r}]: expected a flat list of integer {what} ids")
        lengths = np.fromiter((row.size for row in rows), dtype=np.int64, count=len(rows))
        width = int(lengths.max(initial=0))
        flat = np.concatenate(rows).astype(np.int64) if rows else np.empty(0, np.int64)
        padded = np.full((len(rows), width), -1, dtype=np.int64)
        padded[np.arange(width) < lengths[:, None]] = flat
    if len(padded) != n_rows:
        raise ParameterError(
            f"{arg}: expected one list per {_row_name(arg)} ({n_rows}), got {len(padded)}"
        )
    bad = (flat < 0) | (flat >= n_ids)
    if bad.any():
        raise ParameterError(
            f"{arg}: {what} id {int(flat[bad.argmax()])} out of range 0..{n_ids - 1}"
        )
    ordered = np.sort(padded, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if repeated.any():
        r, c = np.argwhere(repeated)[0]
        raise ParameterError(f"{arg}[{r}]: {what} id {int(ordered[r, c])} listed more than once")
    return padded, lengths


def _row_name(arg: str) -> str:
    return "image" if arg == "i2t" else "caption"


# ---------------------------------------------------------------------------------------------
# Protocols


@dataclass(frozen=True)
class Fold:
    """One scored subset: global ids of its images and captions, and captions' local image ids."""

    image_idx: np.ndarray
    caption_idx: np.ndarray
    caption_image: np.ndarray


def protocol_folds(caption_image: np.ndarray, n_images: int, protocol: Protocol) -> list[Fold]:
    """The subsets a protocol scores (one, or five for ``coco_1k_5fold``); their results are
    averaged. Stages that produce ranked lists use this to search each fold's gallery."""
    if protocol not in PROTOCOLS:
        raise ParameterError(
            f"protocol: unknown {protocol!r}, expected one of {', '.join(PROTOCOLS)}"
        )
    caption_image = _check_caption_image(caption_image, n_images)
    if protocol != "coco_1k_5fold":
        return [Fold(np.arange(n_images), np.arange(len(caption_image)), caption_image)]
    if n_images % N_FOLDS:
        raise ParameterError(
            f"protocol coco_1k_5fold: {n_images} images do not split into {N_FOLDS} equal folds"
        )
    size = n_images // N_FOLDS
    folds = []
    for f in range(N_FOLDS):
        lo, hi = f * size, (f + 1) * size
        caption_idx = np.flatnonzero((caption_image >= lo) & (caption_image < hi))
        if not caption_idx.size:
            raise ParameterError(
                f"protocol coco_1k_5fold: fold {f} (images {lo}..{hi - 1}) has no captions"
            )
        folds.append(Fold(np.arange(lo, hi), caption_idx, caption_image[caption_idx] - lo))
    return folds


def evaluate(
    sims_or_fn: np.ndarray | SimilarityFn,
    caption_image: np.ndarray,
    protocol: Protocol,
    n_images: int | None = None,
) -> Recall:
    """Score a test set under ``protocol``.

    ``sims_or_fn`` is the full (N_images, N_captions) similarity matrix, or a callable
    ``fn(image_idx, caption_idx) -> sims`` returning the (len(image_idx), len(caption_idx)) block,
    so the five folds never need the whole matrix. ``n_images`` defaults to the matrix's rows, or
    for a callable to ``max(caption_image) + 1``; pass it when trailing images have no caption.
    """
    if not callable(sims_or_fn):
        sims = np.asarray(sims_or_fn)
        if sims.ndim != 2:
            raise ParameterError(
                f"sims_or_fn: expected a 2-D similarity matrix, got shape {sims.shape}"
            )
        if n_images is not None and n_images != sims.shape[0]:
            raise ParameterError(f"n_images: {n_images} but sims has {sims.shape[0]} rows")
        n_captions = np.asarray(caption_image).reshape(-1).size
        if sims.shape[1] != n_captions:
            raise ParameterError(
                f"sims_or_fn: {sims.shape[1]} columns but caption_image has {n_captions} captions"
            )
        folds = protocol_folds(caption_image, sims.shape[0], protocol)
        if len(folds) == 1:  # the whole matrix: no copy
            return recall_from_similarity(sims, caption_image)
        return average(
            [
                recall_from_similarity(
                    sims[f.image_idx[0] : f.image_idx[-1] + 1][:, f.caption_idx], f.caption_image
                )
                for f in folds
            ]
        )

    if n_images is None:
        n_images = int(_check_caption_image(caption_image, None).max()) + 1
    results = []
    for fold in protocol_folds(caption_image, int(n_images), protocol):
        block = np.asarray(sims_or_fn(fold.image_idx, fold.caption_idx))
        expected = (len(fold.image_idx), len(fold.caption_idx))
        if block.shape != expected:
            raise ParameterError(
                f"sims_or_fn: returned shape {block.shape}, expected {expected} "
                "(len(image_idx), len(caption_idx))"
            )
        results.append(recall_from_similarity(block, fold.caption_image))
    return average(results)


# ---------------------------------------------------------------------------------------------
# Shared


def _summarise(
    i2t_rank: np.ndarray, i2t_found: np.ndarray, t2i_rank: np.ndarray, t2i_found: np.ndarray
) -> Recall:
    def recalls(rank: np.ndarray, found: np.ndarray) -> list[float]:
        return [100.0 * float(np.mean(found & (rank <= k))) for k in KS]

    i2t = recalls(i2t_rank, i2t_found)
    t2i = recalls(t2i_rank, t2i_found)
    return Recall(
        r1_i2t=i2t[0],
        r5_i2t=i2t[1],
        r10_i2t=i2t[2],
        r1_t2i=t2i[0],
        r5_t2i=t2i[1],
        r10_t2i=t2i[2],
        rsum=sum(i2t) + sum(t2i),
        medr_i2t=float(np.floor(np.median(i2t_rank))),
        meanr_i2t=float(np.mean(i2t_rank)),
        medr_t2i=float(np.floor(np.median(t2i_rank))),
        meanr_t2i=float(np.mean(t2i_rank)),
    )


def _check_sims(sims: np.ndarray) -> np.ndarray:
    sims = np.asarray(sims)
    if sims.ndim != 2 or 0 in sims.shape:
        raise ParameterError(
            f"sims: expected a non-empty (N_images, N_captions) matrix, got {sims.shape}"
        )
    if sims.dtype.kind not in "biuf":
        raise ParameterError(f"sims: expected real numbers, got dtype {sims.dtype}")
    if sims.dtype.kind != "f":
        sims = sims.astype(np.float64)  # room for -inf as "no ground truth yet"
    elif np.isnan(sims).any():
        raise ParameterError("sims: contains NaN")
    return sims


def _check_caption_image(caption_image: np.ndarray, n_images: int | None) -> np.ndarray:
    caption_image = np.asarray(caption_image)
    if caption_image.ndim != 1 or caption_image.size == 0:
        raise ParameterError(
            f"caption_image: expected a non-empty 1-D array, got {caption_image.shape}"
        )
    if caption_image.dtype.kind not in "iu":
        raise ParameterError(
            f"caption_image: expected integer image ids, got dtype {caption_image.dtype}"
        )
    caption_image = caption_image.astype(np.int64, copy=False)
    low, high = int(caption_image.min()), int(caption_image.max())
    if low < 0 or (n_images is not None and high >= n_images):
        bound = "" if n_images is None else f" (there are {n_images} images)"
        raise ParameterError(
            f"caption_image: image id {low if low < 0 else high} out of range{bound}"
        )
    return caption_image
