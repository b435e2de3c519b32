"""The supervisor of the embedded Milvus: `python -m meet_milvus.server.supervisor SPEC`, started
by `EmbeddedServer` (lifecycle.py) with the JSON spec it wrote, runs Milvus until it exits.

Isolated: bind the proxy's port on this machine's 127.0.0.1 and open the machine's TCP table (who
owns each connection) first, then move into a new network namespace, where Milvus starts and
listens. Then: write its output to the rotated log, relay the owner's connections (relay.py),
answer health checks on a socket in the milvus dir (health.py), and on SIGTERM drop its etcd
sessions and stop it. A failed set-up exits EXIT_SETUP with why in the spec's error file.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import IO

from meet_milvus.files import write_private
from meet_milvus.server import health
from meet_milvus.server.processes import (
    die_with_parent,
    drop_sessions,
    listens,
    remove_pid_file,
    remove_server_id,
)
from meet_milvus.server.relay import PeerTable, Relay

EXIT_SETUP = 70  # the server could not be set up; why is in the spec's error file
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


class SetupError(Exception):
    """The server could not be set up; `record` (kind, detail, port) is what the starter reads."""

    def __init__(self, kind: str, detail: str, port: int | None = None) -> None:
        super().__init__(detail)
        self.record = {"kind": kind, "detail": detail, "port": port}


class ServerLog(RotatingFileHandler):
    """The server's log, rotated by size: Milvus's output line by line, and notes of ours."""

    terminator = ""  # a line of Milvus's output ends with its own

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        # surrogateescape: the bytes Milvus wrote reach the file as they were.
        super().__init__(path, "a", max_bytes, backups, encoding="utf-8", errors="surrogateescape")

    def doRollover(self) -> None:  # noqa: N802 - logging's name
        super().doRollover()
        # This process's own stdout and stderr (a traceback) go on into the current file.
        if self.stream is not None:
            os.dup2(self.stream.fileno(), 1)
            os.dup2(self.stream.fileno(), 2)

    def write(self, text: str) -> None:
        self.handle(logging.makeLogRecord({"msg": text}))

    def note(self, level: str, message: str) -> None:
        """A line in Milvus's own format, so that the starter finds errors (`failures.py`)."""
        now = time.strftime("%Y/%m/%d %H:%M:%S +00:00", time.gmtime())
        self.write(f'[{now}] [{level}] [meet_milvus/server/supervisor.py] ["{message}"]\n')

    def pump(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self.write(line.decode("utf-8", "surrogateescape"))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    os.umask(0o077)  # what Milvus writes is private too
    log = ServerLog(Path(spec["log"]), spec["log_max_bytes"], spec["log_backups"])
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stopping.set())
    isolated = spec["network"] == "isolated"
    try:
        # Before any thread starts: a process must be single-threaded to leave its namespaces.
        held = _isolate(spec) if isolated else None
        milvus = _start_milvus(spec)
    except SetupError as e:
        log.note("ERROR", f"embedded Milvus not started: {e}")
        write_private(Path(spec["error_file"]), json.dumps(e.record))
        sys.exit(EXIT_SETUP)
    write_private(Path(spec["run_file"]), json.dumps({"milvus_pid": milvus.pid}))
    assert milvus.stdout is not None
    pump = threading.Thread(target=log.pump, args=(milvus.stdout,), daemon=True)
    pump.start()
    if held is not None:
        _serve(spec, *held, log)
    code = _wait(milvus, stopping, spec)
    pump.join(timeout=10)
    remove_server_id(milvus.pid)
    remove_pid_file(spec["alias"])
    if isolated:
        Path(spec["health_socket"]).unlink(missing_ok=True)
    log.note("INFO", f"embedded Milvus exited ({code})")
    write_private(Path(spec["run_file"]), json.dumps({"milvus_pid": milvus.pid, "exit": code}))
    sys.exit(code if code >= 0 else 128 - code)


def _isolate(spec: dict) -> tuple[socket.socket, PeerTable, socket.socket]:
    """This machine's end of the relay and its TCP table, then a network of our own, and the
    health socket."""
    listener = _host_listener(spec["proxy_port"])
    try:
        peers = PeerTable()
    except OSError as e:
        raise SetupError("isolation", f"cannot read the TCP table ({e.strerror})") from None
    _own_network()
    try:
        checks = health.listen(Path(spec["health_socket"]))
    except OSError as e:
        raise SetupError("health", f"cannot make {spec['health_socket']} ({e.strerror})") from None
    return listener, peers, checks


def _start_milvus(spec: dict) -> subprocess.Popen:
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **spec["env"]}
    try:
        return subprocess.Popen(
            spec["milvus"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # a killed supervisor leaves no server behind
        )
    except OSError as e:
        raise SetupError("exec", f"cannot run {spec['milvus'][0]} ({e.strerror})") from None


def _serve(
    spec: dict, listener: socket.socket, peers: PeerTable, checks: socket.socket, log: ServerLog
) -> None:
    """Relay the owner's connections into the server's network, and answer health checks."""
    port = spec["proxy_port"]
    relay = Relay(listener, ("127.0.0.1", port), spec["owner"], peers, note=log.note)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    threading.Thread(target=health.serve, args=(checks, spec["metrics_port"]), daemon=True).start()
    log.note("INFO", f"isolated: relaying 127.0.0.1:{port} for uid {spec['owner']}")


def _wait(milvus: subprocess.Popen, stopping: threading.Event, spec: dict) -> int:
    """Milvus's exit code; on a stop signal, its sessions dropped and SIGTERM sent first."""
    stopped = False
    while True:
        try:
            return milvus.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            pass
        if stopping.is_set() and not stopped:
            # Isolated, any etcd in this network is this server's; on the host network the port
            # may have been taken over by another server's etcd, so check who holds it.
            if spec["network"] == "isolated" or listens(milvus.pid, spec["etcd_port"]):
                drop_sessions(spec["etcd_port"], spec["etcd_root"])
            milvus.send_signal(signal.SIGTERM)
            stopped = True


def _host_listener(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        s.close()
        raise SetupError("port_taken", f"port {port}: {e.strerror}", port) from None
    s.listen(128)
    return s


def _own_network() -> None:
    """Move this process into a new network namespace, its loopback up (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        unshare = libc.unshare
    except (OSError, AttributeError):
        raise SetupError("isolation", "no network namespaces on this system") from None

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
        raise SetupError("isolation", f"unshare: {e.strerror}") from None


if __name__ == "__main__":
    main()
