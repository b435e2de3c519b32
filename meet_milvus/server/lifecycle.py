"""The embedded server of one data dir: start (or reuse), stop, inspect.

A start launches the supervisor (`python -m meet_milvus.server.supervisor`, detached, so that it
outlives the command that started it) with a spec of what to run; a state file (server.json)
under `settings.milvus_dir` lets later commands find, reuse and stop it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from logging.handlers import RotatingFileHandler
from pathlib import Path

from meet_milvus.config import Settings
from meet_milvus.errors import ParameterError, ServerUnavailableError
from meet_milvus.files import private_dir, private_tree, read_record, write_private
from meet_milvus.inputs import check_seconds
from meet_milvus.server import configs, health, processes
from meet_milvus.server.binaries import binaries, package_version
from meet_milvus.server.client import CONNECT_TIMEOUT, local_uri, open_client, server_version
from meet_milvus.server.credentials import Credentials
from meet_milvus.server.failures import HOST_NETWORK_RISK, ExitedEarly, PortTaken, start_failure

START_TIMEOUT = 120.0  # seconds; a start takes 3 to 5 s on 2 idle cores, more when they are busy
STOP_TIMEOUT = 30.0  # then SIGKILL
RESTART_PAUSE = 3.0  # seconds between starts after a crash, while old sessions expire
LOG_MAX_BYTES = 32 << 20  # the server's log is rotated at this size (idle: ~0.2-0.5 MB a minute)
LOG_BACKUPS = 4  # rotated logs kept: milvus.log.1 (newest) .. milvus.log.4
SUPERVISOR = "meet_milvus.server.supervisor"  # run with `python -m`


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


class EmbeddedServer:
    """The embedded Milvus standalone server of one data dir: start, reuse, stop, inspect."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = settings.milvus_dir.absolute()  # the supervisor runs elsewhere
        self.log = self.directory / "logs" / "milvus.log"
        self.credentials = self.directory / "credentials.json"
        self._keys = Credentials(self.credentials)
        self._state_file = self.directory / "server.json"
        self._run_file = self.directory / "run.json"  # the supervisor: Milvus's pid
        self._error_file = self.directory / "start-error.json"  # the supervisor: why it failed
        self._proc: subprocess.Popen | None = None  # the supervisor, when this object launched it

    def start(self, timeout: float = START_TIMEOUT, die_with_parent: bool = False) -> ServerStatus:
        """Start the server, or reuse the one already running; return once it answers.

        `die_with_parent` ties the server's life to this process (test fixtures): on Linux it
        gets SIGTERM when the calling thread exits, however that happens.
        """
        # Before anything launches: a start that cannot wait stops the server it launched.
        check_seconds(timeout, "embedded Milvus start timeout")
        with self._locked():
            state = self._read_state()
            if state and processes.state_alive(state):
                try:
                    self._wait_ready(state, timeout)
                    return self._answering()
                except ExitedEarly:
                    pass  # it died while we looked (a crash): a new one starts below
            if state:
                processes.remove_leftovers(state)  # of a server that died
            # A server killed without a stop (kill -9, a crash) leaves its components' sessions
            # in etcd until their leases run out (~30 s); a start before then exits ("node
            # not match"), so after a crash exits are retried until `timeout`.
            crashed, deadline = state is not None, time.monotonic() + timeout
            for attempt in itertools.count(1):
                self._state_file.unlink(missing_ok=True)
                state = self._launch(die_with_parent)
                try:
                    self._wait_ready(state, max(1.0, deadline - time.monotonic()))
                    self._keys.authenticate(local_uri(state["port"]))
                    return self._answering()
                except PortTaken:
                    # Another program took a port between our check and its bind.
                    self._terminate(state, STOP_TIMEOUT)
                    if attempt >= 2:
                        raise
                    (self.directory / "ports.json").unlink(missing_ok=True)
                except ExitedEarly:
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
            if state and processes.state_alive(state):
                pid = state["pid"]
                self._terminate(state, timeout)
            elif state:
                processes.remove_leftovers(state)
            self._state_file.unlink(missing_ok=True)
            return pid

    def status(self) -> ServerStatus:
        """Whether the server runs, where, and which version it reports."""
        state = self._read_state()
        found = ServerStatus(False, self.uri(state), self.directory, self.log)
        if not state or not processes.state_alive(state):
            return found
        network = state.get("network")
        found = ServerStatus(
            False, found.uri, self.directory, self.log, pid=state["pid"], network=network
        )
        if not self._healthy(state):
            return found
        token = self.token()
        # An alias of its own: closing it must not close a caller's shared connection.
        alias = f"meet-status-{found.uri}-{hashlib.sha256(token.encode()).hexdigest()[:8]}"
        try:
            client = open_client(found.uri, token, "", CONNECT_TIMEOUT, alias=alias)
            version = server_version(client)
            client.close()
        except Exception:  # a proxy not answering yet counts as not running
            return found
        return ServerStatus(True, found.uri, self.directory, self.log, found.pid, version, network)

    def uri(self, state: dict | None = None) -> str:
        """Where the server answers, or will once started (`state`: its state, if read)."""
        state = state or self._read_state()
        return local_uri(state["port"] if state else self.settings.embedded_port)

    def token(self) -> str:
        """The stored credential as a Milvus token ("root:<password>"), or "" before the first
        start. Never print it."""
        return self._keys.token()

    def rotate_credentials(self, timeout: float = START_TIMEOUT) -> Path:
        """Give root a new generated password, stored in `self.credentials`; the file's path.

        Starts the server if it is not running. A process connected before keeps the old
        token and is refused from now on.
        """
        self.start(timeout=timeout)
        with self._locked():
            state = self._read_state()
            if not state or not processes.state_alive(state):
                raise ServerUnavailableError(
                    "embedded Milvus stopped before its credential could be rotated"
                )
            return self._keys.rotate(local_uri(state["port"]))

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
        if state.get("network") == "isolated":
            return health.ask(self.directory / health.HEALTH_SOCKET)
        return health.healthy(state["metrics_port"])

    # -- launching --------------------------------------------------------------------------

    def _launch(self, die_with_parent: bool) -> dict:
        """Launch the supervisor (which runs Milvus); the state that names it, written."""
        port, network = self.settings.embedded_port, self.settings.embedded_network
        if network == "host" and not self.settings.embedded_host_network_confirmed:
            raise ParameterError(HOST_NETWORK_RISK)
        if not processes.port_free(port):
            raise processes.port_in_use(port)
        processes.check_runtime_dir()
        exe = (binaries(self.settings.cache_dir) / "milvus").absolute()
        ports = configs.choose_ports(self.directory, port)
        etcd_root = configs.etcd_root(self.directory)
        config_dir = configs.write_configs(self.settings, self.directory, port, ports, etcd_root)
        alias = f"meet{port}"  # names Milvus's pid file /run/milvus/standalone-<alias>.pid
        spec_file = config_dir / "supervisor.json"
        spec = self._spec(exe, config_dir, ports, etcd_root, alias)
        write_private(spec_file, json.dumps(spec, indent=2))
        for stale in (self._run_file, self._error_file):
            stale.unlink(missing_ok=True)
        _new_log(self.log)
        package_root = str(Path(__file__).resolve().parents[2])
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEET_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, _env("PYTHONPATH")]))
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = self._proc = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR, str(spec_file)],
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,  # survives the terminal and the CLI process
                preexec_fn=processes.die_with_parent if die_with_parent else None,
            )
        finally:
            os.close(fd)
        state = {
            "pid": proc.pid,  # the supervisor; Milvus dies with it
            "exe": sys.executable,
            "marker": str(spec_file),  # in the supervisor's command line: guards pid reuse
            "milvus_exe": str(exe),
            "port": port,
            "metrics_port": ports["metrics_port"],
            "ports": ports,
            "alias": alias,
            "network": network,
            "etcd_root": etcd_root,
            "version": package_version(),
            "started": time.time(),
        }
        self._write_state(state)
        return state

    def _spec(self, exe: Path, config_dir: Path, ports: dict, etcd_root: str, alias: str) -> dict:
        """What the supervisor runs, and how (read by supervisor.py)."""
        libraries = {
            name: os.pathsep.join(filter(None, [str(exe.parent), _env(name)]))
            for name in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH")
        }
        return {
            "milvus": [str(exe), "run", "standalone", "-alias", alias],
            "env": {
                "DEPLOY_MODE": "STANDALONE",
                "MILVUSCONF": str(config_dir),
                "METRICS_PORT": str(ports["metrics_port"]),
                "ETCD_CONFIG_PATH": str(config_dir / "embedEtcd.yaml"),
                **libraries,
            },
            "network": self.settings.embedded_network,
            # Isolated, the proxy's port is relayed from this machine's 127.0.0.1 into its
            # network, for this user only; the metrics port is not (it turns authentication off).
            "proxy_port": self.settings.embedded_port,
            "metrics_port": ports["metrics_port"],
            "owner": os.getuid(),
            "health_socket": str(self.directory / health.HEALTH_SOCKET),
            "etcd_port": ports["etcd_port"],
            "etcd_root": etcd_root,
            "alias": alias,
            "log": str(self.log),
            "log_max_bytes": LOG_MAX_BYTES,
            "log_backups": LOG_BACKUPS,
            "run_file": str(self._run_file),
            "error_file": str(self._error_file),
        }

    def _wait_ready(self, state: dict, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._healthy(state):
            if not processes.state_alive(state):
                raise start_failure(state, self._error_file, self._run_file, self.log, self._proc)
            if time.monotonic() > deadline:
                raise ServerUnavailableError(
                    f"embedded Milvus did not answer within {timeout:.0f} s on port "
                    f"{state['port']}; see its log {self.log}"
                )
            time.sleep(0.2)
        if self._note_milvus_pid(state):
            self._write_state(state)

    def _note_milvus_pid(self, state: dict) -> bool:
        """Add Milvus's pid (from the supervisor's run file) to `state`; whether it was added."""
        if "milvus_pid" in state:
            return False
        milvus_pid = read_record(self._run_file).get("milvus_pid")
        if isinstance(milvus_pid, int):
            state["milvus_pid"] = milvus_pid
        return "milvus_pid" in state

    def _terminate(self, state: dict, timeout: float) -> None:
        # The supervisor drops the sessions of its server's etcd, then stops Milvus.
        pid = state["pid"]
        self._note_milvus_pid(state)  # stopped before it answered
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._exited(state, timeout):
            milvus = state.get("milvus_pid")
            victims = [pid] if processes.state_alive(state) else []
            if milvus and processes.alive(milvus, state.get("milvus_exe", "")):
                victims.append(milvus)
            for victim in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            if not self._exited(state, 10.0):
                raise ServerUnavailableError(
                    f"embedded Milvus (pid {pid}) did not stop; see its log {self.log}"
                )
        processes.remove_leftovers(state)

    def _exited(self, state: dict, wait: float) -> bool:
        deadline = time.monotonic() + wait
        milvus, milvus_exe = state.get("milvus_pid"), state.get("milvus_exe", "")
        while processes.state_alive(state) or (milvus and processes.alive(milvus, milvus_exe)):
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
                private_tree(self.directory)
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
        state = read_record(self._state_file)
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


def _new_log(log: Path) -> None:
    """Each run starts a log of its own: milvus.log -> milvus.log.1 -> ... (the oldest goes)."""
    rotating = RotatingFileHandler(log, backupCount=LOG_BACKUPS, delay=True)
    rotating.doRollover()
    rotating.close()


def _env(name: str) -> str:
    return os.environ.get(name, "")


def _inside(path: Path, directory: Path) -> bool:
    """Whether `path` lies in `directory`, whichever symlinks lead to either."""
    return path.resolve().is_relative_to(directory.resolve())
