"""Session fixture: a tiny MEET checkpoint trained for a few steps on the demo_data fixture.

Small on purpose (64-d embeddings, 2 epochs, short k-means): the runtime tests need a real
model with real codes, not a good one.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def _data_dir(demo_data) -> Path:
    return Path(getattr(demo_data, "data_dir", demo_data))


@pytest.fixture(scope="session")
def demo_checkpoint(demo_data, tmp_path_factory) -> Path:
    """Directory of a checkpoint trained on demo_data's train split (dev for selection)."""
    from meet_milvus.config import Settings
    from meet_milvus_training.config import TrainConfig
    from meet_milvus_training.trainer import train

    data_dir = _data_dir(demo_data)
    settings = Settings(
        data_dir=data_dir,
        cache_dir=getattr(demo_data, "cache_dir", data_dir / "cache"),
        device="cpu",
    )
    config = TrainConfig(
        data_name="demo",
        embed_size=64,
        num_epochs=2,
        batch_size=32,
        kmeans_iters=5,
        K=4,  # 16 codewords a sub-space: enough points to fit them on a small train split
        seed=0,
    )
    output = tmp_path_factory.mktemp("checkpoint") / "demo"
    result = train(config, settings, output=output, progress=False, log=lambda _m: None)
    return Path(result.checkpoint)


@pytest.fixture(scope="session")
def runtime_settings(milvus_settings, demo_data):
    """Settings reaching the test Milvus by URI, with demo_data's data and cache dirs."""
    from meet_milvus.config import load_settings
    from meet_milvus.server import EmbeddedServer

    server = EmbeddedServer(milvus_settings)
    return load_settings(
        milvus_uri=server.status().uri,
        milvus_token=server.token(),  # the embedded server asks for its stored credential
        data_dir=_data_dir(demo_data),
        cache_dir=getattr(demo_data, "cache_dir", _data_dir(demo_data) / "cache"),
        device="cpu",
    )


@pytest.fixture(scope="session")
def demo_gallery(runtime_settings, demo_checkpoint) -> str:
    """Name of a gallery holding demo_data's test split, loaded with demo_checkpoint."""
    from meet_milvus_loaders.milvus_loader import load

    load(runtime_settings, "t_demo", checkpoint=demo_checkpoint, data="demo", drop=True,
         progress=False)  # fmt: skip
    return "t_demo"


@pytest.fixture(scope="session")
def demo_items(runtime_settings, demo_checkpoint):
    """(model, the demo's test split, its rows as a load writes them: 8 neighbours)."""
    from meet_milvus.model import load_checkpoint
    from meet_milvus_loaders.milvus_loader import encode_split, split_items
    from meet_milvus_loaders.precomp import load_split

    model = load_checkpoint(demo_checkpoint, "cpu")
    split = load_split(runtime_settings.data_dir, "demo", "test")
    images, texts = encode_split(model, split, runtime_settings.cache_dir, 64, False)
    return model, split, split_items(split, images, texts, neighbours=8)


@pytest.fixture(scope="session")
def searcher(runtime_settings, demo_gallery):
    """A searcher of the demo gallery; no checkpoint given: the gallery's own is taken."""
    from meet_milvus import MeetSearcher

    return MeetSearcher(demo_gallery, settings=runtime_settings)


@pytest.fixture(scope="session")
def split(runtime_settings):
    """demo_data's test split: the gallery's images and captions."""
    from meet_milvus_loaders.precomp import load_split

    return load_split(runtime_settings.data_dir, "demo", "test")


@pytest.fixture(scope="session")
def cli_flags(runtime_settings, tmp_path_factory) -> list[str]:
    """`meet-milvus` global flags that reach the test server with runtime_settings (the token
    in a file: on a command line every local user could read it)."""
    s = runtime_settings
    token_file = tmp_path_factory.mktemp("token") / "milvus.token"
    token_file.write_text(s.milvus_token.get_secret_value())
    token_file.chmod(0o600)
    return ["--uri", s.milvus_uri, "--token-file", str(token_file),
            "--data-dir", str(s.data_dir), "--cache-dir", str(s.cache_dir),
            "--device", "cpu"]  # fmt: skip
