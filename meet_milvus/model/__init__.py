"""The model as the runtime uses it: encoders, hash heads, PQ codebooks, reading a checkpoint,
encoding texts and images (`MeetModel`, `Encoded`). Training builds on these; nothing here
imports it.

Names load on first use (torch is heavy), so `meet_milvus.model.features` and the configs
import without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meet_milvus.model.checkpoint import load_checkpoint
    from meet_milvus.model.config import ModelConfig
    from meet_milvus.model.meet_model import Encoded, MeetModel

__all__ = ["Encoded", "MeetModel", "ModelConfig", "load_checkpoint"]

_WHERE = {
    "load_checkpoint": "meet_milvus.model.checkpoint",
    "ModelConfig": "meet_milvus.model.config",
    "Encoded": "meet_milvus.model.meet_model",
    "MeetModel": "meet_milvus.model.meet_model",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'meet_milvus.model' has no attribute {name!r}")
