"""The Milvus 2.4+ layout executed: the demo gallery in one collection per modality on Milvus Lite
(a local .db file: BIN_FLAT / FLAT indexes), searched like the split layout on Milvus 2.3.5."""

import numpy as np
import pytest

from meet_milvus import MeetSearcher, gallery_layout
from meet_milvus.config import load_settings
from meet_milvus.server import connect, server_version
from meet_milvus_loaders.milvus_loader import load

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lite(runtime_settings, demo_checkpoint, tmp_path_factory):
    """Settings of a Milvus Lite file holding the demo gallery, loaded as `t_lite`."""
    uri = tmp_path_factory.mktemp("lite") / "gallery.db"
    settings = load_settings(
        milvus_uri=str(uri), data_dir=runtime_settings.data_dir,
        cache_dir=runtime_settings.cache_dir, device="cpu",
    )  # fmt: skip
    report = load(settings, "t_lite", checkpoint=demo_checkpoint, data="demo", drop=True,
                  progress=False)  # fmt: skip
    assert report.layout == "multi"
    return settings


def test_lite_holds_the_gallery_in_one_collection_per_modality_with_flat_indexes(lite):
    client = connect(lite)
    assert server_version(client) == gallery_layout.MILVUS_LITE
    # One collection per modality, beside the gallery's change log and reference pool.
    assert sorted(n for n in client.list_collections() if n.startswith("t_lite")) == [
        "t_lite_image", "t_lite_log", "t_lite_pool", "t_lite_text",
    ]  # fmt: skip
    for name in ("t_lite_image", "t_lite_text"):
        meta = gallery_layout.read_meta(client, name)  # the description says which indexes
        assert (meta.layout, meta.indexes) == ("multi", "flat")
        kinds = {f: client.describe_index(name, f)["index_type"] for f in ("hash", "head", "dense")}
        assert kinds == {"hash": "BIN_FLAT", "head": "FLAT", "dense": "FLAT"}


@pytest.mark.parametrize("tier", ["server", "local"])
def test_the_cascade_returns_the_split_layouts_hits(lite, runtime_settings, demo_gallery, split,
                                                    tier):  # fmt: skip
    # The same model, codes and stages; only where the gallery lives differs.
    on_lite = MeetSearcher("t_lite", settings=lite, tier=tier)
    on_split = MeetSearcher(demo_gallery, settings=runtime_settings, tier=tier)
    assert on_lite.gallery.layout.kind == "multi" and on_split.gallery.layout.kind == "split"
    texts = list(split.captions[:12])
    images = [np.asarray(split.images[i]) for i in range(8)]
    for a, b in ((on_lite.search(texts, k=10), on_split.search(texts, k=10)),
                 (on_lite.search_image(images, k=10), on_split.search_image(images, k=10))):
        assert [[h.id for h in hits] for hits in a] == [[h.id for h in hits] for hits in b]
        assert [[h.source for h in hits] for hits in a] == [[h.source for h in hits] for hits in b]
        np.testing.assert_allclose([[h.score for h in hits] for hits in a],
                                   [[h.score for h in hits] for hits in b], atol=1e-5)


def test_milvus_side_stages_run_on_the_lite_indexes(lite, runtime_settings, demo_gallery, split):
    # Hamming in Milvus (BIN_FLAT against BIN_IVF_FLAT probing every list): the same distances;
    # which of several items tied at the cut-off comes back may differ.
    on_lite = MeetSearcher("t_lite", settings=lite, tier="server", hash_mode="milvus",
                           pq=False, exact=False, rerank=False, hash_keep_images=10)  # fmt: skip
    on_split = MeetSearcher(demo_gallery, settings=runtime_settings, tier="server",
                            hash_mode="milvus", pq=False, exact=False, rerank=False,
                            hash_keep_images=10)  # fmt: skip
    texts = list(split.captions[:12])
    a = on_lite.search(texts, k=10, diagnostics=True)
    b = on_split.search(texts, k=10, diagnostics=True)
    assert [[h.score for h in hits] for hits in a] == [[h.score for h in hits] for hits in b]
    assert any(hits for hits in a)
