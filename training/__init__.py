"""MEET training: encoders, hash heads, product quantization and the redundancy-aware objective.

The runtime imports only the checkpoint API from here; it is loaded on first use so that
`import training` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.checkpoint import load_checkpoint
    from training.config import ModelConfig
    from training.model import Encoded, MeetModel

__all__ = ["Encoded", "MeetModel", "ModelConfig", "load_checkpoint"]

_WHERE = {
    "load_checkpoint": "training.checkpoint",
    "ModelConfig": "training.config",
    "Encoded": "training.model",
    "MeetModel": "training.model",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
