"""The re-ranker's maths (numpy only): reverse ranks, complementarity, consistency, re-ordering."""

import numpy as np
import pytest

from meet_milvus.errors import MeetError
from meet_milvus.rerank import Reranker, complementarity, consistency, reverse_ranks

pytestmark = pytest.mark.unit


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_reverse_rank_counts_stored_neighbours_above_the_query():
    neighbours = np.array([[[0.9, 0.8, 0.5], [0.4, 0.3, 0.2]]])  # (1 query, 2 candidates, k=3)
    sims = np.array([[0.85, 0.45]])
    assert reverse_ranks(sims, neighbours).tolist() == [[1, 0]]
    assert reverse_ranks(np.array([[0.1, 0.1]]), neighbours).tolist() == [[3, 3]]
    # The query itself stored as a neighbour, a float rounding away: a tie, not a rank.
    assert reverse_ranks(np.array([[0.8 - 1e-6, 0.4 - 1e-6]]), neighbours).tolist() == [[1, 0]]


def test_complementarity_is_one_at_the_top_and_zero_past_k():
    scores = complementarity(np.array([0, 1, 5, 10, 50]), k=10)
    assert scores[0] == 1.0 and scores[-1] == 0.0 and scores[-2] == 0.0
    assert np.all(np.diff(scores) <= 0)


def test_consistency_favours_candidates_that_agree_with_the_attended_others():
    rng = np.random.default_rng(0)
    cluster = _unit(np.array([1.0, 0, 0, 0]) + 0.05 * rng.standard_normal((4, 4)))
    outlier = _unit(np.array([[0.0, 0, 1, 0]]))
    vectors = np.concatenate([cluster, outlier])[None]  # (1, 5, 4)
    sims = np.array([[0.6, 0.59, 0.58, 0.57, 0.6]])
    scores = consistency(sims, vectors, temperature=0.05)
    assert scores.shape == (1, 5)
    assert scores[0, :4].min() > scores[0, 4] + 0.5
    # Padding takes no part: its score is 0 and the others do not change.
    padded = np.concatenate([vectors, np.zeros((1, 1, 4))], axis=1)
    valid = np.array([[True] * 5 + [False]])
    again = consistency(np.concatenate([sims, [[0.0]]], 1), padded, 0.05, valid)
    assert again[0, 5] == 0.0
    np.testing.assert_allclose(again[0, :5], scores[0])


def test_no_weights_keep_the_similarity_order_and_the_tail_is_untouched():
    rng = np.random.default_rng(1)
    ids = np.array([[7, 3, 9, 1, 4, -1]])
    sims = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, -np.inf]], dtype=np.float32)
    vectors = _unit(rng.standard_normal((1, 6, 8)))
    neighbours = -np.sort(-rng.random((1, 6, 4)), axis=-1)
    out_ids, out_scores = Reranker(alpha=0, beta=0, z=3).rerank(ids, sims, vectors, neighbours)
    assert out_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(out_scores[0, :5], sims[0, :5])
    out_ids, _ = Reranker(alpha=0.5, beta=0.5, z=3).rerank(ids, sims, vectors, neighbours)
    assert sorted(out_ids[0, :3].tolist()) == [3, 7, 9]  # re-ordered only within the top z
    assert out_ids[0, 3:].tolist() == [1, 4, -1]


def test_complementarity_alone_reproduces_the_reference_reverse_rank_order():
    """MEET's reference re-orders a query's top z by the query's position in each candidate's
    ranking of all queries; with every neighbour stored, the statistics give the same order."""
    rng = np.random.default_rng(2)
    n_queries, n_items, z = 12, 30, 6
    sim = rng.standard_normal((n_queries, n_items))
    neighbours_all = -np.sort(-sim.T, axis=1)  # each item's similarities to every query
    for q in range(n_queries):
        order = np.argsort(-sim[q])
        top = order[:z]
        reference = sorted(
            top, key=lambda t: int(np.where(np.argsort(-sim[:, t]) == q)[0][0])
        )  # stable on ties like the reference's argsort of reverse ranks
        ids = order[None, :]
        sims = sim[q, order][None]
        vectors = np.zeros((1, z, 4))
        neighbours = neighbours_all[top][None]
        out, _ = Reranker(alpha=0, beta=1000, z=z).rerank(ids, sims, vectors, neighbours)
        ranks = reverse_ranks(sims[:, :z], neighbours)[0]
        assert sorted(ranks.tolist()) == [
            int(np.where(np.argsort(-sim[:, t]) == q)[0][0]) for t in reference
        ]
        assert out[0, :z].tolist() == [int(t) for t in reference]


def test_bad_parameters_are_refused():
    with pytest.raises(MeetError, match="z=0"):
        Reranker(z=0)
    with pytest.raises(MeetError, match="temperature"):
        Reranker(temperature=0)
