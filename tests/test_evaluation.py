"""Retrieval metrics against hand-computed cases (ranks written out in the comments)."""

import numpy as np
import pytest
from pydantic import ValidationError

from meet_milvus.errors import MeetError
from meet_milvus.evaluation import (
    TABLE_COLUMNS,
    TIE_POLICY,
    Recall,
    _ranks_from_similarity,
    average,
    evaluate,
    format_table,
    protocol_folds,
    recall_from_rankings,
    recall_from_similarity,
)

pytestmark = pytest.mark.unit

# Three images, six captions, a variable number per image: c0,c1 -> i0; c2 -> i1; c3,c4,c5 -> i2.
CAPTION_IMAGE = np.array([0, 0, 1, 2, 2, 2])
SIMS = np.array(
    [
        #  c0   c1   c2   c3   c4   c5
        [0.9, 0.1, 0.8, 0.3, 0.2, 0.7],  # i0: c0 c2 c5 c3 c4 c1 -> truth c0 first: rank 1
        [0.5, 0.6, 0.4, 0.9, 0.1, 0.2],  # i1: c3 c1 c0 c2 c5 c4 -> truth c2 4th: rank 4
        [0.6, 0.2, 0.3, 0.1, 0.5, 0.4],  # i2: c0 c4 c5 c2 c1 c3 -> best truth c4: rank 2
    ]
)
# text -> image, by column: c0 (.9 .5 .6) i0 first: 1; c1 (.1 .6 .2) i0 3rd: 3;
# c2 (.8 .4 .3) i1 2nd: 2; c3 (.3 .9 .1) i2 3rd: 3; c4 (.2 .1 .5) i2 first: 1;
# c5 (.7 .2 .4) i2 2nd: 2.
I2T_RANKS = [1, 4, 2]
T2I_RANKS = [1, 3, 2, 3, 1, 2]


def expected(i2t_hits, t2i_hits, medr_i2t, meanr_i2t, medr_t2i, meanr_t2i) -> Recall:
    """A Recall from hit fractions per K=(1, 5, 10), written as (hits, queries) pairs."""
    i2t = [100.0 * h / n for h, n in i2t_hits]
    t2i = [100.0 * h / n for h, n in t2i_hits]
    return Recall(
        r1_i2t=i2t[0],
        r5_i2t=i2t[1],
        r10_i2t=i2t[2],
        r1_t2i=t2i[0],
        r5_t2i=t2i[1],
        r10_t2i=t2i[2],
        rsum=sum(i2t) + sum(t2i),
        medr_i2t=medr_i2t,
        meanr_i2t=meanr_i2t,
        medr_t2i=medr_t2i,
        meanr_t2i=meanr_t2i,
    )


def assert_recall(got: Recall, want: Recall) -> None:
    for field in Recall.model_fields:
        assert getattr(got, field) == pytest.approx(getattr(want, field)), field


def test_hand_computed_ranks():
    i2t, t2i = _ranks_from_similarity(SIMS, CAPTION_IMAGE)
    assert i2t.tolist() == I2T_RANKS
    assert t2i.tolist() == T2I_RANKS


def test_hand_computed_recall():
    # i2t ranks 1 4 2: R@1 1/3, R@5 3/3; median 2, mean 7/3.
    # t2i ranks 1 3 2 3 1 2: R@1 2/6, R@5 6/6; median of 1 1 2 2 3 3 is 2, mean 12/6.
    want = expected([(1, 3), (3, 3), (3, 3)], [(2, 6), (6, 6), (6, 6)], 2, 7 / 3, 2, 2)
    assert_recall(recall_from_similarity(SIMS, CAPTION_IMAGE), want)
    assert_recall(evaluate(SIMS, CAPTION_IMAGE, "1k"), want)


