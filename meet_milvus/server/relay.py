"""The relay of the embedded Milvus's proxy port: this machine's 127.0.0.1 into the server's
own network namespace, for its owner only (run by the supervisor, `supervisor.py`).

Milvus 2.3.5 lets through any request that carries the cluster-member header, whatever its
password, so whoever reaches its proxy port can be its admin. Loopback is shared by every
account of the machine, so a relay that copies bytes for anyone hands the server to every local
user. This one admits only the connections whose socket belongs to the server's owner (asked of
the kernel for each accepted connection, `PeerTable`, before a byte is relayed), holds at most
`max_connections` at a time, closes those idle for `idle_timeout` seconds, and keeps accepting
whatever an accept or a thread start fails with.

Why a peer-uid check rather than a Unix socket: every client keeps the address it has
(http://127.0.0.1:<port>, pymilvus in the user's own programs included), and the check costs a
kernel lookup per connection, not per request (measured in the README, "Reliability and
security": `python -m benchmarks.bench_relay`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

MAX_CONNECTIONS = 64  # relayed at once; more are closed at once (a client has one or two)
IDLE_TIMEOUT = 600.0  # seconds without a byte either way (pymilvus pings every 55 s)
_TICK = 5.0  # seconds between idle checks of a connection
_ACCEPT_PAUSE = 0.1  # seconds after an accept that failed for want of descriptors or memory
_NETLINK_SOCK_DIAG = 4  # linux/netlink.h
_SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h
_NLMSG_ERROR = 2
_UID_OFFSET = 64  # of idiag_uid in struct inet_diag_msg


class PeerTable:
    """Who owns the loopback TCP connections of this machine's network.

    Asked of the kernel by the connection's addresses (sock_diag netlink: one lookup, ~0.1 ms
    whatever the number of sockets), or, where that is missing (no tcp_diag module), found in
    its TCP tables (/proc/net/tcp and tcp6: a read of every socket's row, tens of ms on a busy
    machine). Both are opened when this object is made and keep describing the network this
    process was in then: the supervisor makes it before it moves into Milvus's namespace.
    (Not psutil: its connection lists read the tables of the namespace the process is in when
    asked, and scan every socket, where this asks the host's for one connection.)
    """

    def __init__(self, tables: tuple[str, ...] = ("/proc/self/net/tcp", "/proc/self/net/tcp6")):
        self._lock = threading.Lock()
        self._netlink: socket.socket | None = None
        try:
            self._netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
            self._netlink.settimeout(5)
        except (OSError, AttributeError):  # not Linux, or no sock_diag
            self._netlink = None
        self._fds = {}
        for table in tables:
            try:
                self._fds[table.endswith("6")] = os.open(table, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if not table.endswith("6"):  # no IPv6 on this machine is fine, no IPv4 is not
                    raise

    def close(self) -> None:
        if self._netlink is not None:
            self._netlink.close()
        for fd in self._fds.values():
            os.close(fd)

    def owner(self, peer: tuple[str, int], local: tuple[str, int]) -> int | None:
        """The uid of the socket at `peer` connected to `local` (both IPv4), or None."""
        with self._lock:
            if self._netlink is not None:
                try:
                    return self._ask(peer, local)
                except OSError:
                    self._netlink.close()  # no sock_diag for TCP here: the tables from now on
                    self._netlink = None
            return self._look_up(peer, local)

    def _ask(self, peer: tuple[str, int], local: tuple[str, int]) -> int | None:
        # inet_diag_req_v2 for one socket: the client's end (its address and port first), any
        # state, no cookie. An IPv6 socket connected to a mapped IPv4 address is found too.
        assert self._netlink is not None
        sockid = (
            struct.pack("!HH", peer[1], local[1])
            + socket.inet_aton(peer[0]).ljust(16, b"\0")
            + socket.inet_aton(local[0]).ljust(16, b"\0")
            + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
        )
        request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
        body = request + sockid
        header = struct.pack("=IHHII", 16 + len(body), _SOCK_DIAG_BY_FAMILY, 1, 0, 0)
        self._netlink.send(header + body)
        answer = self._netlink.recv(1 << 16)
        kind = struct.unpack_from("=H", answer, 4)[0]
        if kind == _NLMSG_ERROR:
            error = -struct.unpack_from("=i", answer, 16)[0]
            if error == errno.ENOENT:
                return None  # no such connection (gone already)
            raise OSError(error, os.strerror(error))
        return struct.unpack_from("=I", answer, 16 + _UID_OFFSET)[0]

    def _table(self, fd: int) -> bytes:
        chunks = []
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def _look_up(self, peer: tuple[str, int], local: tuple[str, int]) -> int | None:
        for ipv6, fd in sorted(self._fds.items(), reverse=True):  # IPv6 first: gRPC's
            # A row: "sl local remote state queues timer retransmits uid ..."; found by its
            # two addresses, the only row holding both in that order.
            want = f" {_hex_address(peer, ipv6)} {_hex_address(local, ipv6)} ".encode()
            table = self._table(fd)
            at = table.find(want)
            if at >= 0:
                return int(table[at : table.find(b"\n", at)].split()[6])
        return None


def _hex_address(address: tuple[str, int], ipv6: bool = False) -> str:
    # The kernel prints an address as host-order hex 32-bit words, then the port; in the IPv6
    # table an IPv4 peer shows as its mapped address ::ffff:a.b.c.d.
    packed = socket.inet_aton(address[0])
    if ipv6:
        packed = bytes(10) + b"\xff\xff" + packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{address[1]:04X}"


class Relay:
    """Accept on `listener`, admit the owner's connections, and copy bytes both ways between
    each and a new connection to `upstream`."""

    def __init__(
        self,
        listener: socket.socket,
        upstream: tuple[str, int],
        owner: int,
        peers: PeerTable,
        note: Callable[[str, str], None] = lambda level, message: None,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.listener, self.upstream, self.owner, self.peers = listener, upstream, owner, peers
        self.note = note
        self.max_connections, self.idle_timeout = max_connections, idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = {"stranger": 0, "full": 0}  # counts, for the log and the tests
        self._noted: set[str] = set()

    def serve_forever(self) -> None:
        """Accept until the listener is closed; no error ends the loop otherwise."""
        while True:
            try:
                conn, peer = self.listener.accept()
            except OSError as e:
                if e.errno in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
                    return  # the listener was closed: the relay stops
                self._once("accept", f"relay: accept failed ({e.strerror}); still accepting")
                time.sleep(_ACCEPT_PAUSE)  # EMFILE, ENFILE, ENOBUFS, ENOMEM: pass
                continue
            try:
                self._admit(conn, peer)
            except Exception as e:  # noqa: BLE001 - one connection's trouble never ends the loop
                conn.close()
                self._once("admit", f"relay: a connection failed ({e}); still accepting")

    def _admit(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        uid = self.peers.owner(peer, conn.getsockname())
        if uid != self.owner:
            self.refused["stranger"] += 1
            self._once("stranger", f"relay: refused a connection of uid {uid} (owner {self.owner})")
            _reset(conn)
            return
        if not self._slots.acquire(blocking=False):
            self.refused["full"] += 1
            self._once("full", f"relay: {self.max_connections} connections open; refusing more")
            _reset(conn)
            return
        try:
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()
        except BaseException:
            self._slots.release()
            raise

    def _relay(self, conn: socket.socket) -> None:
        try:
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                conn.close()
                return
            _Pair(conn, upstream, self.idle_timeout).run()
        finally:
            self._slots.release()

    def _once(self, kind: str, message: str) -> None:
        # A stranger or a flood could fill the log: each kind of refusal is logged once.
        if kind not in self._noted:
            self._noted.add(kind)
            self.note("WARN", message)


def _reset(conn: socket.socket) -> None:
    """Close at once, with a reset: the client sees the refusal before it sends anything."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class _Pair:
    """One relayed connection: two sockets, a thread each way, closed together when either
    side ends or both stay silent for `idle` seconds."""

    def __init__(self, a: socket.socket, b: socket.socket, idle: float) -> None:
        self.a, self.b, self.idle = a, b, idle
        self.last = time.monotonic()
        for s in (a, b):
            s.settimeout(None)  # writes block; reads wait in poll() below, a tick at a time
            if s.family != socket.AF_UNIX:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # gRPC's small frames

    def run(self) -> None:
        try:
            back = threading.Thread(target=self._pump, args=(self.b, self.a), daemon=True)
            back.start()
        except RuntimeError:  # no thread to spare: this connection is dropped, not the relay
            self.a.close()
            self.b.close()
            return
        self._pump(self.a, self.b)
        back.join()
        self.a.close()
        self.b.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        buffer = bytearray(1 << 16)
        waiting = select.poll()
        waiting.register(src, select.POLLIN)
        try:
            while True:
                if not waiting.poll(1000 * min(_TICK, self.idle)):
                    if time.monotonic() - self.last > self.idle:
                        break
                    continue
                if not (n := src.recv_into(buffer)):
                    break
                self.last = time.monotonic()
                dst.sendall(memoryview(buffer)[:n])
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)  # pass the end of the stream on
        if time.monotonic() - self.last > self.idle:
            with contextlib.suppress(OSError):
                src.shutdown(socket.SHUT_RDWR)  # and wake the other direction
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)
