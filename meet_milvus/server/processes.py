"""The embedded server's processes and ports: which pids are still its own, which ports are
free, the etcd sessions and runtime files a stopped server leaves behind."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import sys
import urllib.request
from pathlib import Path

import psutil

from meet_milvus.errors import ServerUnavailableError

DEFAULT_ETCD_ROOT = "by-dev"  # Milvus's own
_RUNTIME_DIR = "/tmp/milvus"  # shared by every user: Milvus 2.3.5 has no setting for it
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- processes --------------------------------------------------------------------------------


def alive(pid: int, exe: str, marker: str | None = None) -> bool:
    """True when `pid` is a live (not zombie) process running `exe`, with `marker` among its
    arguments if given (guards against pid reuse)."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:  # gone, a zombie, or not ours to read
        return False
    # The command line reads empty for a moment while the process is being exec'ed.
    if not cmdline:
        return True
    return cmdline[0] == exe and (marker is None or marker in cmdline)


def state_alive(state: dict) -> bool:
    """Whether the supervisor a state file names is alive."""
    return alive(state["pid"], state["exe"], state.get("marker"))


def gone(pid: int) -> bool:
    """True when process `pid` has exited: no such process, or a zombie not reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def listens(pid: int, port: int | None) -> bool:
    """True when process `pid` holds the listening TCP socket of `port`."""
    if not port:
        return False
    try:
        found = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in found)


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """In a child before exec: get `sig` when the thread that started it exits (Linux)."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, sig)


# -- ports ------------------------------------------------------------------------------------


def port_free(port: int) -> bool:
    # SO_REUSEADDR like Milvus's own listeners: a port in TIME_WAIT counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_ports(n: int, exclude: set[int]) -> list[int]:
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


def port_in_use(port: int) -> ServerUnavailableError:
    return ServerUnavailableError(
        f"embedded Milvus: port {port} is already in use by another process; "
        f"set embedded_port (MEET_EMBEDDED_PORT) to a free port, or point --uri at "
        f"that server if it is a Milvus"
    )


# -- what a server leaves behind ----------------------------------------------------------------


def drop_sessions(etcd_port: int | None, root: str = DEFAULT_ETCD_ROOT) -> None:
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
        with NO_PROXY.open(request, timeout=5) as resp:
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


def remove_leftovers(state: dict) -> None:
    """The pid and server-id files a stopped or dead server left in /run/milvus, /tmp/milvus."""
    milvus = state.get("milvus_pid")
    if isinstance(milvus, int) and not alive(milvus, state.get("milvus_exe", "")):
        remove_server_id(milvus)
    remove_pid_file(state.get("alias"))
    # Each start leaves a server-id file: those of processes gone are garbage.
    with contextlib.suppress(OSError):
        for leftover in Path(_RUNTIME_DIR).glob("server_id_*"):
            pid = leftover.name.removeprefix("server_id_")
            if pid.isdigit() and gone(int(pid)) and leftover.stat().st_uid == os.getuid():
                leftover.unlink(missing_ok=True)


def remove_server_id(milvus_pid: int) -> None:
    with contextlib.suppress(OSError):
        Path(_RUNTIME_DIR, f"server_id_{milvus_pid}").unlink()


def remove_pid_file(alias: str | None) -> None:
    if not alias:
        return
    for run_dir in ("/run/milvus", _RUNTIME_DIR):
        pid_file = Path(run_dir, f"standalone-{alias}.pid")
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip() or 0)
            if not pid or gone(pid):
                pid_file.unlink()


def check_runtime_dir() -> None:
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