def test_image_without_captions_is_gallery_only():
    # i3 has no caption: no i2t query of its own, but it outscores i0 on c0 and i1 on c2.
    sims = np.vstack([SIMS, [0.95, 0.0, 0.85, 0.0, 0.0, 0.0]])
    # i2t ranks unchanged: 1 4 2.
    # t2i: c0 (.9 .5 .6 .95) i0 2nd: 2; c1: 3; c2 (.8 .4 .3 .85) i1 3rd: 3; c3: 3; c4: 1; c5: 2.
    # ranks 2 3 3 3 1 2: R@1 1/6; median of 1 2 2 3 3 3 is 2.5, floored to 2; mean 14/6.
    want = expected([(1, 3), (3, 3), (3, 3)], [(1, 6), (6, 6), (6, 6)], 2, 7 / 3, 2, 14 / 6)
    assert_recall(recall_from_similarity(sims, CAPTION_IMAGE), want)


def test_captions_need_not_be_consecutive():
    # The same data with the captions shuffled: every metric is unchanged.
    order = np.array([4, 0, 5, 2, 1, 3])
    got = recall_from_similarity(SIMS[:, order], CAPTION_IMAGE[order])
    assert got == recall_from_similarity(SIMS, CAPTION_IMAGE)


def test_ties_are_pessimistic():
    # c0 -> i0; c1, c2 -> i1.
    sims = np.array(
        [
            [0.5, 0.5, 0.7],  # i0: c2 (.7, non-match) then c0 tied with c1 (non-match): rank 3
            [0.1, 0.7, 0.7],  # i1: its two truths tie with each other at the top: rank 1
            [0.7, 0.7, 0.7],  # i2 (no captions): gallery only
        ]
    )
    caption_image = np.array([0, 1, 1])
    i2t, t2i = _ranks_from_similarity(sims, caption_image)
    assert i2t[:2].tolist() == [3, 1]
    # c0 (.5 .1 .7): i2 above i0: 2; c1 (.5 .7 .7): i1 tied with i2: 2; c2 (.7 .7 .7): 3.
    assert t2i.tolist() == [2, 2, 3]
    got = recall_from_similarity(sims, caption_image)
    assert (got.r1_i2t, got.medr_i2t, got.meanr_i2t) == (50.0, 2.0, 2.0)
    assert (got.r1_t2i, got.medr_t2i, got.meanr_t2i) == (0.0, 2.0, 7 / 3)


def test_constant_matrix_scores_worst_rank():
    # 12 images with 2 captions each, all scores equal: every truth ranks after every non-match.
    caption_image = np.repeat(np.arange(12), 2)
    got = recall_from_similarity(np.zeros((12, 24), np.float32), caption_image)
    # i2t: 22 non-matches first, rank 23; t2i: 11 other images first, rank 12.
    want = expected([(0, 12)] * 3, [(0, 24)] * 3, 23, 23, 12, 12)
    assert_recall(got, want)


def test_dtypes_agree():
    want = recall_from_similarity(SIMS, CAPTION_IMAGE)
    assert recall_from_similarity(SIMS.astype(np.float16), CAPTION_IMAGE) == want
    assert recall_from_similarity((SIMS * 10).round().astype(np.int32), CAPTION_IMAGE) == want


def test_rankings_hand_computed():
    assert_recall(
        recall_from_rankings(
            [np.argsort(-row) for row in SIMS],
            [np.argsort(-col) for col in SIMS.T],
            CAPTION_IMAGE,
            3,
        ),
        recall_from_similarity(SIMS, CAPTION_IMAGE),
    )


def test_truncated_rankings():
    caption_image = np.array([0, 0, 1, 2])  # c0, c1 -> i0; c2 -> i1; c3 -> i2
    i2t = [
        [1, 3],  # i0: c1 first: rank 1
        [0],  # i1: c2 missing: rank 2 (= len + 1), never a hit
        [2, 3, 0],  # i2: c3 second: rank 2
    ]
    t2i = [
        [0],  # c0: i0 first: rank 1
        [],  # c1: empty list: rank 1 (= len + 1), never a hit
        [2, 1],  # c2: i1 second: rank 2
        [2],  # c3: i2 first: rank 1
    ]
    # i2t ranks 1 2 2, hits at 1/5/10: 1, 2, 2 of 3; median 2, mean 5/3.
    # t2i ranks 1 1 2 1, hits at 1/5/10: 2, 3, 3 of 4; median 1, mean 5/4.
    want = expected([(1, 3), (2, 3), (2, 3)], [(2, 4), (3, 4), (3, 4)], 2, 5 / 3, 1, 5 / 4)
    assert_recall(recall_from_rankings(i2t, t2i, caption_image, 3), want)


