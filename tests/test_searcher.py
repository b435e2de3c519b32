"""MeetSearcher end to end on the loaded demo gallery: results, batches, diagnostics, bad input."""

import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest

from meet_milvus import MeetSearcher, SearchConfig
from meet_milvus.cascade import resolve_keep
from meet_milvus.errors import (
    GalleryMismatchError,
    GalleryNotFoundError,
    MeetError,
    ParameterError,
    ServerUnavailableError,
)
from meet_milvus.gallery_rows import Origin, write_gallery
from meet_milvus.milvus_arrays import MAX_TOPK
from meet_milvus.results import Hit
from meet_milvus_loaders.milvus_loader import encode_split, split_items
from meet_milvus_loaders.precomp import load_split
from tests.ties import assert_same_ranking


@pytest.mark.integration
def test_text_search_returns_typed_image_hits(searcher, split):
    hits = searcher.search(split.captions[0], k=5)
    assert len(hits) == 5 and all(isinstance(h, Hit) for h in hits)
    assert all(h.modality == "image" and h.source == split.image_paths[h.id] for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.integration
def test_exact_search_matches_numpy(runtime_settings, demo_gallery, searcher, split):
    exact = MeetSearcher(
        demo_gallery, settings=runtime_settings, hash=False, pq=False, rerank=False
    )
    images, texts = encode_split(exact.model, split, runtime_settings.cache_dir, 64, False)
    got = exact.search(split.captions[:3], k=4)
    expected = np.argsort(-(texts.dense[:3] @ images.dense.T), axis=1)[:, :4]
    assert [[h.id for h in row] for row in got] == expected.tolist()


@pytest.mark.integration
def test_batches_and_diagnostics(searcher, split):
    batch = searcher.search(split.captions[:3], k=3, diagnostics=True)
    assert len(batch) == 3 and all(len(row) == 3 for row in batch)
    single = searcher.search(split.captions[1], k=3)
    assert [h.id for h in batch[1]] == [h.id for h in single]
    stages = batch[0][0].stages
    assert list(stages) == ["hash", "pq", "dense", "rerank"]
    assert stages["rerank"].rank == 1 and stages["dense"].rank is not None
    assert searcher.search([], k=3) == []


@pytest.mark.integration
def test_client_hamming_and_chunked_batches_give_the_same_hits(
    runtime_settings, demo_gallery, searcher, split, monkeypatch
):
    from meet_milvus import searcher as searcher_mod

    queries = split.captions[:6]
    expected = [[h.id for h in row] for row in searcher.search(queries, k=5)]
    # The Hamming stage at its default size: the same candidates in Milvus and in the scan, up
    # to the order of equal distances and which of them the cut keeps.
    encoded = searcher.encode_texts(queries)
    milvus, client = (
        MeetSearcher(demo_gallery, settings=runtime_settings, hash_mode=m)
        .cascade("image", k=5)
        .trace(encoded)[0]
        .candidates
        for m in ("milvus", "client")
    )
    rows = searcher.gallery.meta["image"].rows
    assert milvus.width == client.width == resolve_keep(SearchConfig().hash_keep_images, rows)
    assert_same_ranking(milvus.ids, milvus.scores, client.ids, client.scores)
    monkeypatch.setattr(searcher_mod, "QUERY_CELLS", 2 * searcher.gallery.meta["image"].rows)
    chunked = searcher.search(queries, k=5)  # three cascade calls of two queries
    assert [[h.id for h in row] for row in chunked] == expected


@pytest.mark.integration
def test_image_search_by_path_and_by_features(searcher, split):
    by_path = searcher.search_image(split.image_paths[0], k=5)
    assert all(h.modality == "text" and h.source in split.captions for h in by_path)
    by_features = searcher.search_image(np.asarray(split.images[0], np.float32), k=5)
    assert [h.id for h in by_features] == [h.id for h in by_path]
    batch = searcher.search_image(np.asarray(split.images[:2], np.float32), k=2)
    assert len(batch) == 2 and [h.id for h in batch[0]] == [h.id for h in by_features[:2]]


@pytest.mark.integration
def test_bad_queries_get_one_clear_line(searcher, split):
    for text in ("", "   \n"):
        with pytest.raises(ParameterError, match="query 0: the text is empty"):
            searcher.search(text)
    for k in (0, -3, MAX_TOPK + 1):
        with pytest.raises(ParameterError, match=f"k={k}: must be an integer between 1 and "):
            searcher.search("an apple", k=k)
    with pytest.raises(ParameterError, match="image features have dim 7"):
        searcher.search_image(np.zeros((49, 7), np.float32))
    with pytest.raises(ParameterError, match="image file .*nope.jpg: not found"):
        searcher.search_image("/nope.jpg")
    with pytest.warns(UserWarning, match="tokens, the model reads the first"):
        hits = searcher.search(" ".join(["apple"] * 300), k=2)
    assert len(hits) == 2


@pytest.mark.integration
def test_unknown_and_foreign_collections_are_refused(runtime_settings, searcher, demo_checkpoint):
    with pytest.raises(GalleryNotFoundError, match="collection 't_nothing': not found.*t_demo"):
        MeetSearcher("t_nothing", checkpoint=demo_checkpoint, settings=runtime_settings)
    split = load_split(runtime_settings.data_dir, "demo", "test")
    images, texts = encode_split(searcher.model, split, runtime_settings.cache_dir, 64, False)
    origin = replace(Origin.of(searcher.model, "demo/test"), fingerprint="f" * 32)
    items = split_items(split, images, texts, 4)
    write_gallery(searcher.client, "t_foreign", items, origin, drop=True, progress=False)
    with pytest.raises(GalleryMismatchError, match="loaded with model ffffffffffff, not with"):
        MeetSearcher("t_foreign", checkpoint=demo_checkpoint, settings=runtime_settings)


@pytest.mark.integration
def test_a_gallery_whose_rows_changed_is_refused_until_reloaded(
    runtime_settings, searcher, demo_checkpoint
):
    split = load_split(runtime_settings.data_dir, "demo", "test")
    images, texts = encode_split(searcher.model, split, runtime_settings.cache_dir, 64, False)
    items, origin = split_items(split, images, texts, 4), Origin.of(searcher.model, "demo/test")
    write_gallery(searcher.client, "t_rows", items, origin, drop=True, progress=False)
    searcher.client.load_collection("t_rows_text_pq")
    searcher.client.insert("t_rows_text_pq", [items["text"].row(7, ["head", "codes"])])
    searcher.client.flush("t_rows_text_pq")  # a row stored twice, sealed
    changed = "t_rows_text_pq holds 101 rows, the gallery has 100"
    with pytest.raises(MeetError, match=changed):
        MeetSearcher("t_rows", checkpoint=demo_checkpoint, settings=runtime_settings)
    write_gallery(searcher.client, "t_rows", items, origin, progress=False)  # as `load` runs
    again = MeetSearcher("t_rows", checkpoint=demo_checkpoint, settings=runtime_settings)
    assert len(again.search(split.captions[0], k=3)) == 3


@pytest.mark.integration
def test_a_silent_milvus_is_named(runtime_settings, demo_checkpoint):
    with pytest.raises(ServerUnavailableError, match="127.0.0.1:9"):
        MeetSearcher("t_demo", checkpoint=demo_checkpoint, uri="http://127.0.0.1:9",
                     settings=runtime_settings)  # fmt: skip


@pytest.mark.integration
def test_bad_search_settings_are_named(runtime_settings, demo_gallery):
    with pytest.raises(ParameterError, match="search setting 'alhpa'"):
        MeetSearcher(demo_gallery, settings=runtime_settings, alhpa=0.3)


@pytest.mark.integration
def test_a_calls_config_answers_as_a_searcher_built_with_it(
    runtime_settings, demo_gallery, searcher, split
):
    own = searcher.config
    config = own.updated(pq=False, rerank="reference", exact_keep=50, hash_keep_texts=0.5)
    built = MeetSearcher(demo_gallery, settings=runtime_settings, config=config)
    assert built.config == config != own
    texts, images = split.captions[:4], split.image_paths[:3]
    pairs = [
        (searcher.search(texts, k=5, diagnostics=True, config=config),
         built.search(texts, k=5, diagnostics=True)),
        (searcher.search_image(images, k=5, diagnostics=True, config=config),
         built.search_image(images, k=5, diagnostics=True)),
    ]  # fmt: skip
    for per_call, from_built in pairs:
        assert per_call == from_built  # ids, scores and every stage's ranks
        assert all(list(h.stages) == ["hash", "dense", "rerank"] for row in per_call for h in row)
    # The searcher's own config is untouched, and its next call uses it again.
    assert searcher.config is own and own == SearchConfig()
    default = searcher.search(texts[0], k=5, diagnostics=True)
    assert list(default[0].stages) == ["hash", "pq", "dense", "rerank"]
    with pytest.raises(ParameterError, match="config: expected a SearchConfig"):
        searcher.search(texts[0], config={"pq": False})


def ranking(rows: list[list[Hit]]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([[h.id for h in r] for r in rows]),
            np.array([[h.score for h in r] for r in rows]))  # fmt: skip


@pytest.mark.integration
def test_concurrent_callers_get_their_sequential_answers(searcher, split, monkeypatch):
    texts, images = split.captions[:12], split.image_paths[:6]
    alone = [searcher.search(t, k=5) for t in texts] + [
        searcher.search_image(p, k=5) for p in images
    ]
    sizes: list[int] = []
    answer = searcher._answer

    def counted(calls):
        sizes.append(len(calls))
        return answer(calls)

    monkeypatch.setattr(searcher._calls, "_run", counted)
    calls = [lambda t=t: searcher.search(t, k=5) for t in texts]
    calls += [lambda p=p: searcher.search_image(p, k=5) for p in images]
    together: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def caller(i: int) -> None:
        start.wait()
        together[i] = calls[i]()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # Batched encoding differs from one-at-a-time by float error only: the same ranking.
    assert_same_ranking(*ranking(alone), *ranking(together), atol=1e-4)
    assert sum(sizes) == len(calls) and max(sizes) > 1  # callers shared passes


@pytest.mark.unit
def test_search_config_updated_validates_what_it_changes():
    base = SearchConfig()
    refused = [
        ({"alhpa": 0.3}, "search setting 'alhpa': unknown"),
        ({"z": 0}, "search setting 'z': Input should be greater than or equal to 1"),
        ({"pq_keep_texts": 1.5}, "search setting 'pq_keep_texts': stage size 1.5: a fraction"),
        ({"rerank": "sideways"}, "search setting 'rerank': 'sideways': use true, false"),
    ]
    for overrides, message in refused:
        with pytest.raises(ParameterError) as caught:
            base.updated(**overrides)
        assert isinstance(caught.value, ValueError) and str(caught.value).startswith(
            message if message.startswith("search") else "search setting 'filter': " + message
        ), str(caught.value)
    changed = base.updated(pq_keep_texts=1.0, rerank=True, z=5)
    assert (changed.pq_keep_texts, changed.rerank, changed.z) == (1.0, "weighted", 5)
    assert changed.pq_keep("text") == 1.0 and changed.pq_keep("image") == base.pq_keep_images
    assert base == SearchConfig()  # frozen: updated makes a copy
    # Every setting is described (the CLI's help is derived from these).
    assert all(f.description for f in SearchConfig.model_fields.values())


@pytest.mark.unit
def test_importing_the_package_stays_light():
    code = "import sys, meet_milvus; print('pymilvus' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
