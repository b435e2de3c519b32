"""Fault injection: `kill -9` of the loader, and separately of the embedded Milvus server, at
several points of a load; the rerun load must end with every key once, and searches equal to a
clean load's. A second embedded server of its own (it gets killed), on the demo fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meet_milvus import MeetSearcher, milvus_arrays
from meet_milvus import gallery_layout as cols
from meet_milvus.errors import ServerUnavailableError
from meet_milvus.server import EmbeddedServer, connect
from meet_milvus_loaders.milvus_loader import load
from meet_milvus_loaders.precomp import load_split
from tests.plugins.milvus import embedded_settings

pytestmark = pytest.mark.integration

# A load run in a child process that dies by SIGKILL right after the n-th call of one
# MilvusClient method, having first killed the embedded Milvus server (-9) when told to.
_CHILD = """
import json, os, signal, sys
from pathlib import Path
from pymilvus import MilvusClient
from meet_milvus_loaders.milvus_loader import load
from meet_milvus.config import Settings

data_dir, cache_dir, port, method, n, victim, checkpoint = sys.argv[1:]
settings = Settings(data_dir=data_dir, cache_dir=cache_dir, embedded_port=int(port),
                    milvus_uri=None, milvus_token="", device="cpu")
n = int(n)
original, calls = getattr(MilvusClient, method), []

def crash(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    calls.append(method)
    if len(calls) == n:
        if victim == "server":
            state = json.loads((settings.milvus_dir / "server.json").read_text())
            os.kill(state["milvus_pid"], signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    return out

setattr(MilvusClient, method, crash)
load(settings, "faulty", checkpoint=checkpoint, data="demo", progress=False, echo=print)
"""

# (victim, MilvusClient method, n-th call): the loader, and then the server, killed with rows
# sent but not flushed. (A server kill costs a restart of ~60 s while its old sessions expire:
# one is enough.) A kill between creating a collection and its index is made in-process below.
FAULTS = [
    ("loader", "insert", 3),
    ("server", "insert", 4),
]


@pytest.fixture(scope="module")
def faulty_settings(demo_data, tmp_path_factory):
    """Settings of an embedded server of this module's own, with the demo fixtures' data."""
    data_dir = tmp_path_factory.mktemp("faults")
    (data_dir / "demo_precomp").symlink_to(Path(demo_data.data_dir) / "demo_precomp")
    settings = embedded_settings(data_dir, cache_dir=demo_data.cache_dir, device="cpu")
    server = EmbeddedServer(settings)
    server.start(die_with_parent=True)
    try:
        yield settings
    finally:
        server.stop()


def _queries(settings, checkpoint, gallery: str) -> dict[str, list[list[int]]]:
    """Hits (ids) of a few text and image queries, from the local tier and from Milvus."""
    split = load_split(settings.data_dir, "demo", "test")
    images = np.asarray(split.images[:4], np.float32)
    out = {}
    for tier in ("local", "server"):
        searcher = MeetSearcher(gallery, checkpoint=checkpoint, settings=settings, tier=tier)
        texts = split.captions[:4] + ["a red apple"]
        out[f"{tier} text"] = [[h.id for h in row] for row in searcher.search(texts, k=5)]
        out[f"{tier} image"] = [[h.id for h in row] for row in searcher.search_image(images, k=5)]
    return out


def _every_key_once(client, gallery: str) -> None:
    found = cols.open_gallery(client, gallery)
    found.check_rows(client)
    cols.load_all(client, found.collections())
    for modality in cols.MODALITIES:
        n = found.rows(modality)
        for name in found.layout.collections(gallery, modality):
            assert milvus_arrays.count(client, name) == n, name
            ids = milvus_arrays.ids_in_range(client, name, -1, n + 1000)
            np.testing.assert_array_equal(ids, np.arange(n), err_msg=name)
    found.release(client)


def test_kill_9_of_loader_or_server_loses_and_doubles_nothing(faulty_settings, demo_checkpoint):
    settings, server = faulty_settings, EmbeddedServer(faulty_settings)
    load(settings, "clean", checkpoint=demo_checkpoint, data="demo", progress=False)
    expected = _queries(settings, demo_checkpoint, "clean")
    # A searcher of the clean gallery lives through the server's death below.
    searcher = MeetSearcher("clean", checkpoint=demo_checkpoint, settings=settings, tier="server")
    before = [h.id for h in searcher.search("a red apple", k=5)]
    # What a kill between creating a collection and creating its index leaves: the load
    # finishes it.
    client, meta = connect(settings), cols.read_meta(connect(settings), "clean_text_pq")
    client.create_collection("faulty_text_pq", schema=cols.schema(
        meta.model_copy(update={"gallery": "faulty"}), ["head", "codes"]))  # fmt: skip
    assert not client.list_indexes("faulty_text_pq")
    load(settings, "faulty", checkpoint=demo_checkpoint, data="demo", progress=False)
    _every_key_once(connect(settings), "faulty")
    assert connect(settings).list_indexes("faulty_text_pq")
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for victim, method, n in FAULTS:
        cols.drop(connect(settings), "faulty")  # each fault interrupts a load from nothing
        args = [settings.data_dir, settings.cache_dir, settings.embedded_port, method, n, victim,
                demo_checkpoint]  # fmt: skip
        child = subprocess.run([sys.executable, "-c", _CHILD, *map(str, args)], env=child_env,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert child.returncode == -signal.SIGKILL, (victim, method, child.stderr[-2000:])
        assert server.status().running == (victim == "loader"), (victim, method)
        if victim == "server":
            # A search names the dead server in one line; the next call restarts it.
            with pytest.raises(ServerUnavailableError) as failed:
                searcher.search("a red apple", k=5)
            message = str(failed.value)
            assert "not answering" in message and str(server.log) in message
            assert "\n" not in message and "root:" not in message
            assert [h.id for h in searcher.search("a red apple", k=5)] == before
            assert server.status().running
            # The finished load survived its server's kill -9: flushed, nothing to redo.
            report = load(settings, "clean", checkpoint=demo_checkpoint, data="demo",
                          progress=False)  # fmt: skip
            assert set(report.inserted.values()) == {0} and report.final == report.expected
        load(settings, "faulty", checkpoint=demo_checkpoint, data="demo", progress=False)
        _every_key_once(connect(settings), "faulty")
        assert _queries(settings, demo_checkpoint, "faulty") == expected, (victim, method)
