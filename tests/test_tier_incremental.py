"""The local tier follows a growing gallery: appended segments and tombstones are taken up by a
reader that opened the tier before them (as another process would), the ANN index takes the
new rows and drops the deleted ones without a rebuild, a rebuild is swapped in, and a reader in
another process never sees a half-written segment while a writer appends."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pytest

from meet_milvus.cascade import AnnFilter, Cascade, ExactRescore, HammingFilter, QuantizedFilter
from meet_milvus.gallery_layout import GalleryMeta
from meet_milvus.tier import ANN_REBUILD_GROWTH, read_tier
from meet_milvus.tier_write import (
    append_rows,
    mark_deleted,
    rebuild_ann,
    set_generation,
    write_tier,
)

pytestmark = pytest.mark.unit

DIM, H, M = 32, 64, 8


def _meta() -> GalleryMeta:
    return GalleryMeta(
        gallery="g", modality="image", layout="split", fingerprint="f" * 16, H=H, M=M, K=8,
        embed_dim=DIM, neighbours=4, rows=0, nlist=16, source="index",
    )  # fmt: skip


def _chunk(lo: int, hi: int) -> dict:
    """Rows lo..hi-1, each a function of its id (so any row can be checked where it is read)."""
    ids = np.arange(lo, hi)
    rng = np.random.default_rng(ids[:1] if len(ids) else 0)
    dense = rng.standard_normal((hi - lo, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return {
        "hash": (ids[:, None] * np.arange(1, H // 8 + 1)) .astype(np.uint8),
        "codes": (ids[:, None] + np.arange(M)).astype(np.uint8),
        "dense": dense,
        "neighbours": np.repeat(ids[:, None] / 1e6, 4, axis=1).astype(np.float32),
        "image": ids,
        "source": [f"item {i}" for i in ids],
        "external_id": [f"ext/{i}" for i in ids],
        "digest": [f"d{i}" for i in ids],
    }


class Q:
    def __init__(self, dense: np.ndarray, hash_codes: np.ndarray | None = None) -> None:
        self.dense = dense
        self.hash_codes = hash_codes
        self.head = np.zeros((len(dense), H), np.float32)


def test_a_reader_takes_up_new_segments_and_tombstones(tmp_path):
    path = tmp_path / "image"
    first = _chunk(0, 1000)
    write_tier(path, _meta(), iter([first]), echo=None, generation=1)
    reader = read_tier(path)  # opened before the changes, as a serving process would be
    assert reader.codes("hash").shape == (1000, H // 8) and reader.rows == 1000
    assert not reader.refresh()  # nothing changed: one stat, no reload

    second = _chunk(1000, 1300)
    append_rows(path, 1000, iter([second]), generation=2)
    mark_deleted(path, np.array([5, 1200]), generation=3)
    assert reader.refresh()
    assert reader.rows == 1300 and reader.generation == 3 and reader.live == 1298
    np.testing.assert_array_equal(reader.codes("hash")[1000:], second["hash"])  # appended
    ids = np.array([1299, 3, 1000, 999])
    np.testing.assert_array_equal(reader.dense(ids[:1]), second["dense"][-1:])
    assert reader.text("external_id", ids) == ["ext/1299", "ext/3", "ext/1000", "ext/999"]
    assert reader.text("digest", ids[:1]) == ["d1299"]
    np.testing.assert_array_equal(reader.image(ids), ids)
    assert np.flatnonzero(reader.dead()).tolist() == [5, 1200]

    # The same rows again (another process caught up first): kept, not doubled.
    assert append_rows(path, 1000, iter([second]), generation=2) == 0
    set_generation(path, 4)
    assert reader.refresh() and reader.rows == 1300 and reader.generation == 4


def test_deleted_and_added_items_in_every_first_stage(tmp_path):
    path = tmp_path / "image"
    write_tier(path, _meta(), iter([_chunk(0, 2000)]), echo=None, generation=1)
    tier = read_tier(path)
    tier.ann()  # the index in RAM before the changes: it must follow them without a rebuild
    new = _chunk(2000, 2400)
    append_rows(path, 2000, iter([new]), generation=2)
    doomed = np.array([7, 1500, 2100])
    mark_deleted(path, doomed, generation=3)
    tier.refresh()
    assert tier.info["ann"]["covers"] == 2000  # not rebuilt
    # An added item is found by its own vector; a deleted one never, even by its own.
    own = tier.dense(np.array([2300, 2100, 7]))
    ann = Cascade([AnnFilter(tier, keep=50, nprobe=1.0), ExactRescore(tier, keep=5)])(Q(own))
    assert ann.ids[0, 0] == 2300
    assert not np.isin(ann.ids, doomed).any()
    codes = tier.codes("hash")[[2100, 7, 2300]]
    hits = HammingFilter(tier, keep=2000, mode="client")(Q(own, codes))
    assert not np.isin(hits.ids, doomed).any() and (hits.ids >= 0).all()
    books = np.random.default_rng(0).standard_normal((M, 256, H // M)).astype(np.float32)
    pq = QuantizedFilter(tier, books, keep=1.0, mode="adc")(Q(own))
    assert pq.width == 2400 - 3 and not np.isin(pq.ids, doomed).any()


def test_an_outgrown_ann_index_is_rebuilt_and_swapped_in(tmp_path):
    path = tmp_path / "image"
    write_tier(path, _meta(), iter([_chunk(0, 1000)]), echo=None, generation=1)
    tier = read_tier(path)
    tier.ann()
    grown = int(1000 * ANN_REBUILD_GROWTH) + 10
    append_rows(path, 1000, iter([_chunk(1000, 1000 + grown)]), generation=2)
    tier.refresh()
    assert tier.ann_stale()
    old = tier.info["ann"]["file"]
    entry = rebuild_ann(path)
    assert entry["covers"] == 1000 + grown and entry["file"] != old
    tier.refresh()
    assert not tier.ann_stale() and tier.info["ann"]["file"] == entry["file"]
    assert tier.ann().ntotal == 1000 + grown  # the reader took up the new index


def _writer(path, segments: int, step: int) -> None:
    for n in range(1, segments + 1):
        append_rows(path, n * step, iter([_chunk(n * step, (n + 1) * step)]), generation=n + 1)
        time.sleep(0.01)


def test_a_reader_never_sees_half_a_segment_while_another_process_appends(tmp_path):
    path = tmp_path / "image"
    step, segments = 200, 25
    write_tier(path, _meta(), iter([_chunk(0, step)]), echo=None, generation=1)
    reader = read_tier(path)
    # spawn, not fork: a fork of this process copies the locks its other threads (Milvus
    # clients, faiss's OpenMP workers) may hold at that instant, and the child can hang on one.
    writer = multiprocessing.get_context("spawn").Process(target=_writer,
                                                          args=(path, segments, step))
    writer.start()
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        reader.refresh()
        n = reader.rows
        seen.append(n)
        assert n % step == 0  # whole segments only
        last = np.arange(n - step, n)
        assert reader.text("external_id", last[-1:]) == [f"ext/{n - 1}"]
        np.testing.assert_array_equal(reader.codes("codes")[last], _chunk(n - step, n)["codes"])
        np.testing.assert_array_equal(reader.dense(last), _chunk(n - step, n)["dense"])
        if n == (segments + 1) * step:
            break
    writer.join(timeout=60)
    assert writer.exitcode == 0
    assert seen[-1] == (segments + 1) * step and seen == sorted(seen)


def test_a_gallery_that_starts_empty_grows_by_segments(tmp_path):
    path = tmp_path / "image"
    write_tier(path, _meta(), iter([]), echo=None, generation=2)
    tier = read_tier(path)
    assert tier.rows == 0 and tier.info["segments"] == [] and tier.codes("hash").shape == (0, 8)
    for lo in range(0, 1500, 500):
        append_rows(path, lo, iter([_chunk(lo, lo + 500)]), generation=3 + lo // 500)
    assert append_rows(path, 1500, iter([]), generation=9) == 0  # nothing: no segment
    tier.refresh()
    assert [s["lo"] for s in tier.info["segments"]] == [0, 500, 1000]
    rebuild_ann(path)
    tier.refresh()
    assert tier.ann().ntotal == 1500  # every segment's rows in the index
    np.testing.assert_array_equal(tier.dense(np.array([0, 499, 500, 1499])),
                                  np.vstack([_chunk(0, 500)["dense"][[0, -1]],
                                             _chunk(500, 1000)["dense"][:1],
                                             _chunk(1000, 1500)["dense"][-1:]]))  # fmt: skip