def test_rankings_long_lists_k_boundaries():
    # One image with one caption among 20; its caption sits at position 5, then at 11.
    caption_image = np.array([0] + [1] * 19)
    t2i = [[1, 0]] + [[1]] * 19  # every caption finds i1 first: c0 rank 2, the rest rank 1
    at5 = [1, 2, 3, 4, 0, 5, 6, 7, 8, 9, 10, 11]
    at11 = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0]
    got = recall_from_rankings([at5, list(range(1, 20))], t2i, caption_image, 2)
    assert (got.r1_i2t, got.r5_i2t, got.r10_i2t) == (50.0, 100.0, 100.0)
    got = recall_from_rankings([at11, list(range(1, 20))], t2i, caption_image, 2)
    # i0 rank 11, i1 rank 1: R@10 1/2; median of 1, 11 is 6; mean 6.
    assert (got.r1_i2t, got.r5_i2t, got.r10_i2t) == (50.0, 50.0, 50.0)
    assert (got.medr_i2t, got.meanr_i2t) == (6.0, 6.0)
    assert (got.r1_t2i, got.meanr_t2i) == (95.0, 21 / 20)


def pessimistic_order(scores: np.ndarray, is_truth: np.ndarray) -> np.ndarray:
    """Ids by descending score, a truth after a non-match it ties with (lexsort: last key first)."""
    return np.lexsort((is_truth, -scores))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_similarity_and_rankings_agree_on_random_data(seed):
    rng = np.random.default_rng(seed)
    n_images = 40
    # Variable captions per image (0 to 4), in shuffled order; small integer scores tie a lot.
    caption_image = rng.permutation(np.repeat(np.arange(n_images), rng.integers(0, 5, n_images)))
    sims = rng.integers(0, 6, (n_images, len(caption_image))).astype(np.float32)
    i2t = [pessimistic_order(sims[i], caption_image == i) for i in range(n_images)]
    t2i = [
        pessimistic_order(sims[:, c], np.arange(n_images) == g) for c, g in enumerate(caption_image)
    ]
    want = recall_from_similarity(sims, caption_image)
    assert recall_from_rankings(i2t, t2i, caption_image, n_images) == want
    # Continuous scores: any sort agrees, and a 2-D array of full rankings works too.
    sims = rng.standard_normal(sims.shape)
    got = recall_from_rankings(
        np.argsort(-sims, axis=1), np.argsort(-sims.T, axis=1), caption_image, n_images
    )
    assert got == recall_from_similarity(sims, caption_image)


@pytest.mark.unit
@pytest.mark.parametrize("depth", [None, 30])
def test_scored_rankings_tie_like_the_similarity_matrix(depth):
    # Hamming distances of 8-bit codes: a handful of values, ties everywhere. A stage lists
    # tied items in id order (as the client-side Hamming scan does); with the scores, the
    # ranked lists score exactly what the matrix scores, truncated or not (R@K, K <= 10).
    rng = np.random.default_rng(3)
    n_images, per_image = 25, 3
    caption_image = np.repeat(np.arange(n_images), per_image)
    images = rng.integers(0, 256, n_images, dtype=np.uint8)
    texts = images[caption_image] ^ rng.integers(0, 256, len(caption_image), dtype=np.uint8)
    sims = -np.unpackbits((images[:, None] ^ texts[None, :])[..., None], axis=2).sum(2)
    sims = sims.astype(np.float32)

    def ranked(rows: np.ndarray) -> tuple[list, list]:
        order = np.argsort(-rows, axis=1, kind="stable")[:, :depth]
        return list(order), list(np.take_along_axis(rows, order, axis=1))

    (i2t, i2t_scores), (t2i, t2i_scores) = ranked(sims), ranked(sims.T)
    want = recall_from_similarity(sims, caption_image)
    got = recall_from_rankings(i2t, t2i, caption_image, n_images, i2t_scores, t2i_scores)
    if depth is None:
        assert got == want
    else:
        assert got.as_row() == want.as_row()
    # Without the scores the id order breaks the ties, in the truths' favour here.
    assert recall_from_rankings(i2t, t2i, caption_image, n_images).rsum > want.rsum
    assert TIE_POLICY.startswith("ties pessimistic")


