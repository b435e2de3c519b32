"""Session fixture: one real embedded Milvus 2.3.5 server for the whole test session.

Use it as `client = connect(milvus_settings)`. It runs on a free port under a temp dir, so it
never touches a user's server; its binaries are unpacked once into the usual cache dir
(MEET_CACHE_DIR or ~/.meet-milvus/cache) and reused by later sessions.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from meet_milvus.config import Settings
from meet_milvus.server import EmbeddedServer


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def embedded_settings(data_dir, **overrides) -> Settings:
    """Settings for an embedded server of our own, whatever MEET_* variables say."""
    values = dict(
        milvus_uri=None,
        milvus_token="",
        milvus_db="default",
        data_dir=data_dir,
        embedded_port=free_port(),
    )
    return Settings(**{**values, **overrides})


@pytest.fixture(scope="session")
def milvus_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings whose embedded Milvus is running (stopped at session end, even on failure)."""
    settings = embedded_settings(tmp_path_factory.mktemp("milvus"))
    server = EmbeddedServer(settings)
    try:
        # die_with_parent: a killed pytest leaves no server behind.
        server.start(die_with_parent=True)
        yield settings
    finally:
        server.stop()
