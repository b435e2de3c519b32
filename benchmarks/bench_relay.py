"""How much the embedded Milvus's relay costs, and what a Unix socket would have cost instead.

Issue 19 asked to measure and choose between (a) the proxy served on a Unix socket inside the
0700 milvus dir and (b) the TCP relay on 127.0.0.1 checking the uid of every accepted connection.
Both relay into a TCP port, as the supervisor relays into Milvus's network namespace; an echo
server stands for Milvus, so only the relays differ. Measured: the round trip of a small message
(a gRPC call's frames are a few hundred bytes) on an open connection, direct and through each
relay, and the cost of opening a connection (the uid check reads the kernel's TCP tables once).

    python -m benchmarks.bench_relay [--rounds 5000] [--out benchmarks/results/relay]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from meet_milvus.server.relay import PeerTable, Relay, _Pair

MESSAGE = b"x" * 256


def _echo() -> tuple[str, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def echo(c: socket.socket = conn) -> None:
                with c:
                    while data := c.recv(65536):
                        c.sendall(data)

            threading.Thread(target=echo, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()


def _tcp_relay(upstream: tuple[str, int]) -> tuple[str, int]:
    listener = socket.create_server(("127.0.0.1", 0))
    relay = Relay(listener, upstream, os.getuid(), PeerTable())
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    return listener.getsockname()


def _unix_relay(upstream: tuple[str, int], folder: Path) -> str:
    """What option (a) would run: a socket in a 0700 folder (the file system admits the owner
    only), relayed to the same TCP port."""
    path = str(folder / "proxy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            up = socket.create_connection(upstream)
            threading.Thread(target=_Pair(conn, up, 600.0).run, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return path


def _connect_tcp(address: tuple[str, int]) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        s = socket.create_connection(address)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    return connect


def _connect_unix(path: str) -> Callable[[], socket.socket]:
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        return s

    return connect


def _round_trips(connect: Callable[[], socket.socket], rounds: int) -> list[float]:
    with connect() as s:
        for _ in range(200):  # warm up
            s.sendall(MESSAGE)
            _read(s, len(MESSAGE))
        times = []
        for _ in range(rounds):
            began = time.perf_counter()
            s.sendall(MESSAGE)
            _read(s, len(MESSAGE))
            times.append(time.perf_counter() - began)
    return times


def _first_answers(connect: Callable[[], socket.socket], n: int) -> list[float]:
    """Connect, send, read the answer, close: what a new client pays once."""
    times = []
    for _ in range(n):
        began = time.perf_counter()
        with connect() as s:
            s.sendall(MESSAGE)
            _read(s, len(MESSAGE))
        times.append(time.perf_counter() - began)
    return times


def _read(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = s.recv(n - got)
        if not chunk:
            raise ConnectionError("closed")
        got += len(chunk)


def _summary(times: list[float]) -> dict:
    us = sorted(t * 1e6 for t in times)
    return {
        "p50_us": round(statistics.median(us), 1),
        "p95_us": round(us[int(0.95 * (len(us) - 1))], 1),
        "mean_us": round(statistics.fmean(us), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5000, help="round trips per path")
    parser.add_argument("--connections", type=int, default=300, help="new connections per path")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    upstream = _echo()
    with tempfile.TemporaryDirectory(prefix="meet-relay-") as folder:
        os.chmod(folder, 0o700)
        paths = {
            "direct TCP (no relay)": _connect_tcp(upstream),
            "TCP relay, uid check per connection (chosen)": _connect_tcp(_tcp_relay(upstream)),
            "Unix socket relay in a 0700 folder": _connect_unix(
                _unix_relay(upstream, Path(folder))
            ),
        }
        rows = {}
        for name, connect in paths.items():
            rows[name] = {
                "round_trip": _summary(_round_trips(connect, args.rounds)),
                "new_connection": _summary(_first_answers(connect, args.connections)),
            }
    table = PeerTable()
    checks: dict[str, list[float]] = {"sock_diag lookup": [], "TCP tables scan (fallback)": []}
    probe = socket.create_server(("127.0.0.1", 0))
    with socket.create_connection(probe.getsockname()):
        conn, peer = probe.accept()
        local = conn.getsockname()
        for name, lookup in zip(checks, (table._ask, table._look_up), strict=True):
            if name.startswith("sock_diag") and table._netlink is None:
                continue
            for _ in range(200):
                began = time.perf_counter()
                assert lookup(peer, local) == os.getuid()
                checks[name].append(time.perf_counter() - began)
        conn.close()
    rows_in_tables = sum(table._table(fd).count(b"\n") - 1 for fd in table._fds.values())
    result = {
        "rounds": args.rounds,
        "connections": args.connections,
        "message_bytes": len(MESSAGE),
        "cpus": os.cpu_count(),
        "paths": rows,
        "uid_check": {k: _summary(v) for k, v in checks.items() if v},
        "tcp_table_rows": rows_in_tables,
    }
    lines = [
        f"| path ({len(MESSAGE)}-byte message) | round trip p50 / p95 (µs) | "
        "new connection + first answer p50 / p95 (µs) |",
        "|---|---:|---:|",
    ]
    for name, row in rows.items():
        rt, nc = row["round_trip"], row["new_connection"]
        lines.append(
            f"| {name} | {rt['p50_us']} / {rt['p95_us']} | {nc['p50_us']} / {nc['p95_us']} |"
        )
    lines.append("")
    for name, row in result["uid_check"].items():
        lines.append(
            f"uid check by {name} ({rows_in_tables} sockets in the tables): "
            f"p50 {row['p50_us']} µs, p95 {row['p95_us']} µs"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
