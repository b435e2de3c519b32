"""Milvus access: the embedded Milvus 2.3.5 standalone server, or the server at a configured URI.

The PyPI package `milvus` carries a real Milvus standalone binary (with embedded etcd and
rocksmq). We launch that binary ourselves, detached, so that it outlives the command that
started it; a state file under `settings.milvus_dir` lets later commands find and reuse it.
Every port it opens is chosen here (the proxy on `settings.embedded_port`, the rest free
ports), so several embedded servers can run side by side.

Network. Milvus 2.3.5 listens on all interfaces with its proxy, its metrics port and seven
internal gRPC ports (`net.Listen(":port")`; the `<component>.ip` settings only change the address
it advertises, tried here), and its authentication lets through any client that sends the
cluster-member `sourceId` header. So by default (`embedded_network = "isolated"`) it runs in a
network namespace of its own, whose only interface is its loopback, and nothing it opens is
reachable from outside. A supervisor process (`_supervise`, below) holds 127.0.0.1:<proxy port>
on this machine and relays it into that namespace for the owner's connections only
(`meet_milvus.relay`: loopback is shared by every account of the machine). The metrics port,
whose endpoints change settings, is not relayed: the supervisor checks its health inside the
namespace and answers on a socket in the 0700 milvus dir. Where the kernel allows no namespace
(no user namespaces, macOS), starting fails with a one-line error, unless
`embedded_network = "host"` with `embedded_host_network_confirmed` accepts a server on all
interfaces, exposed.

Authentication is on. At the first start root's default password ("Milvus") is replaced by a
generated one, stored in `<milvus dir>/credentials.json` (mode 0600) and used by `connect`;
`EmbeddedServer.rotate_credentials` (`meet-milvus server rotate-credentials`) replaces it.
Everything the project writes under the milvus dir is private to its user (0600 / 0700).

Housekeeping. The supervisor writes the server's output to `logs/milvus.log`, rotated by size
(`LOG_MAX_BYTES`, `LOG_BACKUPS` old files), at `settings.log_level`; on stop it drops the
components' etcd sessions (else the next start waits ~30 s for them to expire) and removes the
pid and server-id files Milvus leaves in /run/milvus and /tmp/milvus (stale ones go at start).

Garbage collection. Milvus keeps the files of dropped collections and compacted segments until
its data coordinator collects them: by default every hour, once they have been dropped for three
hours. The embedded server collects every `settings.embedded_gc_interval` seconds (default 300)
the files dropped more than `settings.embedded_gc_drop_tolerance` seconds ago (default 600), so a
dropped collection leaves the disk within about a quarter of an hour. Files that no metadata
names (`dataCoord.gc.missingTolerance`) keep Milvus's hour: a shorter one could collect files a
running flush has written but not yet recorded.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import lzma
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from meet_milvus.config import DEFAULT_HOME, Settings, redact_uri
from meet_milvus.errors import ParameterError, ServerUnavailableError
from meet_milvus.files import private_dir, write_private
from meet_milvus.gallery_layout import MILVUS_LITE
from meet_milvus.inputs import check_seconds
from meet_milvus.relay import PeerTable, Relay

if TYPE_CHECKING:
    from pymilvus import MilvusClient

START_TIMEOUT = 120.0  # seconds; a start takes 3 to 5 s on 2 idle cores, more when they are busy
STOP_TIMEOUT = 30.0  # then SIGKILL
CONNECT_TIMEOUT = 10.0
RESTART_PAUSE = 3.0  # seconds between starts after a crash, while old sessions expire
LOG_MAX_BYTES = 32 << 20  # the server's log is rotated at this size (idle: ~0.2-0.5 MB a minute)
LOG_BACKUPS = 4  # rotated logs kept: milvus.log.1 (newest) .. milvus.log.4
_GRACEFUL_STOP_S = 5  # Milvus's own limit on its graceful stop
_ROOT = "root"
_DEFAULT_ROOT_PASSWORD = "Milvus"  # what Milvus gives root when it creates its metadata
_EXIT_SETUP = 70  # the supervisor could not set the server up; why is in its error file
_HEALTH_SOCKET = "health.sock"  # in the milvus dir: the supervisor answers health checks there
_DEFAULT_ETCD_ROOT = "by-dev"
_ETCD_ROOT = re.compile(r"by-dev|meet-[0-9a-f]{32}")
# sha256 of the unpacked server per package content: outside the cache, which a config names.
_BINARY_HASHES = DEFAULT_HOME / "milvus-binaries.json"
_RUNTIME_DIR = "/tmp/milvus"  # shared by every user: Milvus 2.3.5 has no setting for it
_HOST_EXPOSES = (
    "the host network exposes Milvus's proxy, metrics and internal ports on every interface, and "
    "Milvus 2.3.5 admits any client that sends its cluster-member header, without a password"
)
HOST_NETWORK_RISK = (
    f'embedded_network = "host": {_HOST_EXPOSES}; set embedded_host_network_confirmed = true '
    f"(MEET_EMBEDDED_HOST_NETWORK_CONFIRMED=1) to run it so anyway"
)

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
# settings.log_level -> Milvus's log.level, embedded etcd's level, glog's --minloglevel.
_LOG_LEVELS = {
    "debug": ("debug", "info", 0),
    "info": ("info", "warn", 0),
    "warning": ("warn", "warn", 1),
    "error": ("error", "error", 2),
}


@dataclass(frozen=True)
class ServerStatus:
    """What `EmbeddedServer.status()` finds."""

    running: bool  # the process is alive and its health check answers
    uri: str  # where it answers (or will, once started)
    directory: Path  # its data, configs and logs
    log: Path
    pid: int | None = None  # set while the process is alive, even before it answers
    version: str | None = None  # set when running
    network: str | None = None  # "isolated" or "host", set while the process is alive


class _PortTaken(ServerUnavailableError):
    """Another program holds one of the ports chosen for the server."""


class _NotAnswering(ServerUnavailableError):
    """Nothing answers at the URI."""


class _AuthRefused(ServerUnavailableError):
    """The server refused the credential."""


class _ExitedEarly(ServerUnavailableError):
    """The server exited while starting."""


class _SetupError(Exception):
    """The supervisor could not set the server up (see `_supervise`)."""

    def __init__(self, kind: str, detail: str, port: int | None = None) -> None:
        super().__init__(detail)
        self.record = {"kind": kind, "detail": detail, "port": port}


class EmbeddedServer:
    """The embedded Milvus standalone server of one data dir: start, reuse, stop, inspect."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = settings.milvus_dir.absolute()  # the supervisor runs elsewhere
        self.log = self.directory / "logs" / "milvus.log"
        self.credentials = self.directory / "credentials.json"
        self._state_file = self.directory / "server.json"
        self._run_file = self.directory / "run.json"  # the supervisor: Milvus's pid
        self._error_file = self.directory / "start-error.json"  # the supervisor: why it failed
        self._proc: subprocess.Popen | None = None  # the supervisor, when this object launched it

    # -- public -----------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT, die_with_parent: bool = False) -> ServerStatus:
        """Start the server, or reuse the one already running; return once it answers.

        `die_with_parent` ties the server's life to this process (test fixtures): on Linux it
        gets SIGTERM when the calling thread exits, however that happens.
        """
        # Before anything launches: a start that cannot wait stops the server it launched.
        check_seconds(timeout, "embedded Milvus start timeout")
        with self._locked():
            state = self._read_state()
            if state and _state_alive(state):
                try:
                    self._wait_ready(state, timeout)
                    return self._answering()
                except _ExitedEarly:
                    pass  # it died while we looked (a crash): a new one starts below
            if state:
                _remove_leftovers(state)  # of a server that died: pid and server-id files
            # A server killed without a stop (kill -9, a crash) leaves its components' sessions
            # in etcd until their leases run out (~30 s); a start before then exits ("node
            # not match"), so after a crash exits are retried until `timeout`.
            crashed, deadline = state is not None, time.monotonic() + timeout
            for attempt in itertools.count(1):
                self._state_file.unlink(missing_ok=True)
                state = self._launch(die_with_parent)
                try:
                    self._wait_ready(state, max(1.0, deadline - time.monotonic()))
                    self._authenticate(_local_uri(state["port"]))
                    return self._answering()
                except _PortTaken:
                    # Another program took a port between our check and its bind.
                    self._terminate(state, STOP_TIMEOUT)
                    if attempt >= 2:
                        raise
                    (self.directory / "ports.json").unlink(missing_ok=True)
                except _ExitedEarly:
                    self._terminate(state, STOP_TIMEOUT)
                    if not crashed or time.monotonic() + RESTART_PAUSE >= deadline:
                        self._state_file.unlink(missing_ok=True)
                        raise
                    time.sleep(RESTART_PAUSE)
                except BaseException:
                    # Only the process this call launched: `state` names it, and the supervisor
                    # drops the sessions of its own etcd only (never a port's current holder).
                    self._terminate(state, STOP_TIMEOUT)
                    self._state_file.unlink(missing_ok=True)
                    raise
            raise AssertionError("unreachable")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after `timeout`); its pid, or None if none ran."""
        with self._locked():
            state = self._read_state()
            pid = None
            if state and _state_alive(state):
                pid = state["pid"]
                self._terminate(state, timeout)
            elif state:
                _remove_leftovers(state)
            self._state_file.unlink(missing_ok=True)
            return pid

    def status(self) -> ServerStatus:
        """Whether the server runs, where, and which version it reports."""
        state = self._read_state()
        port = state["port"] if state else self.settings.embedded_port
        found = ServerStatus(False, _local_uri(port), self.directory, self.log)
        if not state or not _state_alive(state):
            return found
        network = state.get("network", "host")
        found = ServerStatus(
            False, found.uri, self.directory, self.log, pid=state["pid"], network=network
        )
        if not self._healthy(state):
            return found
        token = self.token()
        # An alias of its own: closing it must not close a caller's shared connection.
        alias = f"meet-status-{found.uri}-{hashlib.sha256(token.encode()).hexdigest()[:8]}"
        try:
            client = _client(found.uri, token, "", CONNECT_TIMEOUT, alias=alias)
            version = server_version(client)
            client.close()
        except Exception:  # a proxy not answering yet counts as not running
            return found
        return ServerStatus(True, found.uri, self.directory, self.log, found.pid, version, network)

    def _answering(self) -> ServerStatus:
        """The status of a server just started or found: it must answer with its version, or
        the start is not a success."""
        found = self.status()
        if not found.running or not found.version:
            raise ServerUnavailableError(
                f"embedded Milvus (pid {found.pid}) does not answer at {found.uri}; "
                f"see its log {self.log}"
            )
        return found

    def _healthy(self, state: dict) -> bool:
        # Isolated, the metrics port stays inside the server's network: its supervisor checks it
        # there and answers on a socket in the (0700) milvus dir.
        if state.get("health") == _HEALTH_SOCKET:
            return _health_answer(self.directory / _HEALTH_SOCKET)
        return _healthy(state["metrics_port"])

    def token(self) -> str:
        """The stored credential as a Milvus token ("root:<password>"), or "" before the first
        start. Never print it."""
        password = _read_json(self.credentials).get("password")
        return f"{_ROOT}:{password}" if isinstance(password, str) and password else ""

    def rotate_credentials(self, timeout: float = START_TIMEOUT) -> Path:
        """Give root a new generated password, stored in `self.credentials`; the file's path.

        Starts the server if it is not running. A process connected before keeps the old
        token and is refused from now on.
        """
        self.start(timeout=timeout)
        with self._locked():
            state = self._read_state()
            if not state or not _state_alive(state):
                raise ServerUnavailableError(
                    "embedded Milvus stopped before its credential could be rotated"
                )
            if not state.get("supervised") or not self.token():
                raise ServerUnavailableError(
                    "embedded Milvus was started by an earlier version, without authentication; "
                    "restart it (meet-milvus server stop, then start) before rotating"
                )
            uri = _local_uri(state["port"])
            old = _read_json(self.credentials)["password"]
            client = _client(uri, f"{_ROOT}:{old}", "", CONNECT_TIMEOUT)
            new = _new_password()
            # The new password is on disk before the server has it: a crash in between
            # leaves it in the pending file, which `_authenticate` tries and promotes.
            pending = self.credentials.with_name("credentials.new.json")
            write_private(pending, json.dumps({"user": _ROOT, "password": new}))
            try:
                client.update_password(_ROOT, old, new)
            except Exception as e:
                pending.unlink(missing_ok=True)
                why = _clean(_clean(str(e), old), new)
                raise ServerUnavailableError(
                    f"embedded Milvus: the password was not changed ({why})"
                ) from None
            finally:
                client.close()
            pending.replace(self.credentials)
            return self.credentials

    # -- launching --------------------------------------------------------------------------

    def _launch(self, die_with_parent: bool) -> dict:
        port = self.settings.embedded_port
        network = self.settings.embedded_network
        if network == "host" and not self.settings.embedded_host_network_confirmed:
            raise ParameterError(HOST_NETWORK_RISK)
        if not _port_free(port):
            raise _port_in_use(port)
        _check_runtime_dir()
        exe = (_binaries(self.settings.cache_dir) / "milvus").absolute()
        ports = self._choose_ports()
        etcd_root = self._etcd_root()
        configs = self._write_configs(port, ports, etcd_root)
        alias = f"meet{port}"  # names Milvus's pid file /run/milvus/standalone-<alias>.pid
        spec = {
            "milvus": [str(exe), "run", "standalone", "-alias", alias],
            "env": {
                "DEPLOY_MODE": "STANDALONE",
                "MILVUSCONF": str(configs),
                "METRICS_PORT": str(ports["metrics_port"]),
                "ETCD_CONFIG_PATH": str(configs / "embedEtcd.yaml"),
                "LD_LIBRARY_PATH": os.pathsep.join(
                    filter(None, [str(exe.parent), _env("LD_LIBRARY_PATH")])
                ),
                "DYLD_LIBRARY_PATH": os.pathsep.join(
                    filter(None, [str(exe.parent), _env("DYLD_LIBRARY_PATH")])
                ),
            },
            "network": network,
            # Isolated, the proxy's port is relayed from this machine's 127.0.0.1 into its
            # network, for this user only; the metrics port is not (it turns authentication off).
            "proxy_port": port,
            "metrics_port": ports["metrics_port"],
            "owner": os.getuid(),
            "health_socket": str(self.directory / _HEALTH_SOCKET),
            "etcd_port": ports["etcd_port"],
            "etcd_root": etcd_root,
            "alias": alias,
            "log": str(self.log),
            "log_max_bytes": LOG_MAX_BYTES,
            "log_backups": LOG_BACKUPS,
            "run_file": str(self._run_file),
            "error_file": str(self._error_file),
        }
        spec_file = configs / "supervisor.json"
        write_private(spec_file, json.dumps(spec, indent=2))
        for stale in (self._run_file, self._error_file):
            stale.unlink(missing_ok=True)
        _rotate_files(self.log, LOG_BACKUPS)  # each run starts a log of its own
        package_root = str(Path(__file__).resolve().parents[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEET_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, _env("PYTHONPATH")]))
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = self._proc = subprocess.Popen(
                [sys.executable, "-c", _SUPERVISOR_MAIN, str(spec_file)],
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,  # survives the terminal and the CLI process
                preexec_fn=_die_with_parent if die_with_parent else None,
            )
        finally:
            os.close(fd)
        state = {
            "pid": proc.pid,  # the supervisor; Milvus dies with it
            "exe": sys.executable,
            "marker": str(spec_file),  # in the supervisor's command line: guards pid reuse
            "supervised": True,
            "milvus_exe": str(exe),
            "port": port,
            "metrics_port": ports["metrics_port"],
            "ports": ports,
            "alias": alias,
            "network": network,
            "etcd_root": etcd_root,
            "health": _HEALTH_SOCKET if network == "isolated" else "metrics",
            "version": _package_version(),
            "started": time.time(),
        }
        self._write_state(state)
        return state

    def _choose_ports(self) -> dict[str, int]:
        """The ports of the last run where still free, else new free ones.

        Stable ports help when a stop could not drop the components' sessions (a crash): etcd
        keeps their addresses until their leases expire, and a restart on other ports waits.
        """
        saved_file = self.directory / "ports.json"
        saved = _read_json(saved_file)
        kept = {
            k: saved[k]
            for k in _PORT_KEYS
            if isinstance(saved.get(k), int) and saved[k] != self.settings.embedded_port
        }
        kept = {k: v for k, v in kept.items() if _port_free(v)}
        missing = [k for k in _PORT_KEYS if k not in kept]
        taken = {*kept.values(), self.settings.embedded_port}
        ports = {**kept, **dict(zip(missing, _free_ports(len(missing), taken), strict=True))}
        write_private(saved_file, json.dumps(ports, indent=2))
        return ports

    def _etcd_root(self) -> str:
        """Milvus's etcd root path for this data dir: random, so that no key is the default
        ("by-dev", which its metrics port takes as a password); a data dir whose etcd was made
        before keeps "by-dev" (a new root would hide its collections)."""
        path = self.directory / "etcd-root.json"
        root = _read_json(path).get("root")
        if isinstance(root, str) and _ETCD_ROOT.fullmatch(root):
            return root
        made = (self.directory / "data" / "etcd.data").exists()
        root = _DEFAULT_ETCD_ROOT if made else f"meet-{secrets.token_hex(16)}"
        write_private(path, json.dumps({"root": root}))
        return root

    def _write_configs(self, port: int, ports: dict[str, int], etcd_root: str) -> Path:
        data = self.directory / "data"
        configs = self.directory / "configs"
        for d in (data, configs, self.log.parent):
            private_dir(d)
        level, etcd_level, glog_level = _LOG_LEVELS[self.settings.log_level]
        values = {
            **ports,
            "proxy_port": port,
            "etcd_data_dir": data / "etcd.data",
            "local_storage_dir": data,
            "rocksmq_data_dir": data / "rocksmq",
            # Everything Milvus and its embedded etcd log goes to stdout, i.e. one log file
            # that the supervisor rotates.
            "etcd_log_path": "stdout",
            "etcd_log_level": etcd_level,
            "system_log_path": "",
            "authorization_enabled": "true",
        }

        def fill(m: re.Match) -> str:
            value = values.get(m.group(1), m.group(2))
            if value is None:
                raise ServerUnavailableError(
                    f"embedded Milvus: config template: no value for {m.group(1)}"
                )
            return str(value)

        package = _package_dir() / "data"
        template = (package / "config.yaml.template").read_text(encoding="utf-8")
        for pattern, value, count in (
            # Its graceful stop waits (30 min by default) for a query node to hand its segments
            # to another node, which a standalone server lacks; the data are safe on disk anyway.
            (r"^(  gracefulStopTimeout: )\d+", _GRACEFUL_STOP_S, 1),
            # The address each component advertises: loopback, the only interface it has when
            # isolated (on the host network it still listens on all of them).
            (r"^(  ip:)[^\n]*", " 127.0.0.1", 7),
            # The REST API on the proxy port: no client of this project uses it.
            (r"^(  http:\n    enabled: )true", "false", 1),
            (r"^(log:\n  level: )\w+", level, 1),
            (r"^(    interval: )\d+(?= # gc interval)", self.settings.embedded_gc_interval, 1),
            (r"^(    dropTolerance: )\d+", self.settings.embedded_gc_drop_tolerance, 1),
            (
                r"^(  rootPath: )by-dev(?= # The root path where data is stored in etcd)",
                etcd_root,
                1,
            ),  # fmt: skip
        ):
            template, found = re.subn(pattern, rf"\g<1>{value}", template, flags=re.M)
            if found != count:
                raise ServerUnavailableError(
                    f"embedded Milvus: config template: {pattern!r} not found"
                )
        write_private(configs / "milvus.yaml", _PLACEHOLDER.sub(fill, template))
        glog = (package / "glog.conf").read_text(encoding="utf-8")
        glog = glog.replace("--logtostderr=false", "--logtostderr=true")
        glog = re.sub(r"--minloglevel=\d+", f"--minloglevel={glog_level}", glog)
        write_private(configs / "glog.conf", glog)
        client = f"http://127.0.0.1:{ports['etcd_port']}"
        peer = f"http://127.0.0.1:{ports['etcd_peer_port']}"
        write_private(
            configs / "embedEtcd.yaml",
            f"name: meet\nlisten-client-urls: {client}\nadvertise-client-urls: {client}\n"
            f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
            f"initial-cluster: meet={peer}\nlog-level: {etcd_level}\n",
        )
        return configs

    def _wait_ready(self, state: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._healthy(state):
            if not _state_alive(state):
                raise self._start_failure(state)
            if time.monotonic() > deadline:
                raise ServerUnavailableError(
                    f"embedded Milvus did not answer within {timeout:.0f} s on port "
                    f"{state['port']}; see its log {self.log}"
                )
            time.sleep(0.2)
        if state.get("supervised") and "milvus_pid" not in state:
            milvus_pid = _read_json(self._run_file).get("milvus_pid")
            if isinstance(milvus_pid, int):
                state["milvus_pid"] = milvus_pid
                self._write_state(state)

    def _start_failure(self, state: dict) -> ServerUnavailableError:
        """Why the server died while starting, from what the supervisor recorded or the log."""
        failure = _read_json(self._error_file) if state.get("supervised") else {}
        if failure.get("kind") == "port_taken":
            if failure.get("port") == state["port"]:
                return _port_in_use(state["port"])
            return _PortTaken(f"embedded Milvus: port {failure.get('port')} was taken")
        if failure.get("kind") == "isolation":
            return ServerUnavailableError(
                f"embedded Milvus: cannot give it a network of its own ({failure.get('detail')}), "
                f"and Milvus 2.3.5 alone listens on all interfaces; point --uri at a server "
                f"of your own, or (on a machine no one else uses, in a network you trust) set "
                f'embedded_network = "host" and embedded_host_network_confirmed = true: '
                f"{_HOST_EXPOSES}"
            )
        if failure:
            return ServerUnavailableError(
                f"embedded Milvus: {failure.get('detail')}; see its log {self.log}"
            )
        if state.get("network", "host") == "host":
            # Its ports are free again now that it is gone, unless another program holds one.
            ports = (state["port"], *state.get("ports", {}).values())
            held = [p for p in ports if not _port_free(p)]
            if state["port"] in held:
                return _port_in_use(state["port"])
            if held:
                return _PortTaken(f"embedded Milvus: port {held[0]} was taken")
        hint = _log_hint(self.log) or self._exit_reason()
        return _ExitedEarly(
            f"embedded Milvus exited during start-up{f' ({hint})' if hint else ''}; "
            f"see its log {self.log}"
        )

    def _exit_reason(self) -> str:
        code = _read_json(self._run_file).get("exit")  # Milvus's, as its supervisor saw it
        if not isinstance(code, int):
            code = self._proc.poll() if self._proc else None
        if code is None:
            return ""
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def _authenticate(self, uri: str) -> None:
        """Make root's password the stored one, replacing Milvus's default at the first start."""
        stored = _read_json(self.credentials).get("password")
        if not isinstance(stored, str) or not stored:
            stored = _new_password()
            write_private(self.credentials, json.dumps({"user": _ROOT, "password": stored}))
        pending_file = self.credentials.with_name("credentials.new.json")
        pending = _read_json(pending_file).get("password")
        for password in (stored, pending, _DEFAULT_ROOT_PASSWORD):
            if not isinstance(password, str) or not password:
                continue
            try:
                client = _client(uri, f"{_ROOT}:{password}", "", CONNECT_TIMEOUT)
            except _AuthRefused:
                continue
            try:
                if password == _DEFAULT_ROOT_PASSWORD:
                    client.update_password(_ROOT, password, stored)
                elif password == pending:  # a rotation that stopped half-way
                    pending_file.replace(self.credentials)
            except Exception as e:
                why = _clean(_clean(str(e), stored), password)
                raise ServerUnavailableError(
                    f"embedded Milvus: root's password was not set ({why})"
                ) from None
            finally:
                client.close()
            return
        raise ServerUnavailableError(
            f"embedded Milvus refuses the credential stored in {self.credentials}; "
            f"was root's password changed by hand?"
        )

    def _terminate(self, state: dict, timeout: float) -> None:
        pid = state["pid"]
        if state.get("supervised") and "milvus_pid" not in state:  # stopped before it answered
            milvus_pid = _read_json(self._run_file).get("milvus_pid")
            if isinstance(milvus_pid, int):
                state["milvus_pid"] = milvus_pid
        if not state.get("supervised") and _listens(pid, state.get("ports", {}).get("etcd_port")):
            # A server an earlier version launched without a supervisor; see `_drop_sessions`.
            _drop_sessions(state["ports"]["etcd_port"])
        # The supervisor drops the sessions of its server's etcd, then stops Milvus.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._exited(state, timeout):
            milvus = state.get("milvus_pid")
            victims = [pid] if _state_alive(state) else []
            if milvus and _alive(milvus, state.get("milvus_exe", "")):
                victims.append(milvus)
            for victim in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            if not self._exited(state, 10.0):
                raise ServerUnavailableError(
                    f"embedded Milvus (pid {pid}) did not stop; see its log {self.log}"
                )
        _remove_leftovers(state)

    def _exited(self, state: dict, wait: float) -> bool:
        deadline = time.monotonic() + wait
        milvus = state.get("milvus_pid")
        while _state_alive(state) or (milvus and _alive(milvus, state.get("milvus_exe", ""))):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        if self._proc and self._proc.pid == state["pid"]:
            self._proc.wait()  # reap our own child
        return True

    # -- state ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One starter or stopper per data dir at a time, across processes.
        try:
            loose = self.directory.is_dir() and self.directory.stat().st_mode & 0o077
            private_dir(self.directory)
            if loose:  # written before its files were made private
                _tighten(self.directory)
            fd = os.open(self.directory / "server.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as e:
            raise ServerUnavailableError(
                f"embedded Milvus: cannot use {self.directory} ({e.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_state(self) -> dict | None:
        state = _read_json(self._state_file)
        if not {"pid", "exe", "port", "metrics_port"} <= state.keys():
            return None
        # A copied data dir carries the state of the original's server: that server is not
        # this directory's, and a stop or restart here must not reach it.
        marker = state.get("marker")
        if isinstance(marker, str) and not _inside(Path(marker), self.directory):
            return None
        return state

    def _write_state(self, state: dict) -> None:
        write_private(self._state_file, json.dumps(state, indent=2))


# -- clients ----------------------------------------------------------------------------------


def connect(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> MilvusClient:
    """A client of the configured Milvus: the embedded server (started or reused) or the URI.

    The embedded server is reached with its stored credential unless a token is configured.
    """
    token = settings.milvus_token
    # A model_copy(update=...) skips validation and may leave a plain str.
    token = token.get_secret_value() if isinstance(token, SecretStr) else str(token)
    if not settings.embedded:
        return _client(settings.milvus_uri, token, settings.milvus_db, timeout)
    server = EmbeddedServer(settings)
    uri = server.start().uri
    try:
        return _client(uri, token or server.token(), settings.milvus_db, timeout)
    except _NotAnswering as e:
        raise ServerUnavailableError(f"{e}; see its log {server.log}") from None


def describe(settings: Settings) -> str:
    """Where the configured Milvus is, for an error message: its URI without credentials
    and, for the embedded server, its log."""
    if not settings.embedded:
        return f"Milvus at {redact_uri(settings.milvus_uri or '')}"
    server = EmbeddedServer(settings)
    state = server._read_state()
    port = state["port"] if state else settings.embedded_port
    return f"embedded Milvus at {_local_uri(port)} (log {server.log})"


def server_version(client: MilvusClient) -> str:
    """The version the server reports, e.g. 'v2.3.5-lite' for the embedded one; MILVUS_LITE
    for Milvus Lite (a local `.db` file), which implements no version request."""
    import grpc

    try:
        with _quiet_pymilvus():  # Lite's refusal is logged as an error otherwise
            return client.get_server_version()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return MILVUS_LITE
        raise


def _client(uri: str, token: str, db_name: str, timeout: float, **kwargs: Any) -> MilvusClient:
    import grpc
    from pymilvus import MilvusClient
    from pymilvus.client.types import Status
    from pymilvus.exceptions import MilvusException

    where = f"Milvus at {redact_uri(uri)}"
    with _quiet_pymilvus(), warnings.catch_warnings():
        # Milvus Lite 2.5 (a `.db` URI) imports pkg_resources, which warns it is deprecated.
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        try:
            return MilvusClient(uri=uri, token=token, db_name=db_name, timeout=timeout, **kwargs)
        except MilvusException as e:
            cause = e.__cause__  # pymilvus 3 wraps a refused credential as a failed connection
            if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise _AuthRefused(f"{where}: authentication refused (check the token)") from None
            if e.code == Status.CONNECT_FAILED:
                raise _NotAnswering(f"{where}: not answering") from None
            raise ServerUnavailableError(f"{where}: {_clean(e.message, token)}") from None
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise _AuthRefused(f"{where}: authentication refused (check the token)") from None
            raise ServerUnavailableError(f"{where}: {_clean(str(e.details()), token)}") from None


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


def _clean(message: str, secret: str = "") -> str:
    """A server's message for one line: no credentials, no trailing period."""
    # A token "user:password" may show whole or as its password alone.
    for part in sorted({secret, secret.partition(":")[2]}, key=len, reverse=True):
        if len(part) >= 4:
            message = message.replace(part, "***")
    return redact_uri(message).strip().rstrip(".")


