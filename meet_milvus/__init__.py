"""meet-milvus: MEET image-text retrieval as a Milvus plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meet_milvus.config import Settings, load_settings
from meet_milvus.errors import MeetError

if TYPE_CHECKING:
    from meet_milvus.results import Hit
    from meet_milvus.searcher import MeetSearcher, SearchConfig

__all__ = ["Hit", "MeetError", "MeetSearcher", "SearchConfig", "Settings", "load_settings"]

# Heavy parts (pymilvus, torch) load on first use so `import meet_milvus` stays light.
_LAZY = {
    "MeetSearcher": "meet_milvus.searcher",
    "SearchConfig": "meet_milvus.searcher",
    "Hit": "meet_milvus.results",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'meet_milvus' has no attribute {name!r}")
