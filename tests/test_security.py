"""The embedded server is reachable only from this machine, only with its credential, keeps its
files private, rotates its log and collects dropped collections; on a shared machine
no other local account reaches it, and nothing it runs can have been planted.

One server of its own for the module (its settings differ from the session's): a short garbage
collection, the log at "warning", rotated at a small size.

Another account: a test runs the attacker in a child process that switches to uid 65534
(`nobody`) after its imports, as root can; elsewhere those tests skip and say why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from meet_milvus import server as server_module
from meet_milvus.config import Settings
from meet_milvus.errors import MeetError, ParameterError
from meet_milvus.server import EmbeddedServer, binaries, connect, lifecycle, processes
from meet_milvus.server import relay as relay_module
from meet_milvus.server.relay import PeerTable, Relay
from tests.plugins.milvus import embedded_settings

MEET_MILVUS = [sys.executable, "-c", "from meet_milvus.cli import main; main()"]
LOG_MAX = 48_000  # bytes; a start alone logs more
RUN_DIRS = ("/run/milvus", "/tmp/milvus")  # where Milvus leaves its pid file
STRANGER = 65534  # nobody
AS_ROOT = pytest.mark.skipif(
    os.name != "posix" or os.getuid() != 0,
    reason="another account's attack needs root to switch uid (CI runs as root)",
)
MEMBER = "QEBtaWx2dXMtbWVtYmVyQEA="  # base64 of "@@milvus-member@@": Milvus's member header


def as_stranger(code: str, *args: object, imports: str = "", timeout: float = 120) -> dict:
    """Run `code` as uid 65534 in a child; its `out` dict, printed as JSON. The modules are
    imported first, as root: the interpreter's files need not be readable by nobody."""
    script = "\n".join([
        "import encodings.idna, json, os, socket, sys, time",
        imports,
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)",
        "assert os.getuid() == 65534",
        "out = {}",
        textwrap.dedent(code),
        "print(json.dumps(out))",
    ])  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


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
            mp.setattr(lifecycle, "LOG_MAX_BYTES", LOG_MAX)
            server.start(die_with_parent=True)
        yield settings
    finally:
        server.stop()


def _state(settings: Settings) -> dict:
    return json.loads((settings.milvus_dir / "server.json").read_text())


def _running(settings: Settings) -> dict:
    """The state of the module's server, started again if a test before stopped it."""
    EmbeddedServer(settings).start()
    return _state(settings)


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
    # From this machine's loopback: the proxy only (the metrics port turns authentication off;
    # the health check asks the supervisor, on a socket in the 0700 milvus dir).
    reachable = [p for p in every_port if _connect_error("127.0.0.1", p) is None]
    assert reachable == [state["port"]]
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
    # The token through the environment: a command line is visible to every local user.
    refused = _cli(["--uri", uri, "server", "status"], secured, MEET_MILVUS_TOKEN=f"root:{old}")
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
        bad = _cli(
            ["--uri", uri, "server", "status", "--timeout", "2"], secured, MEET_MILVUS_TOKEN=token
        )
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
    settings = embedded_settings(
        tmp_path, embedded_network="host", embedded_host_network_confirmed=True
    )
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


# -- another account on the same machine -------------------------------------------

# grpc imports some of its modules on first use: imported here, before the uid changes.
_GRPC_IMPORTS = (
    "import base64, grpc, grpc._channel\nfrom pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc"
)
_MEMBER_ATTACK = f"""
port = int(sys.argv[1])
stub = milvus_pb2_grpc.MilvusServiceStub(grpc.insecure_channel(f"127.0.0.1:{{port}}"))
# The member header, with a password that is wrong: Milvus 2.3.5 looks no further.
wrong = base64.b64encode(b"root:wrong").decode()
member = [("sourceid", "{MEMBER}"), ("authorization", wrong)]
def attempt(name, call):
    try:
        reply = call()
        status = getattr(reply, "status", reply)
        out[name] = f"answered {{status.error_code}} {{status.reason}}"
    except grpc.RpcError as e:
        out[name] = f"refused {{e.code().name}} {{e.details()}}"
attempt("list", lambda: stub.ShowCollections(milvus_pb2.ShowCollectionsRequest(),
                                             metadata=member, timeout=10))
password = base64.b64encode(b"intruder-password").decode()
attempt("create_user", lambda: stub.CreateCredential(
    milvus_pb2.CreateCredentialRequest(username="intruder", password=password),
    metadata=member, timeout=10))
"""
_METRICS_ATTACK = """
port = int(sys.argv[2])
try:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /expr?code=1&auth=by-dev HTTP/1.0\\r\\n\\r\\n")
        out["metrics"] = "answered " + s.recv(200).decode(errors="replace")
except OSError as e:
    out["metrics"] = f"refused {type(e).__name__}"
"""


