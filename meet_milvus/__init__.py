"""meet-milvus: MEET image-text retrieval as a Milvus plugin."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# A query runs two thread pools on the same cores: ONNX Runtime's (the text encoder) and OpenMP's
# (torch and faiss, between encodings). OpenMP's threads spin after each parallel region by
# default and take the cores ONNX Runtime's next run needs (README, "What a user waits for").
# OpenMP reads this when it loads, so it is set before torch or faiss can load; a user's own
# setting stands.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from meet_milvus.config import Settings, load_settings
from meet_milvus.errors import MeetError

if TYPE_CHECKING:
    from meet_milvus.results import Hit
    from meet_milvus.search_config import SearchConfig
    from meet_milvus.searcher import MeetSearcher
    from meet_milvus.writer import GalleryWriter, NewItem

__all__ = ["GalleryWriter", "Hit", "MeetError", "MeetSearcher", "NewItem", "SearchConfig",
           "Settings", "load_settings"]  # fmt: skip

# Heavy parts (pymilvus, torch) load on first use so `import meet_milvus` stays light.
_LAZY = {
    "MeetSearcher": "meet_milvus.searcher",
    "SearchConfig": "meet_milvus.search_config",
    "Hit": "meet_milvus.results",
    "GalleryWriter": "meet_milvus.writer",
    "NewItem": "meet_milvus.writer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'meet_milvus' has no attribute {name!r}")
