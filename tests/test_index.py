"""Galleries people own: `meet-milvus index` of a folder of uncaptioned photos (nested, with a
broken file and a copy), searches by text, re-indexing as an upsert, a changed file, deletes
by id and of missing files, `reindex` of its dense field, a caption-only gallery searched by
image, a reader process while a writer adds, and kill -9 of a writer during an add and during
a delete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from meet_milvus import GalleryWriter, MeetSearcher, NewItem
from meet_milvus.cli import cli
from meet_milvus.errors import GalleryNotFoundError
from meet_milvus.gallery_layout import MODALITIES, open_gallery
from meet_milvus.gallery_log import gallery_state
from meet_milvus.server import connect
from meet_milvus_loaders.milvus_loader import training_pool
from meet_milvus_loaders.precomp import load_split

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def photos(runtime_settings, tmp_path_factory) -> Path:
    """A folder of the demo's test images, nested, with a broken file and a copy."""
    split = load_split(runtime_settings.data_dir, "demo", "test")
    root = tmp_path_factory.mktemp("photos")
    for i, src in enumerate(split.image_paths[:8]):
        folder = root / ("holiday/beach" if i % 2 else "home")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, folder / f"p{i}.png")
    shutil.copy(split.image_paths[0], root / "copy-of-p0.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "notes.txt").write_text("not an image")
    return root


def _cli(flags: list[str], *args: str) -> str:
    result = CliRunner().invoke(cli, [*flags, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _live(settings, name: str) -> dict[str, int]:
    client = connect(settings)
    state = gallery_state(client, open_gallery(client, name))
    counts = {}
    for m in ("image", "text"):
        rows = client.query(f"{name}_{m}_dense", filter="", output_fields=["count(*)"],
                            consistency_level="Strong")  # fmt: skip
        counts[m] = int(rows[0]["count(*)"])
        assert counts[m] == state.live(m)  # Milvus holds exactly the live items, once
    return counts


def test_index_a_folder_then_search_update_and_delete(cli_flags, runtime_settings, photos,
                                                      demo_checkpoint):  # fmt: skip
    flags = cli_flags
    ckpt = ["--checkpoint", str(demo_checkpoint)]
    out = _cli(flags, "index", str(photos), "--collection", "t_photos", "--quiet",
               "--dense-index", "flat", *ckpt)  # fmt: skip
    assert "added 9 images and 0 captions" in out
    assert "skipped broken.png:" in out and "notes.txt" not in out
    assert _live(runtime_settings, "t_photos") == {"image": 9, "text": 0}

    searcher = MeetSearcher("t_photos", settings=runtime_settings)
    hits = searcher.search("a cottage", k=20)
    ids = sorted(h.external_id for h in hits)
    assert ids == sorted(["copy-of-p0.png", *[
        f"{'holiday/beach' if i % 2 else 'home'}/p{i}.png" for i in range(8)]])  # fmt: skip
    out = _cli(flags, "search", "a cottage", "--collection", "t_photos", "-k", "3")
    assert ".png" in out
    assert searcher.search_image(photos / "home/p0.png", k=3) == []  # no captions: no hits

    # Indexing again is an upsert: nothing added, nothing doubled.
    out = _cli(flags, "index", str(photos), "--collection", "t_photos", "--quiet")
    assert "added 0 images" in out and "kept 9 unchanged" in out
    assert _live(runtime_settings, "t_photos") == {"image": 9, "text": 0}

    # A changed file is encoded again (replaced), a new one added; the searcher in this
    # process sees both on its next call.
    shutil.copy(photos / "home/p2.png", photos / "home/p0.png")
    shutil.copy(photos / "home/p4.png", photos / "new.png")
    out = _cli(flags, "index", str(photos), "--collection", "t_photos", "--quiet")
    assert "added 2 images" in out and "replaced 1 changed" in out
    assert _live(runtime_settings, "t_photos") == {"image": 10, "text": 0}
    found = [h.external_id for h in searcher.search("a cottage", k=20)]
    assert sorted(found) == sorted(set(found)) and "new.png" in found and len(found) == 10

    # Deletes: by id, and of files that are gone; neither is returned by any search after.
    (photos / "holiday/beach/p1.png").unlink()
    out = _cli(flags, "delete", "--collection", "t_photos", "home/p2.png", "--missing")
    assert "deleted 2 images" in out
    assert _live(runtime_settings, "t_photos") == {"image": 8, "text": 0}
    for tier in ("local", "server"):
        s = MeetSearcher("t_photos", settings=runtime_settings, tier=tier)
        found = [h.external_id for h in s.search("a cottage", k=20)]
        assert len(found) == 8 and not {"home/p2.png", "holiday/beach/p1.png"} & set(found)
    found = [h.external_id for h in searcher.search("a cottage", k=20)]  # the old searcher too
    assert len(found) == 8 and "home/p2.png" not in found
    with pytest.raises(GalleryNotFoundError, match="'t_nothing': not in Milvus yet"):
        GalleryWriter("t_nothing", settings=runtime_settings)  # a delete of nothing, say

    # Made without HNSW (--dense-index flat); `reindex` gives it one, and the server-side ANN
    # then answers as an exact search does.
    client = connect(runtime_settings)
    assert {open_gallery(client, "t_photos").dense_index(client, m) for m in MODALITIES} == {
        "FLAT"}  # fmt: skip
    exact = MeetSearcher("t_photos", settings=runtime_settings, hash=False, pq=False).search(
        "a cottage", k=5
    )
    out = _cli(flags, "reindex", "--collection", "t_photos", "--dense-index", "hnsw")
    assert "'t_photos': dense field indexed HNSW" in out
    assert {open_gallery(client, "t_photos").dense_index(client, m) for m in MODALITIES} == {
        "HNSW"}  # fmt: skip
    ann = MeetSearcher("t_photos", settings=runtime_settings, tier="server", filter="ann")
    found = ann.search("a cottage", k=5)  # copies tie: the same scores, in either order
    np.testing.assert_allclose([h.score for h in found], [h.score for h in exact], atol=1e-5)


def test_a_caption_only_gallery_answers_image_queries(runtime_settings, demo_checkpoint, tmp_path):
    split = load_split(runtime_settings.data_dir, "demo", "test")
    manifest = tmp_path / "notes.jsonl"
    rows = [{"id": f"note{i}", "captions": [split.captions[5 * i]]} for i in range(6)]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    from meet_milvus_loaders.photos import collect

    writer = GalleryWriter("t_notes", demo_checkpoint, runtime_settings)
    writer.pool = training_pool(runtime_settings, writer.model, progress=False)
    report = writer.add(collect([manifest]))
    assert report.added == {"image": 0, "text": 6}
    client = connect(runtime_settings)
    assert open_gallery(client, "t_notes").dense_index(client, "text") == "HNSW"  # the default
    hits = MeetSearcher("t_notes", settings=runtime_settings).search_image(
        split.image_paths[0], k=3
    )
    assert hits and all(h.external_id.startswith("note") and h.image == -1 for h in hits)


# A writer in a child process (same server) that SIGKILLs itself right after the n-th call of
# one MilvusClient method: mid-add (rows of a pending change partly inserted) or mid-delete.
_WRITER = """
import json, os, signal, sys
from pymilvus import MilvusClient
from meet_milvus import GalleryWriter, NewItem
from meet_milvus.config import load_settings

spec = json.loads(sys.argv[1])
settings = load_settings(**spec["settings"])
original, calls = getattr(MilvusClient, spec["method"]), []

def dying(self, *a, **kw):
    out = original(self, *a, **kw)
    calls.append(1)
    if len(calls) == spec["n"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return out

setattr(MilvusClient, spec["method"], dying)
writer = GalleryWriter(spec["name"], settings=settings)
if spec["delete"]:
    writer.delete(spec["delete"])
else:
    writer.add([NewItem(e, image=p) for e, p in spec["items"]], batch=spec["batch"])
"""


def _child_env(settings) -> dict:
    """The child's environment: the project on its path, the token in the environment (never
    on a command line, where every account could read it)."""
    return {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
            "MEET_MILVUS_TOKEN": settings.milvus_token.get_secret_value()}  # fmt: skip


def _child_settings(settings) -> dict:
    return {"milvus_uri": settings.milvus_uri, "data_dir": str(settings.data_dir),
            "cache_dir": str(settings.cache_dir), "device": "cpu"}  # fmt: skip


def _run_writer(settings, name, method, n, items=(), delete=(), batch=3) -> int:
    spec = {"settings": _child_settings(settings), "name": name, "method": method, "n": n,
            "items": list(items), "delete": list(delete), "batch": batch}  # fmt: skip
    env = _child_env(settings)
    done = subprocess.run([sys.executable, "-c", _WRITER, json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    return done.returncode


def test_kill_9_during_an_add_and_a_delete_loses_and_doubles_nothing(
    runtime_settings, demo_checkpoint
):
    split = load_split(runtime_settings.data_dir, "demo", "test")
    items = [(f"img{i}", p) for i, p in enumerate(split.image_paths[:9])]
    writer = GalleryWriter("t_kill", demo_checkpoint, runtime_settings)
    writer.pool = training_pool(runtime_settings, writer.model, progress=False)
    writer.add([NewItem(e, image=p) for e, p in items[:3]])
    # Killed after the 2nd insert: the second batch's change is pending with rows partly in.
    rc = _run_writer(runtime_settings, "t_kill", "insert", 2, items=items, batch=3)
    assert rc == -signal.SIGKILL
    again = GalleryWriter("t_kill", settings=runtime_settings).add(
        [NewItem(e, image=p) for e, p in items]
    )
    assert any("rolled back an interrupted add" in line for line in again.repaired)
    assert _live(runtime_settings, "t_kill") == {"image": 9, "text": 0}
    hits = MeetSearcher("t_kill", settings=runtime_settings).search("a cottage", k=20)
    assert sorted(h.external_id for h in hits) == sorted(e for e, _ in items)

    # Killed right after the delete reached Milvus, before the change was logged done.
    rc = _run_writer(runtime_settings, "t_kill", "delete", 1, delete=["img0", "img5"])
    assert rc == -signal.SIGKILL
    fixed = GalleryWriter("t_kill", settings=runtime_settings).delete(["img5"])
    assert any("finished an interrupted delete" in line for line in fixed.repaired)
    assert _live(runtime_settings, "t_kill") == {"image": 7, "text": 0}
    for tier in ("local", "server"):
        hits = MeetSearcher("t_kill", settings=runtime_settings, tier=tier).search("x", k=20)
        assert sorted(h.external_id for h in hits) == sorted(
            e for e, _ in items if e not in ("img0", "img5")
        )


_READER = """
import json, sys, time
from meet_milvus import MeetSearcher
from meet_milvus.config import load_settings

spec = json.loads(sys.argv[1])
s = MeetSearcher(spec["name"], settings=load_settings(**spec["settings"]))
seen, end = [], time.monotonic() + spec["seconds"]
while time.monotonic() < end:
    hits = s.search("a cottage", k=50)
    ids = [h.external_id for h in hits]
    assert len(ids) == len(set(ids)), ids
    assert all(h.source == spec["sources"][h.external_id] for h in hits)  # whole rows only
    seen.append(len(ids))
    if len(ids) == spec["final"]:
        break
    time.sleep(0.05)
print(json.dumps(seen))
"""


def test_a_reader_process_follows_a_writer(runtime_settings, demo_checkpoint):
    split = load_split(runtime_settings.data_dir, "demo", "test")
    paths = split.image_paths[:12]
    writer = GalleryWriter("t_grow", demo_checkpoint, runtime_settings)
    writer.pool = training_pool(runtime_settings, writer.model, progress=False)
    writer.add([NewItem("a0", image=paths[0])])
    sources = {f"a{i}": str(Path(p).resolve()) for i, p in enumerate(paths)}
    spec = {"name": "t_grow", "seconds": 240, "final": len(paths), "sources": sources,
            "settings": _child_settings(runtime_settings)}  # fmt: skip
    env = _child_env(runtime_settings)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, json.dumps(spec)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(3)
    for lo in range(1, len(paths), 4):  # three adds while the reader searches
        writer.add([NewItem(f"a{i}", image=paths[i]) for i in range(lo, min(lo + 4, len(paths)))])
    out, err = reader.communicate(timeout=300)
    assert reader.returncode == 0, err[-2000:]
    seen = json.loads(out)
    assert seen == sorted(seen) and seen[-1] == len(paths)  # never fewer, and all in the end
    assert np.all(np.diff(seen) >= 0)
