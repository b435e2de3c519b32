"""The local tier against Milvus: the loader writes it, the searcher reads it, and the results
equal the server-side mode's; a stale or damaged tier is rebuilt from Milvus."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from meet_milvus import MeetSearcher
from meet_milvus import gallery_layout as cols
from meet_milvus.server import connect
from meet_milvus.tier import read_tier, tier_dir

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def texts(runtime_settings):
    from meet_milvus_loaders.precomp import load_split

    return load_split(runtime_settings.data_dir, "demo", "test").captions[:8]


def test_the_load_writes_both_tiers_and_releases_the_collections(
    runtime_settings, demo_gallery, demo_checkpoint
):
    from meet_milvus_loaders.milvus_loader import load

    client = connect(runtime_settings)
    gallery = cols.open_gallery(client, demo_gallery)
    cols.load_all(client, gallery.collections())  # as another test or a server-side search may
    load(runtime_settings, demo_gallery, checkpoint=demo_checkpoint, data="demo", progress=False)
    for modality in cols.MODALITIES:
        tier = read_tier(tier_dir(runtime_settings, demo_gallery, modality))
        assert tier.meta == gallery.meta[modality]
    states = {n: client.get_load_state(n)["state"].name for n in gallery.collections()}
    assert set(states.values()) == {"NotLoad"}, states


@pytest.mark.parametrize(
    "overrides", [{}, {"rerank": False}, {"hash": False}, {"hash": False, "pq": False}]
)
def test_local_tier_and_server_side_give_the_same_hits(
    runtime_settings, demo_gallery, texts, overrides
):
    local = MeetSearcher(demo_gallery, settings=runtime_settings, **overrides)
    server = MeetSearcher(demo_gallery, settings=runtime_settings, tier="server", **overrides)
    got_local, got_server = local.search(texts, k=5), server.search(texts, k=5)
    for a, b in zip(got_local, got_server, strict=True):
        assert [(h.id, h.source, h.external_id, h.image) for h in a] == [
            (h.id, h.source, h.external_id, h.image) for h in b
        ]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)


def test_the_ann_filter_with_every_list_finds_the_exact_hits(
    runtime_settings, demo_gallery, texts
):
    exact = MeetSearcher(demo_gallery, settings=runtime_settings, hash=False, pq=False,
                         rerank=False)  # fmt: skip
    ann = MeetSearcher(demo_gallery, settings=runtime_settings, filter="ann", ann_nprobe=1.0,
                       ann_keep=1000, rerank=False)  # fmt: skip
    stages = ann.search(texts[0], k=3, diagnostics=True)[0].stages
    assert list(stages) == ["ann", "dense"]
    assert [[h.id for h in r] for r in ann.search(texts, k=5)] == [
        [h.id for h in r] for r in exact.search(texts, k=5)
    ]


def test_a_stale_or_damaged_tier_is_rebuilt_from_milvus(runtime_settings, demo_gallery, texts):
    before = MeetSearcher(demo_gallery, settings=runtime_settings).search(texts, k=5)
    path = tier_dir(runtime_settings, demo_gallery, "image")
    info = json.loads((path / "tier.json").read_text())
    info["gallery"]["fingerprint"] = "another model"
    (path / "tier.json").write_text(json.dumps(info))
    rebuilt = MeetSearcher(demo_gallery, settings=runtime_settings).search(texts, k=5)
    assert read_tier(path).meta.fingerprint != "another model"
    shutil.rmtree(path)  # gone altogether: rebuilt too
    again = MeetSearcher(demo_gallery, settings=runtime_settings).search(texts, k=5)
    ids = [[h.id for h in r] for r in before]
    assert [[h.id for h in r] for r in rebuilt] == ids == [[h.id for h in r] for r in again]


def test_the_filter_setting_is_checked(runtime_settings, demo_gallery):
    from meet_milvus.errors import MeetError

    with pytest.raises(MeetError, match="filter"):
        MeetSearcher(demo_gallery, settings=runtime_settings, filter="nope")


def test_the_server_side_ann_is_milvus_hnsw_with_exact_scores(
    runtime_settings, demo_gallery, texts
):
    from meet_milvus.errors import ParameterError

    client = connect(runtime_settings)
    gallery = cols.open_gallery(client, demo_gallery)
    assert {gallery.dense_index(client, m) for m in cols.MODALITIES} == {"HNSW"}
    exact = MeetSearcher(demo_gallery, settings=runtime_settings, hash=False, pq=False,
                         rerank=False)  # fmt: skip
    ann = MeetSearcher(demo_gallery, settings=runtime_settings, tier="server", filter="ann",
                       rerank=False)  # fmt: skip
    assert list(ann.search(texts[0], k=3, diagnostics=True)[0].stages) == ["ann"]
    for a, b in zip(ann.search(texts, k=5), exact.search(texts, k=5), strict=True):
        assert [h.id for h in a] == [h.id for h in b]  # the gallery is far smaller than ef
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
    # A gallery made before the dense field had HNSW: the server-side ANN is refused.
    cols.rebuild_dense_index(client, gallery, "FLAT")
    try:
        old = cols.open_gallery(client, demo_gallery)
        assert old.dense_index(client, "image") == "FLAT"
        refused = MeetSearcher(demo_gallery, settings=runtime_settings, tier="server",
                               filter="ann")  # fmt: skip
        with pytest.raises(ParameterError, match="the server-side ANN needs HNSW"):
            refused.search(texts[0])
    finally:
        cols.rebuild_dense_index(client, gallery, "HNSW")
    assert cols.open_gallery(client, demo_gallery).dense_index(client, "text") == "HNSW"
