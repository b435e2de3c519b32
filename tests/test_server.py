"""The embedded Milvus server: version, real BIN_IVF_FLAT and IVF_PQ indexes, CLI, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pymilvus import DataType

from meet_milvus.errors import MeetError, ServerUnavailableError
from meet_milvus.server import EmbeddedServer, connect, server_version
from tests.plugins.milvus import embedded_settings

# The `meet-milvus` console script, without depending on PATH.
MEET_MILVUS = [sys.executable, "-c", "from meet_milvus.cli import main; main()"]
N = 2000  # above Milvus's 1024-row threshold, below which a segment gets no index at all


def _collection(client, name: str, vector_type: DataType, dim: int, rows: list[dict]) -> None:
    if client.has_collection(name):
        client.drop_collection(name)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vec", vector_type, dim=dim)
    client.create_collection(name, schema=schema)
    client.insert(name, rows)
    client.flush(name)  # seal the segment, so that the index is really built over it


@pytest.mark.integration
def test_embedded_server_is_milvus_2_3_5(milvus_settings):
    client = connect(milvus_settings)
    assert server_version(client).lstrip("v").startswith("2.3.5")
    found = EmbeddedServer(milvus_settings).status()
    assert found.running and found.uri == f"http://127.0.0.1:{milvus_settings.embedded_port}"
    assert found.log.is_file() and found.network == "isolated"


@pytest.mark.integration
def test_connect_reuses_the_running_server(milvus_settings):
    pid = EmbeddedServer(milvus_settings).status().pid
    connect(milvus_settings)
    assert EmbeddedServer(milvus_settings).status().pid == pid


@pytest.mark.integration
def test_bin_ivf_flat_hamming_search_is_exact(milvus_settings):
    client = connect(milvus_settings)
    codes = np.random.default_rng(0).integers(0, 256, size=(N, 8), dtype=np.uint8)
    rows = [{"id": i, "vec": codes[i].tobytes()} for i in range(N)]
    _collection(client, "test_bin_ivf_flat", DataType.BINARY_VECTOR, 64, rows)
    index = client.prepare_index_params()
    index.add_index("vec", index_type="BIN_IVF_FLAT", metric_type="HAMMING", params={"nlist": 16})
    client.create_index("test_bin_ivf_flat", index)
    built = client.describe_index("test_bin_ivf_flat", "vec")
    assert (built["index_type"], built["indexed_rows"]) == ("BIN_IVF_FLAT", N)
    client.load_collection("test_bin_ivf_flat")

    queries = codes[:5]
    hits = client.search(
        "test_bin_ivf_flat",
        data=[q.tobytes() for q in queries],
        anns_field="vec",
        limit=10,
        search_params={"metric_type": "HAMMING", "params": {"nprobe": 16}},  # all lists
    )
    bits = np.unpackbits(codes, axis=1)
    for q, found in enumerate(hits):
        hamming = (bits != bits[q]).sum(axis=1)
        assert found[0]["id"] == q and found[0]["distance"] == 0
        assert [h["distance"] for h in found] == sorted(hamming)[:10]
        assert all(h["distance"] == hamming[h["id"]] for h in found)
    client.drop_collection("test_bin_ivf_flat")


@pytest.mark.integration
def test_ivf_pq_search_uses_quantized_distances(milvus_settings):
    client = connect(milvus_settings)
    x = np.random.default_rng(1).standard_normal((N, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    _collection(
        client,
        "test_ivf_pq",
        DataType.FLOAT_VECTOR,
        64,
        [{"id": i, "vec": v} for i, v in enumerate(x)],
    )
    index = client.prepare_index_params()
    index.add_index(
        "vec", index_type="IVF_PQ", metric_type="IP", params={"nlist": 16, "m": 8, "nbits": 8}
    )
    client.create_index("test_ivf_pq", index)
    built = client.describe_index("test_ivf_pq", "vec")
    assert (built["index_type"], built["indexed_rows"]) == ("IVF_PQ", N)
    client.load_collection("test_ivf_pq")

    hits = client.search(
        "test_ivf_pq",
        data=x[:20].tolist(),
        anns_field="vec",
        limit=10,
        search_params={"metric_type": "IP", "params": {"nprobe": 16}},
    )
    top1 = [found[0]["id"] for found in hits]
    assert sum(i == q for q, i in enumerate(top1)) >= 18  # a vector finds itself
    # Scores are PQ approximations of the inner product, not the exact values FLAT would give.
    errors = [abs(h["distance"] - float(x[q] @ x[h["id"]])) for q, f in enumerate(hits) for h in f]
    assert max(errors) > 1e-3
    client.drop_collection("test_ivf_pq")


# -- the CLI, in processes of its own, on a server of its own -----------------------------------


def _cli(args: list[str], settings, cwd) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MEET_") or k == "MEET_CACHE_DIR"
    }
    env.update(MEET_DATA_DIR=str(settings.data_dir), MEET_EMBEDDED_PORT=str(settings.embedded_port))
    return subprocess.run(
        [*MEET_MILVUS, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
def test_server_start_status_stop(tmp_path):
    settings = embedded_settings(tmp_path / "data")
    address = f"http://127.0.0.1:{settings.embedded_port}"
    try:
        before = _cli(["server", "status"], settings, tmp_path)
        assert before.returncode == 1 and "not running" in before.stdout

        started = _cli(["server", "start"], settings, tmp_path)
        assert started.returncode == 0, started.stderr
        config = (settings.milvus_dir / "configs" / "milvus.yaml").read_text()
        assert "mmapDirPath" not in config  # embedded_mmap is off by default
        assert f"Milvus v2.3.5-lite at {address}" in started.stdout
        # The server outlived the command that started it, and serves this process too.
        client = connect(settings)
        client.create_collection("kept", dimension=4)
        client.insert("kept", [{"id": i, "vector": [i, 1.0, 2.0, 3.0]} for i in range(10)])
        status = _cli(["server", "status"], settings, tmp_path)
        assert status.returncode == 0, status.stderr
        assert f"running: Milvus v2.3.5-lite at {address}" in status.stdout
        assert str(settings.milvus_dir / "logs" / "milvus.log") in status.stdout
        assert "network: its own; only its port on 127.0.0.1 reaches it, from this account" in (
            status.stdout
        )
        again = _cli(["server", "start"], settings, tmp_path)
        assert again.returncode == 0 and again.stdout.startswith("already running")

        state = json.loads((settings.milvus_dir / "server.json").read_text())
        stopped = _cli(["server", "stop"], settings, tmp_path)
        assert stopped.returncode == 0 and "stopped embedded Milvus" in stopped.stdout
        # What Milvus leaves outside the data dir goes with it.
        assert not Path(f"/tmp/milvus/server_id_{state['milvus_pid']}").exists()
        alias = f"standalone-{state['alias']}.pid"
        assert not any(Path(d, alias).exists() for d in ("/run/milvus", "/tmp/milvus"))
        after = _cli(["server", "status"], settings, tmp_path)
        assert after.returncode == 1 and "not running" in after.stdout

        # A restart keeps the ports of the last run (see EmbeddedServer._choose_ports) and the
        # rows inserted before the stop, though they were never flushed.
        ports = json.loads((settings.milvus_dir / "ports.json").read_text())
        EmbeddedServer(settings).start()
        assert json.loads((settings.milvus_dir / "ports.json").read_text()) == ports
        client = connect(settings)
        client.load_collection("kept")
        rows = client.query("kept", filter="id >= 0", output_fields=["id"], limit=100)
        assert sorted(r["id"] for r in rows) == list(range(10))
    finally:
        EmbeddedServer(settings).stop()


# -- bad input: one line naming the thing, no traceback -----------------------------------------


@pytest.mark.integration
def test_uri_not_answering_is_one_line(tmp_path):
    settings = embedded_settings(tmp_path, milvus_uri="http://127.0.0.1:9")
    answer = r"^Milvus at http://127.0.0.1:9: not answering$"
    with pytest.raises(ServerUnavailableError, match=answer):
        connect(settings, timeout=2)
    # Credentials in the URI are not echoed.
    settings = embedded_settings(tmp_path, milvus_uri="http://bob:hunter2@127.0.0.1:9")
    answer = r"^Milvus at http://\*\*\*@127.0.0.1:9: not answering$"
    with pytest.raises(ServerUnavailableError, match=answer):
        connect(settings, timeout=2)
    env_uri = {**os.environ, "MEET_MILVUS_URI": "http://127.0.0.1:9"}
    done = subprocess.run(
        [*MEET_MILVUS, "server", "status", "--timeout", "2"],
        env=env_uri,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "Milvus at http://127.0.0.1:9: not answering"
    start = subprocess.run(
        [*MEET_MILVUS, "server", "start"],
        env=env_uri,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert start.returncode == 2 and start.stderr.startswith("error: server start: a Milvus URI")
    assert len(start.stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_unknown_database_is_one_line(milvus_settings):
    settings = milvus_settings.model_copy(update={"milvus_db": "no_such_db"})
    with pytest.raises(MeetError, match=r"^Milvus at http://127.0.0.1:\d+: database not found"):
        connect(settings)


@pytest.mark.unit
def test_port_in_use_is_refused_before_launch(tmp_path):
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        settings = embedded_settings(tmp_path, embedded_port=busy.getsockname()[1])
        with pytest.raises(MeetError, match=f"port {settings.embedded_port} is already in use"):
            EmbeddedServer(settings).start()
    assert not (settings.milvus_dir / "server.json").exists()


@pytest.mark.integration
def test_bad_input_never_stops_a_running_server(milvus_settings, tmp_path):
    before = EmbeddedServer(milvus_settings).status()
    assert before.running
    log = milvus_settings.milvus_dir / "logs" / "milvus.log"
    size = log.stat().st_size
    for args in (
        ["server", "start", "--timeout", "0"],
        ["server", "start", "--timeout", "nan"],
        ["server", "stop", "--timeout", "-1"],
        ["server", "stop", "--timeout", "soon"],
        ["server", "status", "--timeout", "inf"],
        ["server", "rotate-credentials", "--timeout", "-5"],
    ):
        done = _cli(args, milvus_settings, tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
    after = EmbeddedServer(milvus_settings).status()
    assert after.running and after.pid == before.pid
    with log.open("rb") as fh:
        fh.seek(size)
        assert b"session key is deleted" not in fh.read()


@pytest.mark.unit
def test_server_that_dies_at_start_names_its_log(tmp_path):
    settings = embedded_settings(tmp_path)
    # A file where embedded etcd wants its data directory: Milvus exits at once.
    (settings.milvus_dir / "data").mkdir(parents=True)
    (settings.milvus_dir / "data" / "etcd.data").touch()
    log = settings.milvus_dir / "logs" / "milvus.log"
    done = _cli(["server", "start"], settings, tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: embedded Milvus exited during start-up (")
    assert "etcd" in done.stderr and f"see its log {log}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not EmbeddedServer(settings).status().pid
