"""Session fixture `demo_data`: a small REAL demo set (Tux Paint stamps, EfficientNet features).

The stamps package and the image features are cached across runs in MEET_TEST_CACHE (default
~/.cache/meet-milvus-tests), so only the first run on a machine downloads (~160 MB) and extracts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meet_milvus.config import Settings, load_settings

DEMO_SIZES = {"train": 40, "dev": 10, "test": 20}
DEMO_SEED = 0


def test_cache_dir() -> Path:
    return Path(os.environ.get("MEET_TEST_CACHE", Path.home() / ".cache" / "meet-milvus-tests"))


test_cache_dir.__test__ = False  # a helper, not a test


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose data_dir holds data set "demo" (train 40 / dev 10 / test 20 images, five
    captions each); its cache_dir is the persistent test cache."""
    from meet_milvus_loaders.demo import build_demo

    data_dir = tmp_path_factory.mktemp("demo-data")
    settings = load_settings(data_dir=data_dir, cache_dir=test_cache_dir(), device="cpu")
    build_demo(
        settings.data_dir,
        settings.cache_dir,
        seed=DEMO_SEED,
        sizes=DEMO_SIZES,
        device="cpu",
        progress=False,
    )
    return settings
