"""The local tier: rows written in chunks read back exactly, the ANN stage and the exact stage
reading it agree with brute force, and a tier that does not match its gallery is refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from meet_milvus.cascade import AnnFilter, Cascade, ExactRescore
from meet_milvus.errors import MeetError
from meet_milvus.gallery_layout import GalleryMeta
from meet_milvus.tier import fresh_info, read_tier
from meet_milvus.tier_write import ann_nlist, write_tier

pytestmark = pytest.mark.unit

ROWS, DIM, H, M = 3000, 32, 64, 8


def _meta(rows: int = ROWS) -> GalleryMeta:
    return GalleryMeta(
        gallery="g", modality="image", layout="split", fingerprint="f" * 16, H=H, M=M, K=8,
        embed_dim=DIM, neighbours=4, rows=rows, nlist=16, source="test/test",
    )  # fmt: skip


def _rows(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    return {
        "hash": rng.integers(0, 256, (ROWS, H // 8), dtype=np.uint8),
        "codes": rng.integers(0, 256, (ROWS, M), dtype=np.uint8),
        "dense": dense,
        "neighbours": -np.sort(-rng.random((ROWS, 4), dtype=np.float32), axis=1),
        "image": np.arange(ROWS, dtype=np.int64) // 2,
        "source": [f"item {i} – ünïcode" for i in range(ROWS)],
        "external_id": [f"ext/{i}" for i in range(ROWS)],
    }


def _chunks(rows: dict, step: int = 700):
    for lo in range(0, ROWS, step):
        yield {f: v[lo : lo + step] for f, v in rows.items()}


@pytest.fixture(scope="module")
def tier_and_rows(tmp_path_factory):
    rows = _rows()
    path = tmp_path_factory.mktemp("tier") / "image"
    write_tier(path, _meta(), _chunks(rows), echo=None)
    return read_tier(path), rows


def test_rows_read_back_exactly(tier_and_rows):
    tier, rows = tier_and_rows
    ids = np.array([2999, 0, 17, 17, 1500])  # any order, repeats allowed
    np.testing.assert_array_equal(tier.dense(ids), rows["dense"][ids])
    np.testing.assert_array_equal(tier.neighbours(ids), rows["neighbours"][ids])
    np.testing.assert_array_equal(tier.image(ids), rows["image"][ids])
    assert tier.text("source", ids) == [rows["source"][i] for i in ids]
    assert tier.text("external_id", ids) == [rows["external_id"][i] for i in ids]
    np.testing.assert_array_equal(tier.codes("hash"), rows["hash"])
    np.testing.assert_array_equal(tier.codes("codes"), rows["codes"])


def test_rows_read_cold_equal_rows_read_warm(tier_and_rows):
    """Rows the page cache lacks are asked of the disk together and read after: the same
    rows, in the caller's order, whichever of them were cached."""
    tier, rows = tier_and_rows
    ids = np.random.default_rng(1).integers(0, ROWS, 1000)
    tier.drop_page_cache()
    np.testing.assert_array_equal(tier.dense(ids), rows["dense"][ids])
    half = ids[::2]
    tier.drop_page_cache()
    tier.dense(half)  # some rows cached, others not
    np.testing.assert_array_equal(tier.dense(ids), rows["dense"][ids])
    tier.drop_page_cache()
    assert tier.text("source", ids) == [rows["source"][i] for i in ids]


def test_ids_outside_the_gallery_are_refused(tier_and_rows):
    tier, _ = tier_and_rows
    with pytest.raises(MeetError, match="outside 0..2999"):
        tier.dense(np.array([3000]))


def test_ann_with_every_list_then_exact_equals_brute_force(tier_and_rows):
    tier, rows = tier_and_rows
    nlist = tier.info["ann"]["nlist"]
    assert nlist == ann_nlist(ROWS) == tier.ann_lists()
    cascade = Cascade([AnnFilter(tier, keep=ROWS, nprobe=1.0), ExactRescore(tier, keep=10)])
    rng = np.random.default_rng(2)
    q = rng.standard_normal((5, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    class Queries:
        dense = q

    found = cascade(Queries())
    sims = q @ rows["dense"].T
    expected = np.sort(sims, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(found.scores, expected, rtol=1e-5, atol=1e-6)


def test_fewer_lists_scan_fewer_items(tier_and_rows):
    tier, _ = tier_and_rows
    q = tier.dense(np.arange(3))
    nlist = tier.info["ann"]["nlist"]
    ids_one, _ = tier.ann_search(q, ROWS, 1)
    ids_all, _ = tier.ann_search(q, ROWS, nlist)
    assert (ids_one >= 0).sum() < (ids_all >= 0).sum() == 3 * ROWS
    # An item's own vector is found by its own list.
    assert all(i in row for i, row in zip(range(3), ids_one, strict=True))


def test_a_tier_short_of_rows_is_not_written(tmp_path):
    rows = _rows()
    short = {f: v[:-1] for f, v in rows.items()}
    with pytest.raises(MeetError, match="2999 rows written .* records 3000"):
        write_tier(tmp_path / "image", _meta(), iter([short]), echo=None, rows=ROWS)
    assert not (tmp_path / "image").exists()
    assert not list(tmp_path.iterdir())  # no half-built folder left behind


def test_reading_a_missing_tier_is_a_clear_error(tmp_path):
    with pytest.raises(MeetError, match="tier.json"):
        read_tier(tmp_path / "nothing")


@pytest.mark.parametrize("width", [40, 2000])  # little overlap between queries, and much
def test_exact_stage_on_the_tier_scores_each_querys_survivors(tier_and_rows, width):
    from meet_milvus.cascade import Candidates

    tier, rows = tier_and_rows
    rng = np.random.default_rng(3)
    ids = np.stack([rng.choice(ROWS, width, replace=False) for _ in range(6)])
    ids[0, -3:] = -1  # a row that ran short
    q = rng.standard_normal((6, DIM)).astype(np.float32)

    class Queries:
        dense = q

    got = ExactRescore(tier, keep=10)(
        Queries(), Candidates(ids, np.zeros(ids.shape, np.float32))
    )
    for row, found, scores, query in zip(ids, got.ids, got.scores, q, strict=True):
        row = row[row >= 0]
        sims = rows["dense"][row] @ query
        order = np.argsort(-sims, kind="stable")[:10]
        assert found.tolist() == row[order].tolist()
        np.testing.assert_allclose(scores, sims[order], rtol=1e-5)


def test_a_tier_built_before_a_new_gallery_field_stays_fresh(tier_and_rows, tmp_path):
    path = tmp_path / "image"
    shutil.copytree(tier_and_rows[0].path, path)
    info = json.loads((path / "tier.json").read_text())
    del info["gallery"]["dense_index"]  # as an earlier meet-milvus wrote it
    (path / "tier.json").write_text(json.dumps(info))
    assert fresh_info(path, _meta()) is not None  # the field's default on both sides
    assert fresh_info(path, _meta().model_copy(update={"dense_index": "FLAT"})) is None
    assert fresh_info(path, _meta(ROWS - 1)) is None  # another load
    info["gallery"]["H"] = "sixty-four"
    (path / "tier.json").write_text(json.dumps(info))
    assert fresh_info(path, _meta()) is None  # unreadable: rebuilt, not a traceback
