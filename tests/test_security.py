"""The embedded server is reachable only from this machine, only with its credential, keeps its
files private, rotates its log and collects dropped collections (issue 10).

One server of its own for the module (its settings differ from the session's): a short garbage
collection, the log at "warning", rotated at a small size.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from meet_milvus import server as server_module
from meet_milvus.config import Settings
from meet_milvus.errors import MeetError
from meet_milvus.server import EmbeddedServer, connect
from tests.plugins.milvus import embedded_settings

MEET_MILVUS = [sys.executable, "-c", "from meet_milvus.cli import main; main()"]
LOG_MAX = 48_000  # bytes; a start alone logs more
RUN_DIRS = ("/run/milvus", "/tmp/milvus")  # where Milvus leaves its pid file


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    settings = embedded_settings(
        tmp_path_factory.mktemp("secured"),
        log_level="warning",
        embedded_gc_interval=10,
        embedded_gc_drop_tolerance=0,
    )
    server = EmbeddedServer(settings)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(server_module, "LOG_MAX_BYTES", LOG_MAX)
            server.start(die_with_parent=True)
        yield settings
    finally:
        server.stop()


def _state(settings: Settings) -> dict:
    return json.loads((settings.milvus_dir / "server.json").read_text())


def _password(settings: Settings) -> str:
    return json.loads((settings.milvus_dir / "credentials.json").read_text())["password"]


def _with(settings: Settings, **changes: object) -> Settings:
    return Settings(**{**settings.model_dump(), **changes})


def _by_uri(settings: Settings, token: str) -> Settings:
    uri = f"http://127.0.0.1:{settings.embedded_port}"
    return _with(settings, milvus_uri=uri, milvus_token=token)


def _non_loopback_addresses() -> list[str]:
    found = set()
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10)
        found.update(out.stdout.split())
    except (OSError, subprocess.SubprocessError):
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a source address
            found.add(s.getsockname()[0])
        except OSError:
            pass
    return sorted(a for a in found if ":" not in a and not a.startswith("127."))


def _connect_error(host: str, port: int) -> type[BaseException] | None:
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as e:
        return type(e)


# -- the network ------------------------------------------------------------------------------


@pytest.mark.integration
def test_only_loopback_reaches_the_server(secured):
    state = _state(secured)
    assert state["network"] == "isolated"
    every_port = sorted({state["port"], *state["ports"].values()})
    assert len(every_port) == 12  # proxy, metrics, etcd client and peer, 8 gRPC servers
    # From this machine's loopback: the proxy and the health check only.
    reachable = [p for p in every_port if _connect_error("127.0.0.1", p) is None]
    assert reachable == sorted({state["port"], state["metrics_port"]})
    addresses = _non_loopback_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    for address in addresses:
        refused = {p: _connect_error(address, p) for p in every_port}
        assert refused == dict.fromkeys(every_port, ConnectionRefusedError), address
        remote = _with(
            secured,
            milvus_uri=f"http://{address}:{state['port']}",
            milvus_token=f"root:{_password(secured)}",
        )
        with pytest.raises(MeetError, match=r": not answering$"):
            connect(remote, timeout=3)


@pytest.mark.integration
def test_unauthenticated_access_is_refused(secured):
    for token in ("", "root:wrong", "root:Milvus", "nobody:nothing"):
        with pytest.raises(MeetError, match=r"^Milvus at \S+: authentication refused"):
            connect(_by_uri(secured, token))
    # The project's clients use the stored credential, and so does an explicit token.
    assert connect(secured).list_collections() == []
    assert connect(_by_uri(secured, f"root:{_password(secured)}")).list_collections() == []
    # The REST API, which listed every collection without a token, is off.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(Exception):  # noqa: B017 - any failure: no answer is the point
        opener.open(f"http://127.0.0.1:{secured.embedded_port}/v1/vector/collections", timeout=5)


@pytest.mark.integration
def test_files_under_the_milvus_dir_are_private(secured):
    connect(secured).create_collection("private_rows", dimension=4)  # Milvus writes data files
    connect(secured).insert("private_rows", [{"id": 1, "vector": [0.0, 1.0, 2.0, 3.0]}])
    connect(secured).flush("private_rows")
    seen = 0
    for root, dirs, files in os.walk(secured.milvus_dir):
        for name in [*dirs, *files]:
            path = Path(root, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                continue
            seen += 1
            assert mode & 0o077 == 0, f"{path}: {oct(mode & 0o777)}"
    assert seen > 20
    assert stat.S_IMODE((secured.milvus_dir / "credentials.json").stat().st_mode) == 0o600


@pytest.mark.unit
def test_a_milvus_dir_from_before_is_made_private(tmp_path):
    settings = embedded_settings(tmp_path)
    old = settings.milvus_dir / "logs" / "milvus.log"
    old.parent.mkdir(parents=True)
    old.write_text("old\n")
    for path, mode in ((old, 0o644), (old.parent, 0o755), (settings.milvus_dir, 0o755)):
        path.chmod(mode)
    EmbeddedServer(settings).stop()  # takes the data dir's lock, which tightens it
    assert stat.S_IMODE(settings.milvus_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(old.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


# -- housekeeping -----------------------------------------------------------------------------


@pytest.mark.integration
def test_log_honours_the_level_and_rotates_by_size(secured):
    log = secured.milvus_dir / "logs" / "milvus.log"
    rotated = sorted(log.parent.glob("milvus.log.*"))
    # The start logged more than LOG_MAX bytes: rotated, no file much over the limit.
    assert rotated and len(rotated) <= server_module.LOG_BACKUPS
    assert all(p.stat().st_size <= LOG_MAX + (1 << 16) for p in [log, *rotated])
    assert "level: warn" in (secured.milvus_dir / "configs" / "milvus.yaml").read_text()
    # At "warning", what Milvus logs at INFO for a new client is left out, its warnings not.
    before = log.stat().st_size
    uri, token = f"http://127.0.0.1:{secured.embedded_port}", f"root:{_password(secured)}"
    client = MilvusClient(uri=uri, token=token, alias="log-level-check")  # a new connection
    client.list_collections()
    client.has_collection("nothing_here")
    time.sleep(1)
    with log.open("rb") as fh:
        fh.seek(before)
        added = fh.read().decode(errors="replace")
    assert re.search(r"\[WARN\] .*failed to describe collection.*nothing_here", added)
    assert "client register" not in added and "received request to list databases" not in added


@pytest.mark.integration
def test_dropped_collection_leaves_the_disk(secured):
    client = connect(secured)
    client.create_collection("short_lived", dimension=8)
    client.insert("short_lived", [{"id": i, "vector": [float(i)] * 8} for i in range(2000)])
    client.flush("short_lived")
    collection_id = client.describe_collection("short_lived")["collection_id"]
    data = secured.milvus_dir / "data"

    def files() -> list[Path]:
        found = (p for p in data.rglob("*") if str(collection_id) in p.relative_to(data).parts)
        return [p for p in found if p.is_file()]

    assert files()  # the flushed binlogs
    client.drop_collection("short_lived")
    deadline = time.monotonic() + 90  # GC every 10 s here (Milvus's default: hours)
    while files() and time.monotonic() < deadline:
        time.sleep(2)
    assert not files()


# -- credentials and secrets ------------------------------------------------------------------


def _cli(args: list[str], settings: Settings, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEET_")}
    clean.update(
        MEET_DATA_DIR=str(settings.data_dir),
        MEET_EMBEDDED_PORT=str(settings.embedded_port),
        MEET_CACHE_DIR=str(settings.cache_dir),
        **env,
    )
    return subprocess.run(
        [*MEET_MILVUS, *args], env=clean, capture_output=True, text=True, timeout=300
    )


@pytest.mark.integration
def test_rotate_credentials_and_no_secret_shows(secured):
    old = _password(secured)
    done = _cli(["server", "rotate-credentials"], secured)
    assert done.returncode == 0, done.stderr
    new = _password(secured)
    assert new != old and len(new) >= 20
    stored = secured.milvus_dir / "credentials.json"
    assert done.stdout.strip() == f"new credential stored in {stored}"
    assert stat.S_IMODE((secured.milvus_dir / "credentials.json").stat().st_mode) == 0o600
    # A new process (this one keeps its connections) is refused with the old password.
    uri = f"http://127.0.0.1:{secured.embedded_port}"
    refused = _cli(["--uri", uri, "--token", f"root:{old}", "server", "status"], secured)
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"Milvus at {uri}: authentication refused (check the token)"
    assert connect(secured).list_collections() is not None  # the new one, found by itself

    shown = [done.stdout, done.stderr, refused.stdout, refused.stderr]
    status = _cli(["server", "status"], secured)
    assert status.returncode == 0 and "network: its own" in status.stdout
    shown += [status.stdout, status.stderr]
    token_settings = _by_uri(secured, f"root:{new}")
    shown += [repr(token_settings), str(token_settings)]
    # Credentials in a URI or a token never reach an error message.
    for uri, token in (
        (f"http://root:{new}@127.0.0.1:9", ""),
        (f"http://127.0.0.1:{secured.embedded_port}", f"root:{new}x"),
    ):
        wrong = _with(secured, milvus_uri=uri, milvus_token=token)
        with pytest.raises(MeetError) as err:
            connect(wrong, timeout=2)
        shown.append(str(err.value))
        bad = _cli(["--uri", uri, "--token", token, "server", "status", "--timeout", "2"], secured)
        assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
        shown += [bad.stdout, bad.stderr]
    assert "http://***@127.0.0.1:9" in "".join(shown)
    for text in shown:
        assert old not in text and new not in text
    # Nor a log the project writes (Milvus's included), nor any other file of the server's.
    for path in secured.milvus_dir.rglob("*"):
        if path.is_file() and path.name != "credentials.json":
            content = path.read_bytes()
            assert old.encode() not in content and new.encode() not in content, path


@pytest.mark.integration
def test_kill_9_leaves_nothing_a_restart_does_not_clean(secured):
    state = _state(secured)
    supervisor, milvus = state["pid"], state["milvus_pid"]
    server_id = Path(f"/tmp/milvus/server_id_{milvus}")
    pid_files = [Path(d, f"standalone-{state['alias']}.pid") for d in RUN_DIRS]
    assert server_id.exists() and any(p.exists() for p in pid_files)
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{milvus}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # Milvus follows its supervisor (it gets SIGTERM)
    assert not Path(f"/proc/{milvus}").exists()
    server = EmbeddedServer(secured)
    assert not server.status().running
    server.start()
    after = _state(secured)
    assert after["milvus_pid"] != milvus and not server_id.exists()
    # The pid file of the same alias is the new server's now, not the dead one's.
    assert [p.read_text().strip() for p in pid_files if p.exists()] == [str(after["milvus_pid"])]
    assert connect(secured).list_collections() is not None  # and the credential still works
    # Milvus, busy reloading after the crash, may hang in its graceful stop: SIGKILL after 10 s
    # then, and nothing may stay behind either way.
    server.stop(timeout=10)
    assert not Path(f"/tmp/milvus/server_id_{after['milvus_pid']}").exists()
    assert not any(p.exists() for p in pid_files)


@pytest.mark.integration
def test_host_network_still_needs_the_credential(tmp_path):
    # Where no network namespace can be made, embedded_network = "host" is the way out:
    # Milvus listens on all interfaces then, its authentication still on.
    settings = embedded_settings(tmp_path, embedded_network="host")
    server = EmbeddedServer(settings)
    try:
        found = server.start(die_with_parent=True)
        assert found.running and found.network == "host"
        state = _state(settings)
        assert _connect_error("127.0.0.1", state["ports"]["root_coord_port"]) is None
        with pytest.raises(MeetError, match="authentication refused"):
            connect(_by_uri(settings, "root:Milvus"))
        assert connect(settings).list_collections() == []
        log = settings.milvus_dir / "logs" / "milvus.log"
    finally:
        server.stop()
    # The stop dropped the sessions (so the next start need not wait for them to expire):
    # on the host network only once the etcd on that port proved to be this server's.
    assert b"session key is deleted" in log.read_bytes()
