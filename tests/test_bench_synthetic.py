"""The benchmark's synthetic gallery keeps its promises (small gallery, seconds)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("faiss", reason="the bench extra (faiss-cpu) trains the PQ codebooks")

from benchmarks.synthetic import SyntheticSpec, encode_head, generate  # noqa: E402

SPEC = SyntheticSpec(n_items=2_000, n_queries=50, n_clusters=40, seed=7)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    return generate(SPEC, tmp_path_factory.mktemp("bench-cache"), progress=False)


def test_recorded_top10_is_the_exact_top10(gallery):
    # Independent check in float64 over the stored (float16) gallery vectors.
    sims = gallery.q_dense.astype(np.float64) @ np.asarray(gallery.dense, np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, : SPEC.k]
    for q in range(SPEC.n_queries):
        expected = sims[q, order[q]]
        got = sims[q, gallery.truth_ids[q]]
        # Same scores in the same order (ids may only differ between exact ties).
        np.testing.assert_allclose(got, expected, atol=1e-5)
        np.testing.assert_allclose(gallery.truth_scores[q], expected, atol=1e-4)
        tenth = expected[-1]
        assert (sims[q] > tenth + 1e-5).sum() <= SPEC.k - 1


def test_shapes_and_code_contract(gallery):
    n, q = SPEC.n_items, SPEC.n_queries
    assert gallery.dense.shape == (n, SPEC.dim) and gallery.dense.dtype == np.float16
    norms = np.linalg.norm(gallery.dense.astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1, atol=2e-3)
    assert gallery.hash_codes.shape == (n, SPEC.bits // 8) and gallery.hash_codes.dtype == np.uint8
    # The hash codes are the packed signs of the tanh head (meet_milvus_training.Encoded contract).
    head = encode_head(gallery.dense, gallery.head_weight, gallery.head_bias)
    np.testing.assert_allclose(head, gallery.head, atol=1e-5)
    assert np.all(np.abs(head) < 1)
    np.testing.assert_array_equal(gallery.hash_codes, np.packbits(gallery.head > 0, axis=1))
    np.testing.assert_array_equal(gallery.q_hash_codes, np.packbits(gallery.q_head > 0, axis=1))
    # Bits are balanced (ITQ on PCA): no bit is almost always on or off.
    share = np.unpackbits(gallery.hash_codes, axis=1).mean(0)
    assert share.min() > 0.2 and share.max() < 0.8
    # PQ codes are each sub-vector's nearest codeword.
    assert gallery.codebooks.shape == (SPEC.pq_m, 2**SPEC.pq_nbits, SPEC.bits // SPEC.pq_m)
    np.testing.assert_array_equal(gallery.encode_pq(gallery.head), gallery.pq_codes)
    assert gallery.truth_ids.shape == (q, SPEC.k) and gallery.q_source.shape == (q,)


def test_queries_sit_near_their_source_and_codes_carry_the_neighbours(gallery):
    # A query's source item is its nearest neighbour almost always.
    assert (gallery.truth_ids[:, 0] == gallery.q_source).mean() > 0.9
    # Hashing is meaningful: the exact top-10 is far closer in Hamming distance than chance.
    bits = np.unpackbits(gallery.hash_codes, axis=1)
    qbits = np.unpackbits(gallery.q_hash_codes, axis=1)
    ham = (bits[None] != qbits[:, None]).sum(-1)  # (Q, N)
    top = np.take_along_axis(ham, gallery.truth_ids, 1).mean()
    assert top < 0.6 * ham.mean()


def test_deterministic_and_cached(gallery, tmp_path):
    again = generate(SPEC, tmp_path, progress=False)
    for name in ("dense", "hash_codes", "pq_codes", "q_dense", "truth_ids"):
        np.testing.assert_array_equal(getattr(again, name), getattr(gallery, name))
    cached = generate(SPEC, tmp_path, progress=False)  # read back from the cache
    assert isinstance(cached.dense, np.memmap)
    np.testing.assert_array_equal(cached.truth_ids, gallery.truth_ids)
    other = generate(SyntheticSpec(n_items=2_000, n_queries=50, n_clusters=40, seed=8), None, False)
    assert not np.array_equal(other.truth_ids, gallery.truth_ids)