@pytest.mark.unit
def test_scored_ties_are_contiguous_runs():
    # A re-ranked head: scores need not fall along the list; only the non-matches listed right
    # after the truth with its very score go before it.
    caption_image = np.array([0, 1, 2, 3])
    t2i = [[1, 0, 2, 3], [1, 0], [2], [3]]
    t2i_scores = [[0.9, 0.5, 0.5, 0.8], [0.1, 0.1], [0.3], [0.2]]
    i2t = [[0], [1], [2], [3]]
    got = recall_from_rankings(i2t, t2i, caption_image, 4, [[1]] * 4, t2i_scores)
    # c0: i0 at 2, tied with i2 after it -> 3 (not pushed by i3's 0.8); c1: i1 first, tied
    # with i0 -> 2; c2, c3: rank 1.
    assert (got.r1_t2i, got.meanr_t2i) == (50.0, 7 / 4)
    with pytest.raises(MeetError, match=r"t2i_scores\[0\]: 1 scores for 4 ids"):
        recall_from_rankings(i2t, t2i, caption_image, 4, None, [[1], [1], [1], [1]])


def five_fold_case() -> tuple[np.ndarray, np.ndarray]:
    """10 images with one caption each: folds of 2. Perfect in folds 0-3; fold 4 (i8, i9)
    swapped; one cross-fold score sims[i0, c9] = 5 that only the whole-set protocols see."""
    sims = np.eye(10)
    sims[8:, 8:] = [[0, 1], [1, 0]]
    sims[0, 9] = 5
    return sims, np.arange(10)


def test_five_fold_average():
    sims, caption_image = five_fold_case()
    # Folds 0-3: every rank 1. Fold 4: i8 -> c9 above c8, i9 -> c8 above c9: ranks 2, 2 both ways.
    # Mean over folds: R@1 (100 * 4 + 0) / 5 = 80, R@5 = R@10 = 100; medr, meanr (1 * 4 + 2) / 5.
    want = expected([(4, 5), (5, 5), (5, 5)], [(4, 5), (5, 5), (5, 5)], 1.2, 1.2, 1.2, 1.2)
    assert_recall(evaluate(sims, caption_image, "coco_1k_5fold"), want)


def test_whole_set_protocols():
    sims, caption_image = five_fold_case()
    # i2t: i0's c9 (5) beats c0 (1): rank 2; i1..i7: 1; i8 row (.. 0, 1): c8 = 0 ties all nine
    # others: rank 10; i9 likewise: 10. Ranks 2 1 1 1 1 1 1 1 10 10: R@1 7, R@5 8, R@10 10 of 10.
    # t2i: c0..c7: 1; c8 (i8 = 0): 10; c9 (i9 = 0): 10. R@1 8, R@5 8, R@10 10 of 10; mean 28/10.
    want = expected([(7, 10), (8, 10), (10, 10)], [(8, 10), (8, 10), (10, 10)], 1, 2.9, 1, 2.8)
    assert_recall(evaluate(sims, caption_image, "coco_5k"), want)
    assert_recall(evaluate(sims, caption_image, "1k"), want)


def test_callable_sees_only_fold_blocks():
    sims, caption_image = five_fold_case()
    calls = []

    def fn(image_idx, caption_idx):
        calls.append((image_idx.tolist(), caption_idx.tolist()))
        return sims[np.ix_(image_idx, caption_idx)]

    got = evaluate(fn, caption_image, "coco_1k_5fold")
    assert got == evaluate(sims, caption_image, "coco_1k_5fold")
    assert calls == [([2 * f, 2 * f + 1], [2 * f, 2 * f + 1]) for f in range(5)]
    assert evaluate(fn, caption_image, "coco_5k") == evaluate(sims, caption_image, "coco_5k")


