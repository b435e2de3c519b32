"""Whether the embedded server is healthy: its /healthz on the metrics port, asked directly (host
network) or, isolated, by its supervisor inside the server's network and answered on a Unix
socket in the 0700 milvus dir (the metrics port, whose endpoints change settings, is never
reachable from this machine's network)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.error
from pathlib import Path

from meet_milvus.server.processes import NO_PROXY

HEALTH_SOCKET = "health.sock"  # in the milvus dir


def healthy(metrics_port: int) -> bool:
    """Whether Milvus's /healthz answers OK on `metrics_port` of this network's loopback."""
    try:
        with NO_PROXY.open(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as resp:
            return b"OK" in resp.read()
    except (OSError, urllib.error.URLError):
        return False


def ask(path: Path) -> bool:
    """Whether the supervisor listening at `path` finds its server healthy."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(_unix_address(path))
            return s.recv(16) == b"OK"
    except OSError:
        return False


def listen(path: Path) -> socket.socket:
    """The health socket at `path`, for a process whose working folder is `path`'s: only the
    owner of the (0700) folder reaches it. Raises OSError."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(path.name)  # relative to the working folder: no limit on the path's length
    except OSError:
        s.close()
        raise
    s.listen(16)
    return s


def serve(listener: socket.socket, metrics_port: int) -> None:
    """Answer each connection "OK" or "NO": the server's /healthz, asked inside its network."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            time.sleep(0.1)
            continue
        with conn:
            answer = b"OK" if healthy(metrics_port) else b"NO"
            with contextlib.suppress(OSError):
                conn.sendall(answer)


def _unix_address(path: Path) -> str:
    # A Unix socket's address holds at most 107 bytes; a deeper one is reached through the
    # descriptor of its folder (Linux), whatever the length of the folder's path.
    if len(os.fsencode(path)) < 100:
        return str(path)
    fd = os.open(path.parent, os.O_PATH | os.O_CLOEXEC)
    _held_dirs.append(fd)  # kept open: a few per process at most (one per data dir)
    return f"/proc/self/fd/{fd}/{path.name}"


_held_dirs: list[int] = []
