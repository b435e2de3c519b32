"""The Milvus loader on real demo data and the test Milvus: counts, idempotency, resume, refusal."""

from dataclasses import replace

import numpy as np
import pytest

from meet_milvus import gallery_layout as cols
from meet_milvus import milvus_arrays
from meet_milvus.errors import MeetError
from meet_milvus.gallery_rows import Origin, write_gallery
from meet_milvus.pool import neighbour_stats
from meet_milvus.server import connect
from meet_milvus_loaders.milvus_loader import load


@pytest.fixture(scope="module")
def client(runtime_settings):
    return connect(runtime_settings)


_dense = ["dense", "source", "external_id", "digest", "image", "neighbours"]


def _write(client, name, model, items, **kw):
    origin = Origin.of(model, "demo/test")
    if "fingerprint" in kw:
        origin = replace(origin, fingerprint=kw.pop("fingerprint"))
    return write_gallery(client, name, items, origin, progress=False, **kw)


@pytest.mark.unit
def test_neighbour_stats_are_each_items_top_similarities():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((11, 5))
    stats = neighbour_stats(a, b, k=4, chunk=3)
    expected = -np.sort(-(a @ b.T), axis=1)[:, :4]
    np.testing.assert_allclose(stats, expected, rtol=1e-5)
    wide = neighbour_stats(a, b, k=50)  # more than exist: the rest below any similarity
    np.testing.assert_allclose(wide[:, :11], -np.sort(-(a @ b.T), axis=1), rtol=1e-5)
    assert wide.shape == (7, 50) and (wide[:, 11:] == -1).all()


@pytest.mark.integration
def test_load_writes_every_row_once_and_verifies_counts(
    demo_gallery, client, runtime_settings, demo_checkpoint, split
):
    gallery = cols.open_gallery(client, demo_gallery)
    cols.load_all(client, gallery.collections())  # a load ends with them released
    split_rows = {"image": split.n_images, "text": split.n_captions}  # the gallery's split
    for modality, rows in split_rows.items():
        assert gallery.rows(modality) == rows
        for name in gallery.layout.collections(demo_gallery, modality):
            assert milvus_arrays.count(client, name) == rows
    # Loading again inserts nothing and leaves one copy of every row.
    report = load(
        runtime_settings, demo_gallery, checkpoint=demo_checkpoint, data="demo", progress=False
    )
    assert set(report.inserted.values()) == {0}
    assert report.final == report.expected
    assert sorted(set(report.final.values())) == sorted(split_rows.values())
    cols.load_all(client, gallery.collections())
    row = milvus_arrays.fetch(client, f"{demo_gallery}_text_dense", [3], ["source", "image"])
    assert row["image"][0] == 0  # captions 0..4 describe image 0
    assert report.lines()[0].startswith(f"gallery '{demo_gallery}'")


@pytest.mark.integration
def test_resume_refusal_and_drop_on_one_gallery(client, demo_items):
    model, _split, items = demo_items
    name = "t_work"
    _write(client, name, model, items, drop=True)
    layout = cols.Layout("split")

    # An interrupted load: one stage collection got only its first 37 rows.
    part = f"{name}_text_pq"
    meta = cols.read_meta(client, part)
    client.drop_collection(part)
    cols.create(client, meta)
    client.insert(
        part, [items["text"].row(i, layout.fields(name, "text", part)) for i in range(37)]
    )
    report = _write(client, name, model, items)
    captions = len(items["text"])
    assert report.before[part] == 37 and report.inserted[part] == captions - 37
    assert report.inserted[f"{name}_text_dense"] == 0
    assert report.final[part] == captions
    codes = milvus_arrays.fetch(client, part, np.arange(captions), ["codes"])["codes"]
    np.testing.assert_array_equal(codes.astype(np.uint8), items["text"].encoded.pq_codes)

    # Scattered keys (a load resumed in another order): the rest go in, each key once.
    part = f"{name}_image_hash"
    client.drop_collection(part)
    cols.create(client, cols.read_meta(client, f"{name}_image_dense"))
    client.insert(part, [items["image"].row(i, ["hash"]) for i in (0, 5)])
    report = _write(client, name, model, items)
    assert report.before[part] == 2 and report.inserted[part] == 18
    assert milvus_arrays.count(client, part) == 20

    # A key stored twice (what a crashed server's replay and a rerun load left), or a key no
    # load writes: that collection is rebuilt, and ends with each key 0..n-1 exactly once.
    cols.load_all(client, [part])
    client.insert(part, [items["image"].row(3, ["hash"])])
    client.insert(f"{name}_text_dense", [items["text"].row(0, _dense) | {"id": 500}])
    assert milvus_arrays.count(client, part) == 21
    said: list[str] = []
    report = _write(client, name, model, items, echo=said.append)
    assert any("21 rows for 20 distinct keys" in line for line in said)
    assert any("1 rows have keys outside 0..99" in line for line in said)
    assert report.inserted[part] == 20 and report.inserted[f"{name}_text_dense"] == 100
    for collection, rows in report.final.items():
        assert milvus_arrays.count(client, collection) == rows == report.expected[collection]
        ids = milvus_arrays.ids_in_range(client, collection, 0, rows + 1000)
        np.testing.assert_array_equal(ids, np.arange(rows))
    assert client.get_collection_stats(part)["row_count"] == 20

    # --drop rebuilds from nothing.
    report = _write(client, name, model, items, drop=True)
    assert set(report.before.values()) == {0}
    assert report.final == report.expected


@pytest.mark.unit
def test_layout_follows_the_server_version():
    assert cols.Layout.for_version("v2.3.5-lite").kind == "split"
    assert cols.Layout.for_version("v2.4.13").kind == "multi"
    assert cols.Layout.for_version("2.6.0").kind == "multi"
    # Milvus Lite: one collection per modality, and only the exact (flat) indexes.
    assert cols.Layout.for_version(cols.MILVUS_LITE).kind == "multi"
    assert cols.index_family(cols.MILVUS_LITE) == "flat"
    assert cols.index_family("v2.4.13") == cols.index_family("v2.3.5-lite") == "ivf"
    with pytest.raises(MeetError, match="2.3 or newer"):
        cols.Layout.for_version("v2.2.16")
    multi = cols.Layout("multi")
    assert multi.collections("coco", "image") == ["coco_image"]
    assert set(multi.fields("coco", "image", "coco_image")) >= {"hash", "head", "dense", "codes"}
    split = cols.Layout("split")
    assert split.collections("coco", "text") == [
        "coco_text_dense",
        "coco_text_hash",
        "coco_text_pq",
    ]


@pytest.mark.integration
def test_bad_names_and_missing_checkpoints_are_clear(runtime_settings, tmp_path):
    with pytest.raises(MeetError, match="collection name 'bad-name'"):
        load(runtime_settings, "bad-name")
    with pytest.raises(MeetError, match="checkpoint .*no such directory"):
        load(runtime_settings, "t_none", checkpoint=tmp_path / "nope", data="demo")
