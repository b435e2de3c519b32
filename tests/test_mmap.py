"""The embedded server mapping its segments (`embedded_mmap`): a gallery of format 3 loads
and reloads there; one of an earlier format is refused with one line. Not among .ci/compat's
Milvus tests: nothing here depends on the pymilvus version, and it starts a server of its own."""

import json
import threading
from pathlib import Path

import pytest

from meet_milvus import gallery_layout as cols
from meet_milvus import gallery_rows
from meet_milvus.errors import GalleryMismatchError
from meet_milvus.gallery_rows import Origin, write_gallery
from meet_milvus.server import EmbeddedServer, connect
from tests.plugins.milvus import embedded_settings


def _write(client, name, model, items):
    return write_gallery(client, name, items, Origin.of(model, "demo/test"), progress=False)


def _within(seconds: float, call) -> None:
    """Run `call`, failing the test when it has not returned after `seconds`."""
    done: list = []
    worker = threading.Thread(target=lambda: done.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert done, f"not done in {seconds:.0f} s (a segment the server cannot map?)"


@pytest.mark.integration
def test_a_split_gallery_loads_on_a_server_that_maps_its_segments(demo_items, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    # Milvus 2.3.5 cannot map a sealed segment whose VARCHAR or ARRAY column is all empty
    # (its load is retried for ever): a split's rows carry a digest of their source, an add in
    # the change log deletes [-1].
    model, _, items = demo_items
    assert all(len(d) == 32 for m in cols.MODALITIES for d in items[m].digest)
    settings = embedded_settings(tmp_path / "data", embedded_mmap=True)
    config = settings.milvus_dir / "configs" / "milvus.yaml"
    try:
        client = connect(settings)
        mapped = settings.milvus_dir / "data" / "mmap"
        assert f"queryNode:\n  mmapDirPath: {mapped}\n" in config.read_text()
        _within(300, lambda: _write(client, "t_mapped", model, items))
        gallery = cols.open_gallery(client, "t_mapped")
        names = [n for n in gallery.collections() + cols.side_collections("t_mapped")
                 if client.has_collection(n)]  # fmt: skip
        assert "t_mapped_log" in names
        for name in names:  # every segment sealed, then loaded again: mapped from files
            client.release_collection(name)
            client.flush(name)
        _within(300, lambda: [client.load_collection(name) for name in names])
        query = items["image"].encoded.dense[3].tolist()
        hits = client.search(gallery.collection("image", "dense"), [query], limit=1,
                             anns_field="dense", search_params={"metric_type": "IP"})  # fmt: skip
        assert hits[0][0]["id"] == 3
        # The server maps the loaded fields from files there (unlinked once mapped).
        pid = json.loads((settings.milvus_dir / "server.json").read_text())["milvus_pid"]
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert sum(str(mapped) in line for line in maps.splitlines()) >= 3, maps[-2000:]
        # A gallery an earlier meet-milvus made (format 2) is refused there.
        made = gallery_rows._meta
        monkeypatch.setattr(gallery_rows, "_meta", lambda *a, **k: made(*a, **k).model_copy(
            update={"meet_milvus": 2}))  # fmt: skip
        _write(client, "t_old", model, items)
        assert cols.open_gallery(client, "t_old").meta["image"].meet_milvus == 2
        with pytest.raises(GalleryMismatchError, match="^collection 't_old': made by an "
                           "earlier meet-milvus, which the embedded server's mmap"):  # fmt: skip
            cols.open_gallery(client, "t_old", mapped=True)
    finally:
        EmbeddedServer(settings).stop()
