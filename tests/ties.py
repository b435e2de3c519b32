"""Comparing two rankings of the same queries, ties allowed (FAISS's check_ref_knn_with_draws):
equal scores may come in any order, and the last group of equal scores in a row may have been
cut at a different member."""

from __future__ import annotations

import numpy as np


def assert_same_ranking(
    ref_ids: np.ndarray,
    ref_scores: np.ndarray,
    ids: np.ndarray,
    scores: np.ndarray,
    atol: float = 1e-5,
) -> None:
    """(nq, n) ids and scores against a reference: the scores agree position by position, and
    within every group of equal scores the ids agree as sets, except in a row's last group (the
    cut may keep different members of it: those need only be distinct and new)."""
    np.testing.assert_allclose(scores, ref_scores, atol=atol)
    for q, (a, b, s) in enumerate(zip(ref_ids, ids, ref_scores, strict=True)):
        if np.array_equal(a, b):
            continue
        at_cut = np.isclose(s, s[-1], atol=atol)
        for value in np.unique(s[~at_cut]):
            group = np.isclose(s, value, atol=atol) & ~at_cut
            assert set(a[group]) == set(b[group]), f"query {q}: ids {a[group]} != {b[group]}"
        assert len(set(b.tolist())) == len(b), f"query {q}: an id twice in {b}"
