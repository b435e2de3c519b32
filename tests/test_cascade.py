"""Each cascade stage against the loaded demo gallery, checked against numpy on the same codes."""

import time

import numpy as np
import pytest

from meet_milvus import milvus_arrays
from meet_milvus.cascade import (
    Candidates,
    Cascade,
    ExactRescore,
    HammingFilter,
    QuantizedFilter,
    Rerank,
    as_words,
    hamming_top,
    resolve_keep,
)
from meet_milvus.errors import MeetError
from meet_milvus.gallery_layout import open_gallery
from meet_milvus.milvus_arrays import MAX_TOPK
from meet_milvus.reader import MilvusReader, MilvusSide
from meet_milvus.search_config import SearchConfig
from meet_milvus.server import connect
from tests.ties import assert_same_ranking


@pytest.fixture(scope="module")
def setup(runtime_settings, demo_gallery, demo_checkpoint):
    from meet_milvus.model import load_checkpoint
    from meet_milvus_loaders.milvus_loader import encode_split
    from meet_milvus_loaders.precomp import load_split

    model = load_checkpoint(demo_checkpoint, "cpu")
    client = connect(runtime_settings)
    gallery = open_gallery(client, demo_gallery, model.config.fingerprint)
    split = load_split(runtime_settings.data_dir, "demo", "test")
    images, texts = encode_split(model, split, runtime_settings.cache_dir, 64, False)
    # The stages read the gallery from Milvus itself (the server-side store) in these tests.
    stores = {m: MilvusReader(MilvusSide(client, gallery, m)) for m in ("image", "text")}
    return stores, gallery, model, images, texts


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2)


@pytest.mark.integration
def test_hamming_filter_keeps_the_nearest_codes(setup):
    stores, gallery, _model, images, texts = setup
    stage = HammingFilter(stores["image"], keep=0.5, mode="milvus")
    out = stage(texts)
    assert out.ids.shape == (100, 10)
    dist = _hamming(texts.hash_codes, images.hash_codes)
    got = np.take_along_axis(dist, out.ids, axis=1)
    np.testing.assert_array_equal(-out.scores, got)  # scores are minus the distances
    np.testing.assert_array_equal(got, np.sort(dist, axis=1)[:, :10])  # exact: all lists probed


@pytest.mark.integration
def test_client_hamming_scan_matches_milvus(setup):
    stores, gallery, _model, images, texts = setup
    milvus = HammingFilter(stores["image"], keep=0.5, mode="milvus")(texts)
    scan = HammingFilter(stores["image"], keep=0.5, mode="client")
    out = scan(texts)
    assert_same_ranking(milvus.ids, milvus.scores, out.ids, out.scores)  # ties in any order
    dist = _hamming(texts.hash_codes, images.hash_codes)
    np.testing.assert_array_equal(np.take_along_axis(dist, out.ids, 1), -out.scores)
    assert scan.words().nbytes == 8 * gallery.meta["image"].rows  # 8 bytes an item, cached
    whole = HammingFilter(stores["image"], keep=1.0, mode="client")(texts)
    assert sorted(whole.ids[0]) == list(range(gallery.meta["image"].rows))  # no topk cap


@pytest.mark.unit
def test_hamming_top_handles_wide_codes_and_ties():
    rng = np.random.default_rng(0)
    for nbytes, limit in ((3, 50), (8, 700), (16, 1)):
        gal = rng.integers(0, 256, (1000, nbytes), dtype=np.uint8)
        gal[500:] = gal[:500]  # every distance appears at least twice: ties at the cut
        qs = rng.integers(0, 256, (4, nbytes), dtype=np.uint8)
        out = hamming_top(as_words(gal), as_words(qs), limit, 8 * nbytes)
        dist = _hamming(qs, gal)
        np.testing.assert_array_equal(-out.scores, np.sort(dist, axis=1)[:, :limit])
        np.testing.assert_array_equal(np.take_along_axis(dist, out.ids, 1), -out.scores)
        assert all(len(set(row)) == limit for row in out.ids)