# -- helpers ----------------------------------------------------------------------------------


def _local_uri(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def _port_in_use(port: int) -> ServerUnavailableError:
    return ServerUnavailableError(
        f"embedded Milvus: port {port} is already in use by another process; "
        f"set embedded_port (MEET_EMBEDDED_PORT) to a free port, or point --uri at "
        f"that server if it is a Milvus"
    )


def _env(name: str) -> str:
    return os.environ.get(name, "")


def _new_password() -> str:
    return secrets.token_urlsafe(24)  # 32 characters; Milvus takes 6 to 256


def _read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _tighten(directory: Path) -> None:
    """Everything under `directory` private to its user: 0700 folders, 0600 files."""
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            with contextlib.suppress(OSError):
                if not os.path.islink(p := os.path.join(root, name)):
                    os.chmod(p, 0o700)
        for name in files:
            with contextlib.suppress(OSError):
                p = os.path.join(root, name)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode & 0o700)


def _package_dir() -> Path:
    spec = importlib.util.find_spec("milvus")
    if spec is None or not spec.submodule_search_locations:
        raise ServerUnavailableError(
            "embedded Milvus: the package 'milvus' (2.3.5) is not installed"
        )
    return Path(spec.submodule_search_locations[0])


def _package_version() -> str:
    return importlib.metadata.version("milvus")


