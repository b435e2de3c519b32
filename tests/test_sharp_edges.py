"""Regressions of four sharp edges a fuzz found: each is refused at once in one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from meet_milvus import gallery_layout as cols
from meet_milvus.config import Settings
from meet_milvus.errors import MilvusError, ParameterError
from meet_milvus.server import connect
from meet_milvus_loaders.milvus_loader import MAX_NEIGHBOURS, load

MAIN = [sys.executable, "-c", "from meet_milvus.cli import main; main()"]


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """The CLI as a process on an empty data dir, a Milvus URI where nothing listens: a command
    that got as far as Milvus would fail differently. A hang fails the test (timeout)."""
    env = dict(os.environ, MEET_DATA_DIR=str(tmp_path / "data"),
               MEET_CACHE_DIR=str(tmp_path / "cache"), MEET_MILVUS_URI="http://127.0.0.1:9")
    return subprocess.run([*MAIN, *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.unit
def test_search_image_refuses_a_fifo_at_once(tmp_path):
    fifo = tmp_path / "query.jpg"
    os.mkfifo(fifo)
    out = _cli(tmp_path, "search", "--image", str(fifo), "--collection", "demo")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: {fifo}: not a regular file, so not an image"
    ]


@pytest.mark.unit
def test_load_refuses_too_many_neighbours_before_anything_else(tmp_path):
    out = _cli(tmp_path, "load", "--collection", "demo", "--neighbours", str(MAX_NEIGHBOURS + 1))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: --neighbours 4097: must be between 1 and 4096 (Milvus's longest array)"
    ]
    settings = Settings(data_dir=tmp_path / "data", milvus_uri="http://127.0.0.1:9")
    for bad in (0, 5000):
        with pytest.raises(ParameterError, match=f"--neighbours {bad}: must be between 1"):
            load(settings, "demo", neighbours=bad)


@pytest.mark.unit
@pytest.mark.parametrize(
    "name", ["demo\n", "demo\x00", "1demo", "de-mo", "x" * (cols.NAME_MAX + 1), ""]
)
def test_a_bad_collection_name_is_shown_quoted_with_the_rule_it_breaks(name):
    with pytest.raises(ParameterError) as e:
        cols.check_gallery_name(name)
    message = str(e.value)
    assert "\n" not in message and "\x00" not in message
    shown = name if len(name) <= 60 else name[:60] + "..."
    assert message == (
        f"collection name {shown!r}: use letters, digits and underscores (at most 243), "
        "starting with a letter or an underscore"
    )


@pytest.mark.unit
@pytest.mark.parametrize("name", ["_x", "demo", "a1_", "x" * cols.NAME_MAX])
def test_the_names_the_message_promises_are_accepted(name):
    assert cols.check_gallery_name(name) == name


@pytest.mark.unit
def test_the_longest_gallery_name_gives_collection_names_milvus_accepts():
    """Milvus refuses collection names over 255 characters: a gallery name of NAME_MAX, with
    the longest suffix any of its collections gets, is exactly that long."""
    gallery = "x" * cols.NAME_MAX
    names = [*cols.side_collections(gallery)] + [
        name
        for kind in ("split", "multi")
        for modality in cols.MODALITIES
        for name in cols.Layout(kind).collections(gallery, modality)
    ]
    assert max(len(name) for name in names) == 255


class RefusingLoad:
    """What a server restarted moments ago answered to load_collection."""

    def load_collection(self, name, **kwargs):
        raise MilvusException(
            code=65535, message="session not found->datanode-1: unrecoverable error"
        )


@pytest.mark.unit
def test_a_refused_collection_load_is_one_milvus_error():
    gallery = cols.Gallery("demo", cols.Layout("split"), {})
    with pytest.raises(MilvusError) as e:
        gallery.ensure_loaded(RefusingLoad(), "demo_text_pq")
    assert str(e.value) == "Milvus: session not found->datanode-1: unrecoverable error"
    assert "demo_text_pq" not in gallery.loaded  # the next call tries again


@pytest.mark.integration
def test_a_real_refusal_of_load_collection_is_one_milvus_error(milvus_settings):
    # A collection without an index cannot be loaded: the real server's refusal, wrapped.
    client = connect(milvus_settings)
    name = "sharp_no_index"
    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    client.create_collection(name, schema=schema)
    try:
        with pytest.raises(MilvusError) as e:
            cols.Gallery("sharp", cols.Layout("split"), {}).ensure_loaded(client, name)
        message = str(e.value)
        assert message.startswith("Milvus: ") and "index" in message and "\n" not in message
    finally:
        client.drop_collection(name)


@pytest.mark.unit
def test_any_milvus_exception_reaching_the_cli_is_one_line(monkeypatch, capsys):
    import click

    from meet_milvus import cli as cli_module

    @click.command("raise-milvus")
    def raise_milvus() -> None:
        raise MilvusException(code=65535, message="session not found->datanode-1:\nunrecoverable")

    cli_module.cli.add_command(raise_milvus)
    monkeypatch.setattr(sys, "argv", ["meet-milvus", "raise-milvus"])
    try:
        with pytest.raises(SystemExit) as exited:
            cli_module.main()
    finally:
        cli_module.cli.commands.pop("raise-milvus")
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: Milvus: session not found->datanode-1:\\nunrecoverable (check the server: "
        "`meet-milvus server status` or its log, then retry)"
    ]


@pytest.mark.unit
def test_a_milvus_error_during_a_search_names_the_server_and_what_to_do(tmp_path):
    from meet_milvus.searcher import MeetSearcher

    searcher = MeetSearcher.__new__(MeetSearcher)  # no model, no Milvus: run()'s wording only
    searcher.settings = Settings(data_dir=tmp_path, milvus_uri="http://127.0.0.1:9")
    searcher._lost = False

    def refused(gallery, k, config=None):
        gallery_ = cols.Gallery("demo", cols.Layout("split"), {})
        gallery_.ensure_loaded(RefusingLoad(), "demo_text_pq")

    searcher.cascade = refused
    with pytest.raises(MilvusError) as e:
        searcher.run(None, "text", k=5)
    assert str(e.value) == (
        "Milvus at http://127.0.0.1:9: Milvus: session not found->datanode-1: unrecoverable "
        "error; retry in a minute (a server restarted moments ago is still settling); if it "
        "persists, see the server's log"
    )


@pytest.mark.unit
def test_the_dense_index_is_hnsw_or_flat_and_flat_skips_the_graph(tmp_path):
    assert [cols.check_dense_index(x) for x in ("hnsw", "FLAT")] == ["HNSW", "FLAT"]
    settings = Settings(data_dir=tmp_path / "data", milvus_uri="http://127.0.0.1:9")
    with pytest.raises(ParameterError, match="^dense index 'DISKANN': use HNSW or FLAT$"):
        load(settings, "demo", dense_index="DISKANN")  # refused before connecting
    out = _cli(tmp_path, "load", "--collection", "demo", "--dense-index", "diskann")
    assert out.returncode == 2 and "'diskann' is not one of 'hnsw', 'flat'" in out.stderr

    def dense(**meta) -> str:
        m = cols.GalleryMeta(gallery="g", modality="image", layout="split", fingerprint="f", H=64,
                             M=8, K=256, embed_dim=16, neighbours=4, rows=10, nlist=4,
                             source="s", **meta)  # fmt: skip
        (index,) = [i for i in cols.index_params(MilvusClient, m, ["dense"])]
        return index.index_type

    assert dense() == "HNSW"
    assert dense(dense_index="FLAT") == "FLAT"
    assert dense(indexes="flat") == "FLAT"  # Milvus Lite takes exact indexes only
