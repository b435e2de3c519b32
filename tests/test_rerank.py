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


def _weighted(**given) -> Reranker:
    """A weighted re-ranker: the given fields over fixed ones (Reranker has no defaults)."""
    return Reranker(**{"alpha": 0.0, "beta": 0.0, "z": 30, "temperature": 0.05,
                       "mode": "weighted", **given})  # fmt: skip


def test_no_weights_keep_the_similarity_order_and_the_tail_is_untouched():
    rng = np.random.default_rng(1)
    ids = np.array([[7, 3, 9, 1, 4, -1]])
    sims = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, -np.inf]], dtype=np.float32)
    vectors = _unit(rng.standard_normal((1, 6, 8)))
    neighbours = -np.sort(-rng.random((1, 6, 4)), axis=-1)
    out_ids, out_scores = _weighted(alpha=0, beta=0, z=3).rerank(ids, sims, vectors, neighbours)
    assert out_ids.tolist() == ids.tolist()
    np.testing.assert_allclose(out_scores[0, :5], sims[0, :5])
    out_ids, _ = _weighted(alpha=0.5, beta=0.5, z=3).rerank(ids, sims, vectors, neighbours)
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
        out, _ = _weighted(alpha=0, beta=1000, z=z).rerank(ids, sims, vectors, neighbours)
        ranks = reverse_ranks(sims[:, :z], neighbours)[0]
        assert sorted(ranks.tolist()) == [
            int(np.where(np.argsort(-sim[:, t]) == q)[0][0]) for t in reference
        ]
        assert out[0, :z].tolist() == [int(t) for t in reference]


def _reference_order(sim: np.ndarray, q: int, k1: int) -> list[int]:
    """MEET's reference rule written out (i2t_rerank, at_bert/lib/evalution_AHR.py): query q's
    top k1 of a (queries x items) matrix, where items a query's filters dropped hold -10,
    sorted by q's position in each item's ranking of the queries; the rest in score order."""
    order = np.argsort(-sim[q], kind="stable")
    position = {int(t): int(np.flatnonzero(np.argsort(-sim[:, t], kind="stable") == q)[0])
                for t in order[:k1]}  # fmt: skip
    top = sorted(order[:k1].tolist(), key=position.__getitem__)  # stable: ties keep score order
    return top + order[k1:].tolist()


def _reference_inputs(sim: np.ndarray, q: int) -> tuple[np.ndarray, ...]:
    """The re-ranker's inputs for query q: its items by score, and every item's similarities
    to the queries that kept it, descending (the loader's neighbour statistics)."""
    order = np.argsort(-sim[q], kind="stable")
    neighbours = -np.sort(-sim.T, axis=1)[order]
    vectors = np.zeros((1, len(order), 2))
    return order[None], sim[q, order][None], vectors, neighbours[None]


@pytest.mark.unit
def test_reference_mode_reproduces_the_reference_rule_on_a_hand_made_case():
    # Three queries, four items; -10: dropped by that query's hash/PQ filters. Item 1 is
    # closer to query 2 (0.85) than to query 0 but query 2's filters dropped it, so query 0
    # ranks first among the queries that kept it, as it does for item 2; item 0 prefers the
    # other two queries.
    sim = np.array([
        [0.90, 0.80, 0.70, 0.10],
        [0.95, 0.20, -10.0, 0.30],
        [0.92, -10.0, 0.10, 0.20],
    ])  # fmt: skip
    assert _reference_order(sim, 0, 3) == [1, 2, 0, 3]
    ids, sims, vectors, neighbours = _reference_inputs(sim, 0)
    out, scores = Reranker.reference(3).rerank(ids, sims, vectors, neighbours)
    assert out[0].tolist() == [1, 2, 0, 3]
    np.testing.assert_allclose(scores[0], [0.80, 0.70, 0.90, 0.10])  # similarities, re-ordered
    # The weighted rule with the same statistics, but z = 4 and a small beta, does not.
    weighted, _ = _weighted(alpha=0, beta=0.05, z=4).rerank(ids, sims, vectors, neighbours)
    assert weighted[0].tolist() != [1, 2, 0, 3]


@pytest.mark.unit
@pytest.mark.parametrize("gallery, k1", [("image", 12), ("text", 15)])
def test_reference_mode_matches_the_reference_with_its_k1_per_direction(gallery, k1):
    from meet_milvus.search_config import SearchConfig

    reranker = SearchConfig(rerank="reference").reranker(gallery)
    assert (reranker.mode, reranker.z) == ("reference", k1)  # 12 for text queries, 15 image
    rng = np.random.default_rng(k1)
    # Distinct similarities 4e-4 apart (near-ties: tests/test_reference_agreement.py).
    sim = rng.permutation(40 * 60).reshape(40, 60) / (40 * 60)
    sim[rng.random(sim.shape) < 0.3] = -10.0  # filtered out
    changed = 0
    for q in range(len(sim)):
        out, _ = reranker.rerank(*_reference_inputs(sim, q))
        expected = _reference_order(sim, q, k1)
        assert out[0].tolist() == expected
        changed += expected != np.argsort(-sim[q], kind="stable").tolist()
    assert changed > 30  # the rule re-orders almost every query: the check has teeth


@pytest.mark.unit
def test_search_config_rerank_modes():
    from meet_milvus.search_config import SearchConfig

    assert SearchConfig().rerank == "weighted" and SearchConfig(rerank=True).rerank == "weighted"
    assert SearchConfig(rerank=False).rerank is False
    weighted = SearchConfig(beta=0.3, z=20).reranker("image")
    assert (weighted.mode, weighted.beta, weighted.z) == ("weighted", 0.3, 20)
    with pytest.raises(ValueError):
        SearchConfig(rerank="sideways")
    with pytest.raises(MeetError, match="re-ranking mode 'sideways'"):
        _weighted(mode="sideways")


def test_bad_parameters_are_refused():
    with pytest.raises(MeetError, match="z=0"):
        _weighted(z=0)
    with pytest.raises(MeetError, match="temperature"):
        _weighted(temperature=0)