@pytest.mark.integration
def test_adc_reproduces_the_models_pq_ranking(setup):
    stores, gallery, model, images, texts = setup
    stage = QuantizedFilter(stores["text"], model.codebooks, keep=15, mode="adc")
    out = stage(images)
    expected = images.head @ model.pq_reconstruct(texts.pq_codes, "text").T
    np.testing.assert_allclose(
        out.scores, np.take_along_axis(expected, out.ids, 1), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(out.scores, -np.sort(-expected, axis=1)[:, :15], atol=1e-4)


@pytest.mark.integration
def test_quantized_filter_ranks_only_the_survivors(setup):
    stores, gallery, model, images, texts = setup
    survivors = HammingFilter(stores["text"], keep=40, mode="client")(images)
    cached = QuantizedFilter(stores["text"], model.codebooks, keep=0.5, mode="adc")(
        images, survivors
    )
    assert cached.width == 20
    for row, kept in zip(survivors.ids, cached.ids, strict=True):
        assert set(kept) <= set(row)
    milvus = QuantizedFilter(stores["text"], None, keep=0.5, mode="milvus")(images, survivors)
    assert milvus.width == 20
    for row, kept in zip(survivors.ids, milvus.ids, strict=True):
        assert set(kept[kept >= 0]) <= set(row)


@pytest.mark.integration
def test_exact_rescore_is_exact(setup):
    stores, gallery, _model, images, texts = setup
    sims = texts.dense @ images.dense.T
    first = ExactRescore(stores["image"], keep=5)(texts)  # Milvus FLAT search
    np.testing.assert_allclose(first.scores, -np.sort(-sims, axis=1)[:, :5], atol=1e-5)
    candidates = Candidates(np.tile(np.arange(20), (100, 1)), np.zeros((100, 20), np.float32))
    for mode in ("auto", "search", "read"):
        rescored = ExactRescore(stores["image"], keep=5, mode=mode)(texts, candidates)
        np.testing.assert_array_equal(rescored.ids, first.ids)
        np.testing.assert_allclose(rescored.scores, first.scores, atol=1e-5)
    ragged = Candidates(
        np.where(np.arange(20) < 3, np.arange(20), -1)[None].repeat(100, 0), candidates.scores
    )  # three survivors per query: the search mode returns three, then -1
    out = ExactRescore(stores["image"], keep=5, mode="search")(texts, ragged)
    assert (out.ids[:, 3:] == -1).all() and sorted(out.ids[0, :3]) == [0, 1, 2]
    with pytest.raises(MeetError, match="exact stage mode"):
        ExactRescore(stores["image"], keep=5, mode="scan")


@pytest.mark.integration
def test_cascade_traces_every_stage(setup):
    stores, gallery, model, images, texts = setup
    cascade = Cascade(
        [
            HammingFilter(stores["image"], keep=0.6, mode="client"),
            QuantizedFilter(stores["image"], model.codebooks, keep=0.7, mode="adc"),
            ExactRescore(stores["image"], keep=5),
            Rerank(stores["image"], SearchConfig().reranker("image")),
        ]
    )
    start = time.perf_counter()
    traces = cascade.trace(texts)
    wall = time.perf_counter() - start
    assert [t.name for t in traces] == ["hash", "pq", "dense", "rerank"]
    assert [t.candidates.width for t in traces] == [12, 8, 5, 5]  # 0.7 of 12, rounded down
    # Each stage's own time: all positive, together within the call's wall time.
    assert all(t.seconds > 0 for t in traces) and sum(t.seconds for t in traces) <= wall
    final = cascade(texts)
    for before, after in zip(traces[2].candidates.ids, final.ids, strict=True):
        assert sorted(before) == sorted(after)  # re-ranking re-orders, never replaces


@pytest.mark.integration
def test_batches_and_id_chunks_do_not_change_answers(setup, monkeypatch):
    stores, gallery, model, images, texts = setup
    stage = HammingFilter(stores["text"], keep=30, mode="milvus")
    whole = stage(images)
    client = stores["text"].milvus.client
    gallery.ensure_loaded(client, gallery.collection("text", "dense"))
    rows = milvus_arrays.fetch(
        client, gallery.collection("text", "dense"), whole.ids[:, 0], ["image"]
    )
    monkeypatch.setattr(milvus_arrays, "RPC_BYTES", 12 * 30 * 3)  # 3 queries per request
    monkeypatch.setattr(milvus_arrays, "ID_CHUNK", 7)
    split = stage(images)
    np.testing.assert_array_equal(np.sort(-whole.scores, 1), np.sort(-split.scores, 1))
    again = milvus_arrays.fetch(
        client, gallery.collection("text", "dense"), whole.ids[:, 0], ["image"]
    )
    np.testing.assert_array_equal(rows["image"], again["image"])


@pytest.mark.unit
def test_stage_sizes():
    assert resolve_keep(0.3, 1000) == 300
    # Exact decimals, rounded down as MEET's reference does (int(keep * n)), no float overshoot.
    assert resolve_keep(0.55, 100) == 55 and resolve_keep(0.07, 100) == 7
    assert resolve_keep(0.29, 100) == 29  # 0.29 * 100 is 28.999999999999996 in floats
    assert resolve_keep(0.3, 1001) == 300
    assert resolve_keep(0.001, 10) == 1  # at least one survivor
    assert resolve_keep(50, 20) == 20
    assert resolve_keep(1.0, 10**6) == MAX_TOPK  # Milvus's topk limit
    assert resolve_keep(1.0, 10**6, cap=10**6) == 10**6  # client-side stages
    # A filter keeps at least the k asked for (else k > its size returns fewer hits).
    assert resolve_keep(0.3, 1000, least=500) == 500 and resolve_keep(0.3, 20, least=50) == 20
    assert resolve_keep(0.5, 10**6, least=20000) == 16384  # still within Milvus's topk
    for bad in (0, -1, 1.5, "10", True):
        with pytest.raises(MeetError):
            resolve_keep(bad, 100)


@pytest.mark.unit
def test_the_tie_aware_comparison_allows_only_ties():
    ids = np.array([[4, 7, 1, 9, 2]])
    scores = np.array([[0.9, 0.5, 0.5, 0.2, 0.2]])
    # Equal scores in another order, and another member of the last (cut) group: the same.
    assert_same_ranking(ids, scores, np.array([[4, 1, 7, 9, 3]]), scores)
    with pytest.raises(AssertionError):  # a different id among untied scores
        assert_same_ranking(ids, scores, np.array([[4, 7, 5, 9, 2]]), scores)
    with pytest.raises(AssertionError):  # the same ids with different scores
        assert_same_ranking(ids, scores, ids, scores + np.array([[0, 0, 0.1, 0, 0]]))
    with pytest.raises(AssertionError):  # an id twice
        assert_same_ranking(ids, scores, np.array([[4, 1, 7, 9, 9]]), scores)


@pytest.mark.unit
def test_deleted_items_never_pass_the_first_stages():
    rng = np.random.default_rng(1)
    gal = rng.integers(0, 256, (300, 8), dtype=np.uint8)
    dead = np.zeros(300, dtype=bool)
    dead[rng.choice(300, 120, replace=False)] = True
    qs = np.vstack([gal[np.flatnonzero(dead)[:3]], rng.integers(0, 256, (2, 8), np.uint8)])
    out = hamming_top(as_words(gal), as_words(qs), 180, 64, dead)
    assert out.ids.shape == (5, 180) and (out.ids >= 0).all()
    assert not dead[out.ids].any()  # a deleted item's own code finds everything but itself
    live = np.flatnonzero(~dead)
    dist = _hamming(qs, gal[live])
    np.testing.assert_array_equal(np.sort(-out.scores, 1), np.sort(dist, 1))
    short = hamming_top(as_words(gal), as_words(qs), 250, 64, dead)  # more than are left
    assert ((short.ids >= 0).sum(axis=1) == 180).all() and (short.ids[:, 180:] == -1).all()


class _Vectors:
    """A GalleryReader over vectors in RAM (`remote`: as Milvus, whose filtered search the exact
    stage may prefer; no MilvusSide is given, so trying one raises)."""

    def __init__(self, dense: np.ndarray, dead: np.ndarray | None = None, remote: bool = False):
        self._dense, self._dead, self.remote = dense, dead, remote
        self.rows = len(dense)
        self.meta = None
        self.reads = 0

    def dead(self):
        return self._dead

    def dense(self, ids):
        self.reads += len(ids)
        return self._dense[ids]


@pytest.mark.unit
def test_the_exact_first_stage_scans_the_local_store_exactly(monkeypatch):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1000, 16)).astype(np.float32)
    dead = np.zeros(1000, bool)
    dead[rng.choice(1000, 300, replace=False)] = True
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    monkeypatch.setattr(ExactRescore, "SCAN_ROWS", 64)  # many blocks
    store = _Vectors(vectors, dead)
    got = ExactRescore(store, keep=7)._first(queries)
    live = np.flatnonzero(~dead)
    sims = queries @ vectors[live].T
    want = live[np.argsort(-sims, axis=1, kind="stable")[:, :7]]
    assert_same_ranking(want, np.take_along_axis(queries @ vectors.T, want, 1),
                        got.ids, got.scores, atol=1e-5)  # fmt: skip
    assert store.reads == 700  # each live row once, no dead one


