"""The low-level pymilvus client: opened with one-line errors that never show a credential."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from meet_milvus.config import redact_uri
from meet_milvus.errors import ServerUnavailableError
from meet_milvus.gallery_layout import MILVUS_LITE

if TYPE_CHECKING:
    from pymilvus import MilvusClient

CONNECT_TIMEOUT = 10.0


class NotAnswering(ServerUnavailableError):
    """Nothing answers at the URI."""


class AuthRefused(ServerUnavailableError):
    """The server refused the credential."""


def local_uri(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def open_client(uri: str, token: str, db_name: str, timeout: float, **kwargs: Any) -> MilvusClient:
    """A MilvusClient of `uri`; NotAnswering, AuthRefused or ServerUnavailableError in one line."""
    import grpc
    from pymilvus import MilvusClient
    from pymilvus.client.types import Status
    from pymilvus.exceptions import MilvusException

    where = f"Milvus at {redact_uri(uri)}"
    with quiet_pymilvus(), warnings.catch_warnings():
        # Milvus Lite 2.5 (a `.db` URI) imports pkg_resources, which warns it is deprecated.
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
        try:
            client = MilvusClient(uri=uri, token=token, db_name=db_name, timeout=timeout, **kwargs)
            # pymilvus 3 shares one connection per address and token, whatever the database: a
            # client of a connection already open asks the server nothing, and a refused
            # credential or a missing database would surface at its first real call instead.
            client.list_collections()
            return client
        except MilvusException as e:
            cause = e.__cause__  # pymilvus 3 wraps a refused credential as a failed connection
            if isinstance(cause, grpc.RpcError) and cause.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise AuthRefused(f"{where}: authentication refused (check the token)") from None
            if e.code == Status.CONNECT_FAILED:
                raise NotAnswering(f"{where}: not answering") from None
            raise ServerUnavailableError(f"{where}: {clean(e.message, token)}") from None
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise AuthRefused(f"{where}: authentication refused (check the token)") from None
            raise ServerUnavailableError(f"{where}: {clean(str(e.details()), token)}") from None


def server_version(client: MilvusClient) -> str:
    """The version the server reports, e.g. 'v2.3.5-lite' for the embedded one; MILVUS_LITE
    for Milvus Lite (a local `.db` file), which implements no version request."""
    import grpc

    try:
        with quiet_pymilvus():  # Lite's refusal is logged as an error otherwise
            return client.get_server_version()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return MILVUS_LITE
        raise


@contextlib.contextmanager
def quiet_pymilvus() -> Iterator[None]:
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


def clean(message: str, secret: str = "") -> str:
    """A server's message for one line: no credentials, no trailing period."""
    # A token "user:password" may show whole or as its password alone.
    for part in sorted({secret, secret.partition(":")[2]}, key=len, reverse=True):
        if len(part) >= 4:
            message = message.replace(part, "***")
    return redact_uri(message).strip().rstrip(".")