def test_folds_follow_caption_image():
    # 5 images, variable captions in any order: each fold holds its image's captions only.
    caption_image = np.array([4, 0, 0, 2, 1, 3, 3, 4])
    folds = protocol_folds(caption_image, 5, "coco_1k_5fold")
    assert [f.caption_idx.tolist() for f in folds] == [[1, 2], [4], [3], [5, 6], [0, 7]]
    assert all((f.caption_image == 0).all() for f in folds)
    # A trailing image without captions needs n_images for a callable.
    with pytest.raises(MeetError, match="fold 4"):
        evaluate(lambda i, c: np.zeros((len(i), len(c))), [0, 1, 2, 3], "coco_1k_5fold", 5)


def test_average_and_table():
    a = recall_from_similarity(SIMS, CAPTION_IMAGE)
    b = recall_from_similarity(np.eye(3)[:, CAPTION_IMAGE], CAPTION_IMAGE)
    mean = average([a, b])
    assert mean.rsum == pytest.approx((a.rsum + b.rsum) / 2)
    assert b.as_row() == (100.0,) * 6 + (600.0,)
    lines = format_table({"dense": a, "ideal": b}).splitlines()
    assert lines[0] == "| method | " + " | ".join(TABLE_COLUMNS) + " |"
    assert len(lines) == 4
    assert lines[3] == "| ideal | " + " | ".join(["100.0"] * 6 + ["600.0"]) + " |"
    assert lines[2].startswith(f"| dense | {a.r1_i2t:.1f} | ")
    with pytest.raises(ValidationError):
        a.rsum = 0  # frozen


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: recall_from_similarity(SIMS[:, :5], CAPTION_IMAGE), "sims: 5 columns"),
        (lambda: recall_from_similarity(SIMS[0], CAPTION_IMAGE), "sims"),
        (lambda: recall_from_similarity(SIMS[:2], CAPTION_IMAGE), "caption_image: image id 2"),
        (lambda: recall_from_similarity(SIMS, CAPTION_IMAGE - 1), "caption_image: image id -1"),
        (lambda: recall_from_similarity(SIMS, CAPTION_IMAGE * 1.0), "caption_image.*dtype"),
        (lambda: recall_from_similarity(SIMS * np.nan, CAPTION_IMAGE), "sims: contains NaN"),
        (lambda: evaluate(SIMS, CAPTION_IMAGE, "5k"), "protocol: unknown '5k'"),
        (lambda: evaluate(SIMS, CAPTION_IMAGE, "coco_1k_5fold"), "coco_1k_5fold: 3 images"),
        (lambda: evaluate(SIMS[:, :4], CAPTION_IMAGE, "1k"), "sims_or_fn: 4 columns"),
        (lambda: evaluate(SIMS, CAPTION_IMAGE, "1k", n_images=4), "n_images: 4"),
        (lambda: evaluate(lambda i, c: SIMS, CAPTION_IMAGE, "1k", 4), "sims_or_fn: returned"),
        (lambda: recall_from_rankings([[0]] * 2, [[0]] * 6, CAPTION_IMAGE, 3), "i2t: expected"),
        (lambda: recall_from_rankings([[0]] * 3, [[3]] * 6, CAPTION_IMAGE, 3), "t2i: image id 3"),
        (lambda: recall_from_rankings([[0, 0]] * 3, [[0]] * 6, CAPTION_IMAGE, 3), "i2t\\[0\\]"),
        (lambda: recall_from_rankings([[0.0]] * 3, [[0]] * 6, CAPTION_IMAGE, 3), "i2t\\[0\\]"),
        (lambda: recall_from_rankings([[0]] * 3, [[0]] * 6, CAPTION_IMAGE, 0), "n_images"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(MeetError, match=match):
        call()
