"""Writing checkpoint directories (the reader is meet_milvus.model.checkpoint, whose format
notes apply) and a resumable run's state:

optimizer.safetensors, objective.safetensors, trainer.json
                     only in a resumable run's `last/` directory
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from meet_milvus.errors import CheckpointError
from meet_milvus.files import read_json, replacing
from meet_milvus.model.checkpoint import (
    CODEBOOKS,
    CONFIG,
    VOCAB,
    WEIGHTS,
    fingerprint,
    load_tensors,
)
from meet_milvus.model.config import ModelConfig
from meet_milvus.model.network import MeetNet
from meet_milvus.model.quantization import Quantizers

OPTIMIZER, OBJECTIVE, TRAINER = "optimizer.safetensors", "objective.safetensors", "trainer.json"


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a temporary file that then replaces `path`, readable by all: safetensors
    creates files private, and checkpoints are shared artefacts."""
    with replacing(path, mode=0o644) as tmp:
        write(tmp)


def save_checkpoint(
    path: str | Path, net: MeetNet, quantizer: Quantizers, config: ModelConfig
) -> ModelConfig:
    """Write a checkpoint directory; returns the config with its fingerprint filled in."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in net.saved_state().items()}
    codebooks = quantizer.codebooks.detach().cpu().float().contiguous()
    sha = config.text_model_sha if not config.text_finetune else None
    config = config.model_copy(update={"fingerprint": fingerprint(weights, codebooks, sha)})
    _atomic_write(path / WEIGHTS, lambda p: save_file(weights, str(p)))
    _atomic_write(path / CODEBOOKS, lambda p: save_file({"codebooks": codebooks}, str(p)))
    vocab = getattr(net.text_encoder, "vocab", None)
    if vocab is not None:
        _atomic_write(path / VOCAB, lambda p: p.write_text(json.dumps(vocab.words)))
    # The config goes last: a directory with a config.json is complete.
    _atomic_write(path / CONFIG, lambda p: p.write_text(config.model_dump_json(indent=2)))
    return config


# Resumable training state: optimizer tensors in safetensors, everything else in JSON.


def save_training_state(
    path: Path, optimizer: torch.optim.Optimizer, objective: torch.nn.Module, state: dict[str, Any]
) -> None:
    """Optimizer moments, the objective's own state (queues, momentum copies) and `state`."""
    objective_state = {k: v.detach().cpu().contiguous() for k, v in objective.state_dict().items()}
    _atomic_write(path / OBJECTIVE, lambda p: save_file(objective_state, str(p)))
    opt = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in opt["state"].items():
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    _atomic_write(path / OPTIMIZER, lambda p: save_file(tensors, str(p)))
    body = {"param_groups": opt["param_groups"], "scalars": scalars, **state}
    _atomic_write(path / TRAINER, lambda p: p.write_text(json.dumps(body, indent=2)))


def load_training_state(
    path: Path, optimizer: torch.optim.Optimizer, objective: torch.nn.Module
) -> dict[str, Any]:
    """Restores the optimizer and objective in place; returns the trainer's JSON state."""
    file = path / TRAINER
    if not file.is_file():
        raise CheckpointError(f"resume {path}: {TRAINER} missing (not a resumable run directory)")
    try:
        body = read_json(file)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"resume {path}: {TRAINER} unreadable ({e})") from None
    tensors = load_tensors(path / OPTIMIZER)
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *body.pop("scalars").items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = body.pop("param_groups")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(
            f"resume {path}: optimizer state does not fit this model ({e})"
        ) from None
    try:
        objective.load_state_dict(load_tensors(path / OBJECTIVE))
    except RuntimeError as e:
        raise CheckpointError(f"resume {path}: objective state does not fit ({e})") from None
    return body