@pytest.mark.unit
def test_the_exact_stage_reads_where_a_filtered_hnsw_search_would_not_be_exact():
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((1000, 8)).astype(np.float32)
    queries = type("Q", (), {"dense": rng.standard_normal((2, 8)).astype(np.float32)})()
    few = Candidates(rng.choice(1000, (2, 40), replace=False), np.zeros((2, 40), np.float32))
    many = Candidates(rng.choice(1000, (2, 200), replace=False), np.zeros((2, 200), np.float32))
    store = _Vectors(vectors, remote=True)
    # HNSW: 200 of 1,000 is past HNSW_EXACT_SHARE, so the vectors are read and scored here.
    out = ExactRescore(store, keep=5, dense_index="HNSW")(queries, many)
    assert store.reads == len(np.unique(many.ids))
    sims = np.take_along_axis(queries.dense @ vectors.T, many.ids, 1)
    np.testing.assert_allclose(out.scores, -np.sort(-sims, 1)[:, :5], atol=1e-5)
    # 40 of 1,000 on HNSW, or any share on FLAT, is left to Milvus's filtered search.
    for dense_index, candidates in (("HNSW", few), ("FLAT", many)):
        with pytest.raises(MeetError, match="give the stage milvus="):
            ExactRescore(store, keep=5, dense_index=dense_index)(queries, candidates)