def _binaries(cache_dir: Path) -> Path:
    """The package's Milvus binary and libraries, unpacked once per version into the cache.

    What is run must be what the package shipped and can have been put there by no one else:
    every folder and file from the cache dir down is the user's and writable by no other account
    (`_check_owned`), and the files hash as the package's own did when unpacked (recorded in the
    user's home, `_BINARY_HASHES`, not in the cache); anything else is unpacked again.
    """
    target = cache_dir / "milvus" / _package_version() / "bin"
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_owned(cache_dir, target)
    packed = sorted((_package_dir() / "data" / "bin").glob("*.lzma"))
    key = hashlib.sha256(json.dumps(_hash_files(packed), sort_keys=True).encode()).hexdigest()
    expected = _owned_json(_BINARY_HASHES).get(key)
    if _unpacked_match(target, expected):
        return target
    files = _unpack(packed, target, cache_dir)
    record = _owned_json(_BINARY_HASHES)
    _BINARY_HASHES.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(_BINARY_HASHES, json.dumps({**record, key: files}, indent=2))
    if not _unpacked_match(target, files):
        raise ServerUnavailableError(
            f"embedded Milvus: {target} does not hold what the package 'milvus' shipped "
            f"(changed while it was unpacked?); remove it to unpack the server again"
        )
    return target