@AS_ROOT
@pytest.mark.integration
def test_another_user_gets_nothing_with_the_member_header_nor_the_metrics_port(secured):
    state = _running(secured)
    out = as_stranger(
        _MEMBER_ATTACK + _METRICS_ATTACK,
        state["port"],
        state["metrics_port"],
        imports=_GRPC_IMPORTS,
    )
    # Before: the list answered 0, CreateCredential made an admin-able account, and the
    # metrics port's /expr ran code ("by-dev" as its key).
    assert out["list"].startswith("refused UNAVAILABLE"), out
    assert out["create_user"].startswith("refused UNAVAILABLE"), out
    assert out["metrics"] == "refused ConnectionRefusedError", out
    assert "intruder" not in connect(secured).list_users()
    log = (secured.milvus_dir / "logs" / "milvus.log").read_text(errors="replace")
    assert f"relay: refused a connection of uid {STRANGER}" in log
    # etcd's root, the metrics port's key, is random to this data dir, not the default.
    yaml = (secured.milvus_dir / "configs" / "milvus.yaml").read_text()
    assert re.search(r"^  rootPath: meet-[0-9a-f]{32} # The root path where data is stored in etcd",
                     yaml, re.M)  # fmt: skip


@AS_ROOT
@pytest.mark.integration
def test_another_users_flood_of_connections_leaves_the_server_answering(secured):
    """More connections than the relay holds, kept open by another account: the owner's
    commands still work, and `server status` / `start` say so truthfully."""
    state = _running(secured)
    client = connect(secured)
    client.create_collection("flooded", dimension=4, consistency_level="Strong")
    client.insert("flooded", [{"id": i, "vector": [float(i), 1.0, 0.0, 0.0]} for i in range(10)])
    n = 3 * relay_module.MAX_CONNECTIONS
    flood = f"""
    held = []
    for _ in range({n}):
        try:
            held.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5))
        except OSError:
            pass
    out["opened"] = len(held)
    sys.stdout.write("held\\n"); sys.stdout.flush()
    time.sleep(float(sys.argv[2]))
    """
    script = "\n".join(["import encodings.idna, json, os, socket, sys, time",
                        "os.setgroups([]); os.setgid(65534); os.setuid(65534)", "out = {}",
                        textwrap.dedent(flood), "print(json.dumps(out))"])  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", script, str(state["port"]), "20"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        fresh = Settings(**{**secured.model_dump()})
        hits = connect(fresh).search("flooded", [[1.0, 1.0, 0.0, 0.0]], limit=1)
        assert hits[0][0]["id"] == 1
        status = _cli(["server", "status"], secured)
        assert status.returncode == 0 and status.stdout.startswith("running: Milvus v2.3.5"), (
            status.stdout + status.stderr
        )
        started = _cli(["server", "start"], secured)
        assert started.returncode == 0 and "Milvus v2.3.5" in started.stdout, started.stdout
    finally:
        child.kill()
        child.wait()
    client.drop_collection("flooded")


