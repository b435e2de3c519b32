"""Serving the app with uvicorn: in the foreground (`meet-milvus serve`) or in a thread (tests,
the screenshot in tests/tools, examples/serve.py)."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from meet_milvus.errors import MeetError, ParameterError

MAX_CONNECTIONS = 64  # open at once; past this uvicorn answers 503 (a page needs a few)
HEADER_TIMEOUT = 10.0  # seconds a new connection has to send its first request's headers


def bind(host: str = "127.0.0.1", port: int = 8080) -> socket.socket:
    """A listening socket; port 0 picks a free one. Bound here, before the slow model load, so
    a port in use is one clear line rather than a uvicorn log after a minute."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        raise ParameterError(f"host {host}: {e.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise MeetError(
            f"port {port} on {host}: {e.strerror} (choose another with --port)"
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # reachable from this machine
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config(app: Any, log_level: str = "info", header_timeout: float = HEADER_TIMEOUT) -> Any:
    """uvicorn's settings: at most MAX_CONNECTIONS at once, and a connection that has not sent
    a request's headers within `header_timeout` seconds closed (else 500 connections holding
    half a header stay open for good: a slowloris)."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeout(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.loop.call_later(header_timeout, self._no_request_yet)

        def _no_request_yet(self) -> None:
            if self.cycle is None and not self.transport.is_closing():
                self.transport.close()

    return uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="off",
        access_log=False,
        http=HeaderTimeout,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=5,
    )


def serve(app: Any, sock: socket.socket, log_level: str = "info") -> None:
    """Serves on `sock` until Ctrl-C (uvicorn handles the signal and closes cleanly)."""
    import uvicorn

    uvicorn.Server(config(app, log_level)).run(sockets=[sock])


@contextmanager
def serving(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout: float = 30,
    header_timeout: float = HEADER_TIMEOUT,
) -> Iterator[str]:
    """Runs the app in a background thread for the duration of the block; yields its URL."""
    import uvicorn

    sock = bind(host, port)
    server = uvicorn.Server(config(app, "warning", header_timeout))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise MeetError(f"the web server did not start within {timeout:g} s")
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
