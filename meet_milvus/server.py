"""Milvus access: the embedded Milvus 2.3.5 standalone server, or the server at a configured URI.

The PyPI package `milvus` carries a real Milvus standalone binary (with embedded etcd and
rocksmq). We launch that binary ourselves, detached, so that it outlives the command that
started it; a state file under `settings.milvus_dir` lets later commands find and reuse it.
Every port it opens is chosen here (the proxy on `settings.embedded_port`, the rest free
ports), so several embedded servers can run side by side.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import lzma
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meet_milvus.config import Settings
from meet_milvus.errors import MeetError

if TYPE_CHECKING:
    from pymilvus import MilvusClient

START_TIMEOUT = 120.0  # seconds; a start takes 3 to 5 s on 2 idle cores, more when they are busy
STOP_TIMEOUT = 30.0  # then SIGKILL
CONNECT_TIMEOUT = 10.0
_GRACEFUL_STOP_S = 5  # Milvus's own limit on its graceful stop

# The ports besides the proxy's: placeholders of the package's config template, then ours.
_PORT_KEYS = (
    "etcd_port",
    "root_coord_port",
    "proxy_internal_port",
    "query_coord_port",
    "query_node_port",
    "index_coord_port",
    "index_node_port",
    "data_coord_port",
    "data_node_port",
    "etcd_peer_port",
    "metrics_port",
)
_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*(?:\(\w+\))?\s*(?::\s*([^}]*?))?\s*\}\}")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class ServerStatus:
    """What `EmbeddedServer.status()` finds."""

    running: bool  # the process is alive and its health check answers
    uri: str  # where it answers (or will, once started)
    directory: Path  # its data, configs and logs
    log: Path
    pid: int | None = None  # set while the process is alive, even before it answers
    version: str | None = None  # set when running


class _PortTaken(MeetError):
    """Milvus found one of its ports taken while starting."""


class EmbeddedServer:
    """The embedded Milvus standalone server of one data dir: start, reuse, stop, inspect."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = settings.milvus_dir
        self.log = self.directory / "logs" / "milvus.log"
        self._state_file = self.directory / "server.json"
        self._proc: subprocess.Popen | None = None  # the server, when this object launched it

    # -- public -----------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT, die_with_parent: bool = False) -> ServerStatus:
        """Start the server, or reuse the one already running; return once it answers.

        `die_with_parent` ties the server's life to this process (test fixtures): on Linux it
        gets SIGTERM when the calling thread exits, however that happens.
        """
        with self._locked():
            state = self._read_state()
            if state and _alive(state["pid"], state["exe"]):
                self._wait_ready(state, timeout)
                return self.status()
            for attempt in (1, 2):
                self._state_file.unlink(missing_ok=True)
                state = self._launch(die_with_parent)
                try:
                    self._wait_ready(state, timeout)
                    return self.status()
                except _PortTaken:
                    # Another program took a port between our check and Milvus's bind.
                    if attempt == 2:
                        raise
                    (self.directory / "ports.json").unlink(missing_ok=True)
                except BaseException:
                    self._terminate(state, STOP_TIMEOUT)
                    self._state_file.unlink(missing_ok=True)
                    raise
            raise AssertionError("unreachable")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`); its pid, or None if none ran."""
        with self._locked():
            state = self._read_state()
            pid = None
            if state and _alive(state["pid"], state["exe"]):
                pid = state["pid"]
                self._terminate(state, timeout)
            self._state_file.unlink(missing_ok=True)
            return pid

    def status(self) -> ServerStatus:
        """Whether the server runs, where, and which version it reports."""
        state = self._read_state()
        port = state["port"] if state else self.settings.embedded_port
        found = ServerStatus(False, _local_uri(port), self.directory, self.log)
        if not state or not _alive(state["pid"], state["exe"]):
            return found
        found = ServerStatus(False, found.uri, self.directory, self.log, pid=state["pid"])
        if not _healthy(state["metrics_port"]):
            return found
        try:
            # An alias of its own: closing it must not close a caller's shared connection.
            client = _client(found.uri, "", "", CONNECT_TIMEOUT, alias=f"meet-status-{found.uri}")
            version = server_version(client)
            client.close()
        except Exception:  # a proxy not answering yet counts as not running
            return found
        return ServerStatus(True, found.uri, self.directory, self.log, found.pid, version)

    # -- launching --------------------------------------------------------------------------

    def _launch(self, die_with_parent: bool) -> dict:
        port = self.settings.embedded_port
        if not _port_free(port):
            raise MeetError(
                f"embedded Milvus: port {port} is already in use by another process; "
                f"set embedded_port (MEET_EMBEDDED_PORT) to a free port, or point --uri at "
                f"that server if it is a Milvus"
            )
        exe = _binaries(self.settings.cache_dir) / "milvus"
        ports = self._choose_ports()
        configs = self._write_configs(port, ports)
        for older, newer in ((".log.2", ".log.1"), (".log.1", ".log")):  # keep two old logs
            with contextlib.suppress(FileNotFoundError):
                self.log.with_suffix(newer).replace(self.log.with_suffix(older))
        env = dict(
            os.environ,
            DEPLOY_MODE="STANDALONE",
            MILVUSCONF=str(configs),
            METRICS_PORT=str(ports["metrics_port"]),
            ETCD_CONFIG_PATH=str(configs / "embedEtcd.yaml"),
            LD_LIBRARY_PATH=os.pathsep.join(
                filter(None, [str(exe.parent), _env("LD_LIBRARY_PATH")])
            ),
            DYLD_LIBRARY_PATH=os.pathsep.join(
                filter(None, [str(exe.parent), _env("DYLD_LIBRARY_PATH")])
            ),
        )
        # The alias names Milvus's pid file (/run/milvus/standalone-<alias>.pid), which it
        # locks: without one, a second server on this machine refuses to start.
        alias = f"meet{port}"
        with self.log.open("ab") as log:
            proc = self._proc = subprocess.Popen(
                [str(exe), "run", "standalone", "-alias", alias],
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the terminal and the CLI process
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        state = {
            "pid": proc.pid,
            "exe": str(exe),
            "port": port,
            "metrics_port": ports["metrics_port"],
            "ports": ports,
            "alias": alias,
            "version": _package_version(),
            "started": time.time(),
        }
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._state_file)
        return state

    def _choose_ports(self) -> dict[str, int]:
        """The ports of the last run where still free, else new free ones.

        Stable ports help when a stop could not drop the components' sessions (a crash): etcd
        keeps their addresses until their leases expire, and a restart on other ports waits.
        """
        saved_file = self.directory / "ports.json"
        try:
            saved = json.loads(saved_file.read_text())
        except (OSError, ValueError):
            saved = {}
        kept = {
            k: saved[k]
            for k in _PORT_KEYS
            if isinstance(saved.get(k), int) and saved[k] != self.settings.embedded_port
        }
        kept = {k: v for k, v in kept.items() if _port_free(v)}
        missing = [k for k in _PORT_KEYS if k not in kept]
        taken = {*kept.values(), self.settings.embedded_port}
        ports = {**kept, **dict(zip(missing, _free_ports(len(missing), taken), strict=True))}
        saved_file.write_text(json.dumps(ports, indent=2))
        return ports

    def _write_configs(self, port: int, ports: dict[str, int]) -> Path:
        data = self.directory / "data"
        configs = self.directory / "configs"
        for d in (data, configs, self.log.parent):
            d.mkdir(parents=True, exist_ok=True)
        values = {
            **ports,
            "proxy_port": port,
            "etcd_data_dir": data / "etcd.data",
            "local_storage_dir": data,
            "rocksmq_data_dir": data / "rocksmq",
            # Everything Milvus and its embedded etcd log goes to stdout, i.e. one log file.
            "etcd_log_path": "stdout",
            "system_log_path": "",
        }

        def fill(m: re.Match) -> str:
            value = values.get(m.group(1), m.group(2))
            if value is None:
                raise MeetError(f"embedded Milvus: config template: no value for {m.group(1)}")
            return str(value)

        package = _package_dir() / "data"
        template = (package / "config.yaml.template").read_text(encoding="utf-8")
        # Its graceful stop waits (30 min by default) for a query node to hand its segments
        # to another node, which a standalone server lacks; the data are safe on disk anyway.
        template = re.sub(
            r"gracefulStopTimeout: \d+", f"gracefulStopTimeout: {_GRACEFUL_STOP_S}", template
        )
        (configs / "milvus.yaml").write_text(_PLACEHOLDER.sub(fill, template), encoding="utf-8")
        glog = (package / "glog.conf").read_text(encoding="utf-8")
        glog = glog.replace("--logtostderr=false", "--logtostderr=true")
        (configs / "glog.conf").write_text(glog, encoding="utf-8")
        client = f"http://127.0.0.1:{ports['etcd_port']}"
        peer = f"http://127.0.0.1:{ports['etcd_peer_port']}"
        (configs / "embedEtcd.yaml").write_text(
            f"name: meet\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
            f"initial-cluster: meet={peer}\n",
            encoding="utf-8",
        )
        return configs

    def _wait_ready(self, state: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not _healthy(state["metrics_port"]):
            if not _alive(state["pid"], state["exe"]):
                hint = _log_hint(self.log) or self._exit_reason()
                error = _PortTaken if "address already in use" in hint else MeetError
                raise error(
                    f"embedded Milvus exited during start-up{f' ({hint})' if hint else ''}; "
                    f"see its log {self.log}"
                )
            if time.monotonic() > deadline:
                raise MeetError(
                    f"embedded Milvus did not answer within {timeout:.0f} s on port "
                    f"{state['port']}; see its log {self.log}"
                )
            time.sleep(0.2)

    def _exit_reason(self) -> str:
        code = self._proc.poll() if self._proc else None
        if code is None:
            return ""
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def _terminate(self, state: dict, timeout: float) -> None:
        pid, exe = state["pid"], state["exe"]
        # Milvus leaves its components' sessions in etcd when it stops, and the next start
        # then waits (about 30 s, at start-up or at the first load or query) for them to
        # expire. Deleting them all at once first does not disturb the running components.
        _drop_sessions(state.get("ports", {}).get("etcd_port"))
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if self._exited(pid, exe, wait):
                for run_dir in ("/run/milvus", "/tmp/milvus"):  # Milvus leaves its pid file
                    with contextlib.suppress(OSError):
                        Path(run_dir, f"standalone-{state.get('alias')}.pid").unlink()
                return
        raise MeetError(f"embedded Milvus (pid {pid}) did not stop; see its log {self.log}")

    def _exited(self, pid: int, exe: str, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while _alive(pid, exe):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        if self._proc and self._proc.pid == pid:
            self._proc.wait()  # reap our own child
        return True

    # -- state ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One starter or stopper per data dir at a time, across processes.
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fh = (self.directory / "server.lock").open("a")
        except OSError as e:
            raise MeetError(
                f"embedded Milvus: cannot use {self.directory} ({e.strerror})"
            ) from None
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    def _read_state(self) -> dict | None:
        try:
            state = json.loads(self._state_file.read_text())
            return state if {"pid", "exe", "port", "metrics_port"} <= state.keys() else None
        except (OSError, ValueError):
            return None


# -- clients ----------------------------------------------------------------------------------


def connect(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> MilvusClient:
    """A client of the configured Milvus: the embedded server (started or reused) or the URI."""
    if settings.embedded:
        server = EmbeddedServer(settings)
        uri, hint = server.start().uri, f"; see its log {server.log}"
    else:
        uri, hint = settings.milvus_uri, ""
    try:
        return _client(uri, settings.milvus_token, settings.milvus_db, timeout)
    except MeetError as e:
        raise MeetError(f"{e}{hint}" if str(e).endswith("not answering") else str(e)) from None


def server_version(client: MilvusClient) -> str:
    """The version the server reports, e.g. 'v2.3.5-lite' for the embedded one."""
    return client.get_server_version()


def _client(uri: str, token: str, db_name: str, timeout: float, **kwargs) -> MilvusClient:
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    with _quiet_pymilvus():
        try:
            client = MilvusClient(uri=uri, token=token, db_name=db_name, timeout=timeout, **kwargs)
        except MilvusException as e:
            raise MeetError(f"Milvus at {uri}: {_reason(e.message)}") from None
    return client


@contextlib.contextmanager
def _quiet_pymilvus() -> Iterator[None]:
    # pymilvus logs each failed connection attempt itself; the MeetError says it in one line.
    loggers = [logging.getLogger(n) for n in ("pymilvus", "pymilvus.milvus_client")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _reason(message: str) -> str:
    if "illegal connection params or server unavailable" in message or "Fail connecting" in message:
        return "not answering"
    return message.strip().rstrip(".")


# -- helpers ----------------------------------------------------------------------------------


def _local_uri(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _env(name: str) -> str:
    return os.environ.get(name, "")


def _package_dir() -> Path:
    spec = importlib.util.find_spec("milvus")
    if spec is None or not spec.submodule_search_locations:
        raise MeetError("embedded Milvus: the package 'milvus' (2.3.5) is not installed")
    return Path(spec.submodule_search_locations[0])


def _package_version() -> str:
    return importlib.metadata.version("milvus")


def _binaries(cache_dir: Path) -> Path:
    """The package's Milvus binary and libraries, unpacked once per version into the cache."""
    target = cache_dir / "milvus" / _package_version() / "bin"
    if (target / "milvus").is_file():
        return target
    source = _package_dir() / "data" / "bin"
    tmp = target.with_name(f"bin.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for packed in source.glob("*.lzma"):
            unpacked = tmp / packed.name.removesuffix(".lzma")
            with lzma.open(packed) as src, unpacked.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            unpacked.chmod(0o755)
        if not (tmp / "milvus").is_file():
            raise MeetError(f"embedded Milvus: no Milvus binary in {source}")
        with contextlib.suppress(OSError):  # another process may have won the race
            tmp.rename(target)
    except OSError as e:
        raise MeetError(f"embedded Milvus: cannot unpack the server into {target} ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _port_free(port: int) -> bool:
    # SO_REUSEADDR like Milvus's own listeners: a port in TIME_WAIT counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_ports(n: int, exclude: set[int]) -> list[int]:
    """`n` distinct free ports, none in `exclude`."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:  # hold the sockets open together so the ports differ
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("", 0))
            if s.getsockname()[1] not in exclude:
                ports.append(s.getsockname()[1])
        return ports
    finally:
        for s in socks:
            s.close()


def _alive(pid: int, exe: str) -> bool:
    """True when `pid` is a live (not zombie) process running `exe` (guards against pid reuse)."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
    except (OSError, UnicodeDecodeError):
        return False
    # The command line reads empty for a moment while the process is being exec'ed.
    return stat.rsplit(")", 1)[1].split()[0] != "Z" and cmdline in ("", exe)


def _drop_sessions(etcd_port: int | None) -> None:
    """Delete the Milvus components' sessions from its embedded etcd, in one transaction."""
    if not etcd_port:
        return

    def call(path: str, body: dict) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{etcd_port}/v3/{path}", data=json.dumps(body).encode()
        )
        with _NO_PROXY.open(request, timeout=5) as resp:
            return json.load(resp)

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    prefix = "by-dev/meta/session/"  # etcd.rootPath / metaSubPath / session, as configured
    try:
        found = call("kv/range", {"key": b64(prefix), "range_end": b64(prefix[:-1] + "0")})
        # Sessions hold a lease; the one key without (the server-id counter) must stay.
        keys = [kv["key"] for kv in found.get("kvs", []) if kv.get("lease")]
        deletes = [{"request_delete_range": {"key": key}} for key in keys]
        if deletes:
            call("kv/txn", {"success": deletes})
    except (OSError, ValueError, KeyError):
        pass  # then the next start waits for the sessions to expire


def _healthy(metrics_port: int) -> bool:
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as resp:
            return b"OK" in resp.read()
    except (OSError, urllib.error.URLError):
        return False


def _log_hint(log: Path) -> str:
    """Why a start failed, from its log: the last error logged before the crash, or the panic."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - (4 << 20)))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    panic = re.search(r"^panic: (.+)$", text, re.M)
    before = text[: panic.start()] if panic else text
    errors = re.findall(
        r"^\[[^]]*\] \[(?:ERROR|FATAL)\] \[[^]]*\] \[\"(.*?)\"\](.*)$", before, re.M
    )
    if errors:
        message, fields = errors[-1]
        error = re.search(r'\[error="(.*?)(?<!\\)"\]', fields)
        return (f"{message}: {error.group(1)}" if error else message)[:200]
    return panic.group(1).strip()[:200] if panic else ""


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