@pytest.mark.integration
def test_the_owners_connections_past_the_bound_are_refused_then_search_works(secured):
    state = _running(secured)
    held = []
    try:
        for _ in range(relay_module.MAX_CONNECTIONS + 8):
            held.append(socket.create_connection(("127.0.0.1", state["port"]), timeout=5))
        time.sleep(1)
        closed = 0
        for s in held:  # the relay resets those over its bound at once
            s.settimeout(0.5)
            try:
                closed += s.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
        assert closed >= 8
    finally:
        for s in held:
            s.close()
    time.sleep(1)
    client = connect(Settings(**secured.model_dump()))
    client.create_collection("after_flood", dimension=4, consistency_level="Strong")
    client.insert("after_flood", [{"id": 3, "vector": [0.0, 0.0, 3.0, 0.0]}])
    assert client.search("after_flood", [[0.0, 0.0, 1.0, 0.0]], limit=1)[0][0]["id"] == 3
    client.drop_collection("after_flood")


# The relay alone (no Milvus): an echo server stands for the proxy.


def _echo_server() -> socket.socket:
    upstream = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = upstream.accept()
            except OSError:
                return

            def echo(c: socket.socket = conn) -> None:
                with c:
                    while data := c.recv(4096):
                        c.sendall(data)

            threading.Thread(target=echo, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return upstream


def _relay(**kwargs: object) -> tuple[Relay, int, list[socket.socket]]:
    upstream = _echo_server()
    listener = socket.create_server(("127.0.0.1", 0))
    relay = Relay(listener, upstream.getsockname(), os.getuid(), PeerTable(), **kwargs)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    return relay, listener.getsockname()[1], [upstream, listener]


def _echoes(sock: socket.socket, data: bytes = b"ping") -> bool:
    sock.settimeout(5)
    try:
        sock.sendall(data)
        return sock.recv(100) == data
    except OSError:
        return False


@AS_ROOT
@pytest.mark.unit
def test_the_relay_admits_only_its_owners_connections():
    relay, port, _ = _relay()
    out = as_stranger(
        """
        try:
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            s.sendall(b"ping")
            out["got"] = s.recv(100).decode()
        except OSError as e:
            out["got"] = type(e).__name__
        """,
        port,
    )
    assert out["got"] in ("", "ConnectionResetError"), out  # never "ping"
    assert relay.refused["stranger"] == 1
    # The owner, from an IPv4 socket and from an IPv6 one to the mapped address (as gRPC does).
    with socket.create_connection(("127.0.0.1", port)) as v4:
        assert _echoes(v4)
    with socket.socket(socket.AF_INET6) as v6:
        v6.connect(("::ffff:127.0.0.1", port))
        assert _echoes(v6)


@pytest.mark.unit
def test_the_peer_lookup_and_its_fallback_agree():
    """sock_diag (one kernel lookup) and the TCP tables (where sock_diag is missing) give the
    same owner, for gRPC's IPv6 sockets too, and None for a connection that does not exist."""
    table = PeerTable()
    if table._netlink is None:
        pytest.skip("no sock_diag netlink here: only the tables' path runs")
    server = socket.create_server(("127.0.0.1", 0))
    with socket.create_connection(server.getsockname()), socket.socket(socket.AF_INET6) as v6:
        v6.connect(("::ffff:127.0.0.1", server.getsockname()[1]))
        for _ in range(2):
            conn, peer = server.accept()
            with conn:
                local = conn.getsockname()
                assert table._ask(peer, local) == table._look_up(peer, local) == os.getuid()
                gone = (peer[0], 1)
                assert table._ask(gone, local) is None and table._look_up(gone, local) is None
    server.close()
    table.close()


@pytest.mark.unit
def test_the_relay_is_bounded_closes_idle_connections_and_keeps_accepting():
    relay, port, _ = _relay(max_connections=3, idle_timeout=1.0)
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    answered = [_echoes(c) for c in conns]
    assert sorted(answered) == [False, False, True, True, True]
    assert relay.refused["full"] == 2
    idle = [c for c, ok in zip(conns, answered, strict=True) if ok]
    time.sleep(2.5)  # the idle timeout (1 s) closed the three
    assert all(c.recv(10) == b"" for c in idle)
    for c in conns:
        c.close()
    time.sleep(0.5)
    with socket.create_connection(("127.0.0.1", port)) as again:
        assert _echoes(again)


@pytest.mark.unit
def test_the_relay_survives_running_out_of_descriptors():
    """With the process's descriptors spent, accept() fails (EMFILE): the relay used to return
    from its accept loop for good. Now it waits and goes on. (Which connection meets the
    shortage depends on timing; the next test makes each failure happen for certain.)"""
    script = textwrap.dedent(
        """
        import os, resource, socket, sys, threading, time
        from tests.test_security import _relay, _echoes
        notes = []
        relay, port, _ = _relay(note=lambda level, m: notes.append(m))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        spare = []
        freed = threading.Event()

        def spend():  # every descriptor, and again whenever one comes free, until told
            while not freed.is_set():
                try:
                    spare.append(socket.socket())
                except OSError:
                    time.sleep(0.001)

        threading.Thread(target=spend, daemon=True).start()
        time.sleep(0.5)
        print(port, flush=True)
        sys.stdin.readline()  # the parent connected (accept fails: EMFILE)
        freed.set()
        time.sleep(0.1)
        for s in spare:
            s.close()
        sys.stdin.readline()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        port = int(child.stdout.readline())
        first = socket.create_connection(("127.0.0.1", port))
        time.sleep(1)  # its accept failed for want of a descriptor, more than once
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(0.5)
        first.close()  # served or dropped, as descriptors allowed: the relay goes on either way
        with socket.create_connection(("127.0.0.1", port)) as later:
            assert _echoes(later)
        child.stdin.write("done\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()


class _Failing:
    """A listener whose accept() fails as given, then accepts for real."""

    def __init__(self, listener: socket.socket, failures: list[BaseException]) -> None:
        self.listener, self.failures = listener, failures

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            raise self.failures.pop(0)
        return self.listener.accept()


@pytest.mark.unit
def test_the_relays_accept_loop_outlives_every_error(monkeypatch):
    import errno

    listener = socket.create_server(("127.0.0.1", 0))
    failures = [OSError(errno.EMFILE, "Too many open files"), OSError(errno.ENOBUFS, "no")]
    notes: list[str] = []
    relay = Relay(
        _Failing(listener, failures),  # type: ignore[arg-type]
        _echo_server().getsockname(),
        os.getuid(),
        PeerTable(),
        note=lambda level, m: notes.append(m),
    )
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    with socket.create_connection(listener.getsockname()) as first:
        assert _echoes(first)
    assert not failures and notes == ["relay: accept failed (Too many open files); still accepting"]
    # No thread to spare for a connection (Thread.start raises): that one is dropped, not the loop.
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (_ for _ in ()).throw(
        RuntimeError("can't start new thread")))  # fmt: skip
    with socket.create_connection(listener.getsockname()) as dropped:
        dropped.settimeout(5)
        assert dropped.recv(10) == b""
    monkeypatch.setattr(threading.Thread, "start", real_start)
    with socket.create_connection(listener.getsockname()) as later:
        assert _echoes(later)
    assert "a connection failed (can't start new thread)" in notes[-1]


# -- what the server runs, and where it is told to ---------------------------------------------


@pytest.mark.unit
def test_the_host_network_needs_an_explicit_confirmation(tmp_path):
    settings = embedded_settings(tmp_path, embedded_network="host")
    with pytest.raises(ParameterError) as err:
        EmbeddedServer(settings).start(timeout=5)
    message = str(err.value)
    assert "cluster-member header" in message and "embedded_host_network_confirmed" in message
    assert not (settings.milvus_dir / "server.json").exists()  # nothing was launched


@pytest.mark.unit
def test_start_does_not_report_success_for_a_server_that_does_not_answer(tmp_path):
    class Silent(EmbeddedServer):
        def status(self) -> server_module.ServerStatus:  # what `server status` found when the
            # relay had stopped: the process alive, no answer
            return server_module.ServerStatus(False, "http://127.0.0.1:9", self.directory,
                                              self.log, pid=1234, network="isolated")  # fmt: skip

    with pytest.raises(MeetError, match=r"^embedded Milvus \(pid 1234\) does not answer at "):
        Silent(embedded_settings(tmp_path))._answering()


@pytest.mark.unit
@pytest.mark.parametrize("loose", ["cache", "milvus", "bin", "binary"])
def test_a_cached_server_others_could_write_is_never_run(tmp_path, loose):
    cache = tmp_path / "cache"
    bin_dir = cache / "milvus" / binaries.package_version() / "bin"
    bin_dir.mkdir(parents=True)
    planted = bin_dir / "milvus"
    planted.write_text("#!/bin/sh\ntouch " + str(tmp_path / "ran") + "\n")
    planted.chmod(0o755)
    target = {"cache": cache, "milvus": cache / "milvus", "bin": bin_dir, "binary": planted}
    target[loose].chmod(0o777)
    with pytest.raises(MeetError, match=r"is writable by others .*could have been planted"):
        binaries.binaries(cache)
    assert not (tmp_path / "ran").exists()


@AS_ROOT
@pytest.mark.unit
def test_a_cached_server_of_another_user_is_never_run(tmp_path):
    cache = tmp_path / "cache"
    (cache / "milvus").mkdir(parents=True)
    os.chown(cache / "milvus", STRANGER, STRANGER)
    with pytest.raises(MeetError, match=rf"belongs to uid {STRANGER}, so the server binary"):
        binaries.binaries(cache)


@pytest.mark.integration
def test_a_planted_binary_in_ones_own_cache_is_replaced_by_the_packages(tmp_path, monkeypatch):
    """A cache dir the user owns (a config from a cloned repository may name one) holding a
    binary the package did not ship: unpacked again from the package before anything runs."""
    monkeypatch.setattr(binaries, "BINARY_HASHES", tmp_path / "home" / "hashes.json")
    cache = tmp_path / "cache"
    bin_dir = binaries.binaries(cache)
    shipped = (bin_dir / "milvus").read_bytes()
    assert binaries.binaries(cache) == bin_dir  # verified, kept
    (bin_dir / "milvus").write_text("#!/bin/sh\necho planted\n")
    (bin_dir / "libextra.so").write_text("planted")
    assert binaries.binaries(cache) == bin_dir
    assert (bin_dir / "milvus").read_bytes() == shipped
    assert not (bin_dir / "libextra.so").exists()
    assert stat.S_IMODE((tmp_path / "home" / "hashes.json").stat().st_mode) == 0o600


@AS_ROOT
@pytest.mark.unit
def test_a_tmp_milvus_of_another_user_is_one_line_not_exit_255(tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="meet-runtime-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        runtime = shared / "milvus"
        runtime.mkdir(mode=0o700)  # made by the first user to start a server, here root
        out = as_stranger(
            """
            server._RUNTIME_DIR = sys.argv[1]
            try:
                server.check_runtime_dir()
                out["error"] = None
            except Exception as e:
                out["error"] = str(e)
            """,
            runtime,
            imports="import meet_milvus.server.processes as server",
        )
        assert out["error"] == (
            f"embedded Milvus: {runtime} belongs to uid 0 (mode 700); Milvus 2.3.5 keeps its "
            f"runtime files there and cannot be told another folder: ask the owner of {runtime} "
            "to remove it, or point --uri at a server of your own"
        )
        processes.check_runtime_dir()  # its owner may
    finally:
        shutil.rmtree(shared)


@pytest.mark.unit
def test_the_token_on_the_command_line_warns_and_a_token_file_does_not(tmp_path):
    secret = "root:" + "s3cret" * 4
    token_file = tmp_path / "token"
    token_file.write_text(secret + "\n")
    settings = embedded_settings(tmp_path)
    uri = ["--uri", "http://127.0.0.1:9"]
    status = ["server", "status", "--timeout", "1"]
    flagged = _cli([*uri, "--token", secret, *status], settings)
    assert flagged.stderr.startswith("warning: --token puts the credential on the command line")
    from_file = _cli([*uri, "--token-file", str(token_file), *status], settings)
    assert from_file.returncode == 1 and "warning" not in from_file.stderr
    assert from_file.stderr.strip() == "Milvus at http://127.0.0.1:9: not answering"
    for done in (flagged, from_file):
        assert secret not in done.stdout + done.stderr
    missing = _cli([*uri, "--token-file", str(tmp_path / "nope"), *status], settings)
    assert (
        missing.returncode == 2
        and "--token-file" in missing.stderr
        and "cannot read" in (missing.stderr)
    )
