"""The configured Milvus: the embedded server (started or reused) or the server at a URI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

from meet_milvus.config import Settings, redact_uri
from meet_milvus.errors import ServerUnavailableError
from meet_milvus.server.client import CONNECT_TIMEOUT, NotAnswering, open_client
from meet_milvus.server.lifecycle import EmbeddedServer

if TYPE_CHECKING:
    from pymilvus import MilvusClient


def connect(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> MilvusClient:
    """A client of the configured Milvus: the embedded server (started or reused) or the URI.

    The embedded server is reached with its stored credential unless a token is configured.
    """
    token = settings.milvus_token
    # A model_copy(update=...) skips validation and may leave a plain str.
    token = token.get_secret_value() if isinstance(token, SecretStr) else str(token)
    if not settings.embedded:
        return open_client(settings.milvus_uri, token, settings.milvus_db, timeout)
    server = EmbeddedServer(settings)
    uri = server.start().uri
    try:
        return open_client(uri, token or server.token(), settings.milvus_db, timeout)
    except NotAnswering as e:
        raise ServerUnavailableError(f"{e}; see its log {server.log}") from None


def describe(settings: Settings) -> str:
    """Where the configured Milvus is, for an error message: its URI without credentials
    and, for the embedded server, its log."""
    if not settings.embedded:
        return f"Milvus at {redact_uri(settings.milvus_uri or '')}"
    server = EmbeddedServer(settings)
    return f"embedded Milvus at {server.uri()} (log {server.log})"