def _unpack(packed: list[Path], target: Path, cache_dir: Path) -> dict[str, str]:
    """Unpack the package's files into `target`; their names and sha256 hashes."""
    tmp = target.with_name(f"bin.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o755, parents=True)
        _check_owned(cache_dir, tmp)
        files = {}
        for source in packed:
            unpacked = tmp / source.name.removesuffix(".lzma")
            digest = hashlib.sha256()
            with lzma.open(source) as src, unpacked.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
            unpacked.chmod(0o755)
            files[unpacked.name] = digest.hexdigest()
        if "milvus" not in files:
            raise ServerUnavailableError(f"embedded Milvus: no Milvus binary in {packed[0].parent}")
        shutil.rmtree(target, ignore_errors=True)  # what was there did not match
        with contextlib.suppress(OSError):  # another process may have won the race
            tmp.rename(target)
        return files
    except OSError as e:
        raise ServerUnavailableError(
            f"embedded Milvus: cannot unpack the server into {target} ({e})"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _owned_json(path: Path) -> dict:
    """`path`'s JSON object when the file is this user's and writable by no one else, else {}."""
    try:
        info = path.lstat()
    except OSError:
        return {}
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return {}
    return _read_json(path)


def _check_owned(cache_dir: Path, target: Path) -> None:
    """Refuse to run anything under `target` unless every existing folder and file from
    `cache_dir` down to it (and in it) is this user's and writable by no one else."""
    cache_dir, target = cache_dir.absolute(), target.absolute()
    chain = [p for p in (*reversed(target.parents), target) if p.is_relative_to(cache_dir)]
    if target.is_dir():
        chain += sorted(target.iterdir())
    for path in chain:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ServerUnavailableError(
                f"embedded Milvus: cannot check {path} ({e.strerror})"
            ) from None
        why = None
        if stat.S_ISLNK(info.st_mode):
            why = "is a symbolic link"
        elif info.st_uid != os.getuid():
            why = f"belongs to uid {info.st_uid}"
        elif info.st_mode & 0o022:
            why = f"is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
        if why:
            raise ServerUnavailableError(
                f"embedded Milvus: {path} {why}, so the server binary under it could have been "
                f"planted; refused to run it (make the cache dir yours and not group/other-"
                f"writable, or set cache_dir to one that is)"
            )


def _hash_files(paths: list[Path]) -> dict[str, str]:
    found = {}
    for path in paths:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        found[path.name] = digest.hexdigest()
    return found


def _unpacked_match(target: Path, files: object) -> bool:
    """Whether `target` holds exactly `files` (name -> sha256), no more, no less."""
    if not isinstance(files, dict) or not target.is_dir():
        return False
    try:
        present = sorted(target.iterdir())
        return {p.name for p in present} == set(files) and _hash_files(present) == files
    except OSError:
        return False


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


def _alive(pid: int, exe: str, marker: str | None = None) -> bool:
    """True when `pid` is a live (not zombie) process running `exe`, with `marker` among its
    arguments if given (guards against pid reuse)."""
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
        args = (proc / "cmdline").read_bytes().split(b"\0")
        cmdline = [a.decode() for a in args]
    except (OSError, UnicodeDecodeError):
        return False
    if stat.rsplit(")", 1)[1].split()[0] == "Z":
        return False
    # The command line reads empty for a moment while the process is being exec'ed.
    if cmdline[0] == "":
        return True
    return cmdline[0] == exe and (marker is None or marker in cmdline)


def _state_alive(state: dict) -> bool:
    return _alive(state["pid"], state["exe"], state.get("marker"))


def _listens(pid: int, port: int | None) -> bool:
    """True when process `pid` holds the listening TCP socket of `port` (Linux; else False)."""
    if not port:
        return False
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                return True
    return False


def _drop_sessions(etcd_port: int | None, root: str = _DEFAULT_ETCD_ROOT) -> None:
    """Delete the Milvus components' sessions from its embedded etcd, in one transaction.

    Only for an etcd known to be the stopping server's: the components of whichever server's
    etcd answers there exit at once ("session key is deleted, exit").
    """
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

    prefix = f"{root}/meta/session/"  # etcd.rootPath / metaSubPath / session, as configured
    try:
        found = call("kv/range", {"key": b64(prefix), "range_end": b64(prefix[:-1] + "0")})
        # Sessions hold a lease; the one key without (the server-id counter) must stay.
        keys = [kv["key"] for kv in found.get("kvs", []) if kv.get("lease")]
        deletes = [{"request_delete_range": {"key": key}} for key in keys]
        if deletes:
            call("kv/txn", {"success": deletes})
    except (OSError, ValueError, KeyError):
        pass  # then the next start waits for the sessions to expire


def _remove_leftovers(state: dict) -> None:
    """The pid and server-id files a stopped or dead server left in /run/milvus, /tmp/milvus."""
    milvus = state.get("milvus_pid") if state.get("supervised") else state["pid"]
    exe = state.get("milvus_exe", state["exe"])
    if isinstance(milvus, int) and not _alive(milvus, exe):
        with contextlib.suppress(OSError):
            Path(f"/tmp/milvus/server_id_{milvus}").unlink()
    _remove_pid_file(state.get("alias"))
    # Earlier runs left one server-id file per start: those of processes gone are garbage.
    if not Path("/proc/self").exists():
        return  # no way to tell which processes are gone
    with contextlib.suppress(OSError):
        for leftover in Path("/tmp/milvus").glob("server_id_*"):
            pid = leftover.name.removeprefix("server_id_")
            if pid.isdigit() and _gone(int(pid)) and _owned(leftover):
                leftover.unlink(missing_ok=True)


def _remove_pid_file(alias: str | None) -> None:
    if not alias:
        return
    for run_dir in ("/run/milvus", "/tmp/milvus"):
        pid_file = Path(run_dir, f"standalone-{alias}.pid")
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip() or 0)
            if not pid or _gone(pid):
                pid_file.unlink()


def _gone(pid: int) -> bool:
    """True when process `pid` has exited: no such process, or a zombie not reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _inside(path: Path, directory: Path) -> bool:
    """Whether `path` lies in `directory`, whichever symlinks lead to either."""
    return path.resolve().is_relative_to(directory.resolve())


def _owned(path: Path) -> bool:
    return path.stat().st_uid == os.getuid()


def _healthy(metrics_port: int) -> bool:
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as resp:
            return b"OK" in resp.read()
    except (OSError, urllib.error.URLError):
        return False


def _health_answer(path: Path) -> bool:
    """Whether the supervisor listening at `path` finds its server healthy."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(_unix_address(path))
            return s.recv(16) == b"OK"
    except OSError:
        return False


def _unix_address(path: Path) -> str:
    # A Unix socket's address holds at most 107 bytes; a deeper one is reached through the
    # descriptor of its folder (Linux), whatever the length of the folder's path.
    if len(os.fsencode(path)) < 100:
        return str(path)
    fd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    _held_dirs.append(fd)  # kept open: a few per process at most (one per data dir)
    return f"/proc/self/fd/{fd}/{path.name}"


_held_dirs: list[int] = []


def _check_runtime_dir() -> None:
    """Milvus 2.3.5 keeps its server-id files (and, unless it may write /run/milvus, its pid
    files) in /tmp/milvus, and exits 255 without a word when it cannot write there (a
    /tmp/milvus made 0700 by another user); no setting moves it, so say so before launching."""
    path = Path(_RUNTIME_DIR)
    usable = path if path.is_dir() else path.parent
    if os.access(usable, os.W_OK | os.X_OK) and not path.is_symlink():
        return
    try:
        info = path.lstat()
        held = f"belongs to uid {info.st_uid} (mode {stat.S_IMODE(info.st_mode):o})"
    except OSError as e:
        held = f"cannot be made ({e.strerror})"
    raise ServerUnavailableError(
        f"embedded Milvus: {path} {held}; Milvus 2.3.5 keeps its runtime files there and cannot "
        f"be told another folder: ask the owner of {path} to remove it, or point --uri at a "
        f"server of your own"
    )


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


def _rotate_files(log: Path, backups: int) -> None:
    """milvus.log -> milvus.log.1 -> ... -> milvus.log.<backups> (the oldest is dropped)."""
    for i in range(backups - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            log.with_name(f"{log.name}.{i}").replace(log.with_name(f"{log.name}.{i + 1}"))
    with contextlib.suppress(FileNotFoundError):
        log.replace(log.with_name(f"{log.name}.1"))


def _die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig)


# -- the supervisor (a process of its own, started by EmbeddedServer._launch) -----------------

_SUPERVISOR_MAIN = "from meet_milvus.server import _supervise; _supervise()"
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def _supervise() -> None:
    """Run Milvus as `sys.argv[1]` (a spec written by `_launch`) says, until it exits.

    Isolated: bind the proxy's port on this machine's 127.0.0.1 and open the machine's TCP
    table (who owns each connection) first, then move into a new network namespace, where
    Milvus starts and listens. Then: write its output to the rotated log, relay the owner's
    connections (`meet_milvus.relay`), answer health checks on a socket in the milvus dir, and
    on SIGTERM drop its sessions and stop it.
    """
    spec = json.loads(Path(sys.argv[1]).read_text())
    os.umask(0o077)  # what Milvus writes is private too
    log = _RotatingLog(Path(spec["log"]), spec["log_max_bytes"], spec["log_backups"])
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.set())
    isolated = spec["network"] == "isolated"
    try:
        # Before any thread starts: a process must be single-threaded to leave its namespaces.
        listener = _host_listener(spec["proxy_port"]) if isolated else None
        peers = _peer_table() if isolated else None
        if isolated:
            _own_network()
            health = _health_listener(Path(spec["health_socket"]))
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **spec["env"]}
        try:
            milvus = subprocess.Popen(
                spec["milvus"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,  # a killed supervisor leaves no server behind
            )
        except OSError as e:
            raise _SetupError("exec", f"cannot run {spec['milvus'][0]} ({e.strerror})") from None
    except _SetupError as e:
        log.note("ERROR", f"embedded Milvus not started: {e}")
        write_private(Path(spec["error_file"]), json.dumps(e.record))
        sys.exit(_EXIT_SETUP)
    write_private(Path(spec["run_file"]), json.dumps({"milvus_pid": milvus.pid}))
    assert milvus.stdout is not None
    pump = threading.Thread(target=log.pump, args=(milvus.stdout,), daemon=True)
    pump.start()
    if listener is not None and peers is not None:
        port = spec["proxy_port"]
        relay = Relay(listener, ("127.0.0.1", port), spec["owner"], peers, note=log.note)
        threading.Thread(target=relay.serve_forever, daemon=True).start()
        checks = threading.Thread(target=_serve_health, args=(health, spec["metrics_port"]))
        checks.daemon = True
        checks.start()
        log.note("INFO", f"isolated: relaying 127.0.0.1:{port} for uid {spec['owner']}")
    stopped = False
    while True:
        try:
            code = milvus.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if stopping.is_set() and not stopped:
            # Isolated, any etcd in this network is this server's; on the host network the port
            # may have been taken over by another server's etcd, so check who holds it.
            if isolated or _listens(milvus.pid, spec["etcd_port"]):
                _drop_sessions(spec["etcd_port"], spec["etcd_root"])
            milvus.send_signal(signal.SIGTERM)
            stopped = True
    pump.join(timeout=10)
    with contextlib.suppress(OSError):
        Path(f"/tmp/milvus/server_id_{milvus.pid}").unlink()
    _remove_pid_file(spec["alias"])
    if isolated:
        with contextlib.suppress(OSError):
            Path(spec["health_socket"]).unlink()
    log.note("INFO", f"embedded Milvus exited ({code})")
    write_private(Path(spec["run_file"]), json.dumps({"milvus_pid": milvus.pid, "exit": code}))
    sys.exit(code if code >= 0 else 128 - code)


def _host_listener(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        raise _SetupError("port_taken", f"port {port}: {e.strerror}", port) from None
    s.listen(128)
    return s


def _peer_table() -> PeerTable:
    try:
        return PeerTable()
    except OSError as e:
        raise _SetupError("isolation", f"cannot read the TCP table ({e.strerror})") from None


def _health_listener(path: Path) -> socket.socket:
    """The health socket, in the 0700 milvus dir: only its owner reaches it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path.name)  # relative to the supervisor's folder: no limit on the path's length
    except OSError as e:
        raise _SetupError("health", f"cannot make {path} ({e.strerror})") from None
    s.listen(16)
    return s


def _serve_health(listener: socket.socket, metrics_port: int) -> None:
    """Answer each connection "OK" or "NO": the server's /healthz, asked inside its network."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            time.sleep(0.1)
            continue
        with conn:
            answer = b"OK" if _healthy(metrics_port) else b"NO"
            with contextlib.suppress(OSError):
                conn.sendall(answer)


def _own_network() -> None:
    """Move this process into a new network namespace, its loopback up (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unshare = libc.unshare
    except (OSError, AttributeError):
        raise _SetupError("isolation", "no network namespaces on this system") from None

    def call(flags: int) -> None:
        if unshare(flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    try:
        try:
            call(_CLONE_NEWNET)  # root (CAP_SYS_ADMIN) needs no user namespace
        except PermissionError:
            uid, gid = os.getuid(), os.getgid()
            call(_CLONE_NEWUSER | _CLONE_NEWNET)
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        # A new namespace's loopback is down: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            request = struct.pack("16sH22x", b"lo", 0)
            flags = struct.unpack("16sH22x", fcntl.ioctl(s, 0x8913, request))[1]
            fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1))
    except OSError as e:
        raise _SetupError("isolation", f"unshare: {e.strerror}") from None


class _RotatingLog:
    """The server's log on this process's stdout and stderr, rotated by size."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self.size = os.fstat(1).st_size
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            if self.size and self.size + len(data) > self.max_bytes:
                _rotate_files(self.path, self.backups)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(fd)
                self.size = 0
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
            self.size += len(data)

    def note(self, level: str, message: str) -> None:
        """A line in Milvus's own format, so that `_log_hint` finds errors."""
        now = time.strftime("%Y/%m/%d %H:%M:%S +00:00", time.gmtime())
        self.write(f'[{now}] [{level}] [meet_milvus/server.py] ["{message}"]\n'.encode())

    def pump(self, stream: Any) -> None:
        fd = stream.fileno()
        while chunk := os.read(fd, 1 << 16):
            self.write(chunk)
