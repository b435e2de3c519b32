"""Checkpoint directories: safetensors weights and codebooks, a JSON config, nothing pickled.

config.json          ModelConfig: dims, encoders, codes, every hyper-parameter, fingerprint
model.safetensors    network weights (a frozen transformer is not copied: its path and hash
                     are in the config)
codebooks.safetensors  "codebooks" (M, 2**K, H // M) float32, or (2, M, 2**K, H // M) with
                     config `pq_layout` "per_modality" (image set, text set)
vocab.json           BiGRU word list (bigru only)
optimizer.safetensors, objective.safetensors, trainer.json
                     only in a resumable run's `last/` directory
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from meet_milvus.errors import MeetError
from training.config import FORMAT_VERSION, ModelConfig
from training.model import MeetModel
from training.network import TRANSFORMER_PREFIX, MeetNet, build_net
from training.quantization import Quantizers
from training.text_model import default_text_model, resolve_text_model, text_model_sha
from training.vocab import Vocabulary

CONFIG, WEIGHTS, VOCAB = "config.json", "model.safetensors", "vocab.json"
CODEBOOKS = "codebooks.safetensors"
OPTIMIZER, OBJECTIVE, TRAINER = "optimizer.safetensors", "objective.safetensors", "trainer.json"


def fingerprint(weights: dict[str, Tensor], codebooks: Tensor, text_model_sha: str | None) -> str:
    """sha256 (first 16 hex) of every weight and codeword (names, dtypes, shapes, bytes), plus the
    hash of a frozen text model, whose weights are part of the model without being copied."""
    h = hashlib.sha256()
    items = sorted(weights.items()) + [("__codebooks__", codebooks)]
    for name, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update((text_model_sha or "").encode())
    return h.hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.chmod(tmp, 0o644)  # safetensors creates files private; checkpoints are shared artefacts
    os.replace(tmp, path)


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


def read_config(path: str | Path) -> ModelConfig:
    if not isinstance(path, str | os.PathLike):
        raise MeetError(f"checkpoint: expected a directory path, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise MeetError(f"checkpoint {path}: no such directory")
    if not path.is_dir():
        raise MeetError(f"checkpoint {path}: not a directory")
    file = path / CONFIG
    if not file.is_file():
        raise MeetError(f"checkpoint {path}: {CONFIG} missing (not a MEET checkpoint)")
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not UTF-8, not JSON
        raise MeetError(f"checkpoint {file}: unreadable ({e})") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise MeetError(
            f"checkpoint {path}: format version {version}, this meet-milvus reads {FORMAT_VERSION}"
        )
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise MeetError(f"checkpoint {file}: field {where!r}: {err['msg']}") from None


def _load_tensors(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise MeetError(f"checkpoint {file.parent}: {file.name} missing")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise MeetError(f"checkpoint {file}: unreadable ({e})") from None


def _text_model_for(config: ModelConfig, path: Path) -> str | None:
    """The frozen/initial text model's directory: as recorded, else the default offline model if
    it is the same model (paths differ between machines)."""
    if config.text_encoder != "bert":
        return None
    for candidate in (config.text_model, default_text_model()):
        if candidate and Path(candidate).is_dir():
            p = resolve_text_model(candidate)
            if config.text_finetune or text_model_sha(p) == config.text_model_sha:
                return str(p)
    raise MeetError(
        f"checkpoint {path}: its text model {config.text_model} is missing (no model with hash "
        f"{(config.text_model_sha or '')[:12]} found)"
    )


def load_network(
    path: str | Path, device: str = "cpu"
) -> tuple[MeetNet, Quantizers, ModelConfig]:
    """The network, quantizer and config of a checkpoint directory, on `device`."""
    config = read_config(path)  # first: it refuses what is not a path
    path = Path(path)
    weights = _load_tensors(path / WEIGHTS)
    codebooks = _load_tensors(path / CODEBOOKS).get("codebooks")
    if codebooks is None:
        raise MeetError(f"checkpoint {path}: {CODEBOOKS} holds no 'codebooks'")
    sha = config.text_model_sha if not config.text_finetune else None
    if fingerprint(weights, codebooks, sha) != config.fingerprint:
        raise MeetError(f"checkpoint {path}: weights do not match the config's fingerprint")
    vocab = None
    if config.text_encoder == "bigru":
        vocab_file = path / VOCAB
        if not vocab_file.is_file():
            raise MeetError(f"checkpoint {path}: {VOCAB} missing")
        try:
            vocab = Vocabulary(json.loads(vocab_file.read_text()))
        except (ValueError, TypeError) as e:
            raise MeetError(f"checkpoint {vocab_file}: not a vocabulary ({e})") from None
    text_model = _text_model_for(config, path)
    if text_model:
        config = config.model_copy(update={"text_model": text_model})
    net = build_net(config, vocab)
    try:
        missing, unexpected = net.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # a tensor of another shape: config.json edited, or another run's
        found = re.search(r"size mismatch for ([^:]+): .*?(torch\.Size\(\[[^]]*\]\)).*?"
                          r"(torch\.Size\(\[[^]]*\]\))", str(e), re.S)  # fmt: skip
        detail = (
            f"'{found[1]}' is {found[2]} in the weights, {found[3]} in the config"
            if found
            else " ".join(str(e).split())[:200]
        )
        raise MeetError(
            f"checkpoint {path}: weights do not fit its config.json ({detail})"
        ) from None
    frozen = config.text_encoder == "bert" and not config.text_finetune
    missing = [k for k in missing if not (frozen and k.startswith(TRANSFORMER_PREFIX))]
    if missing or unexpected:
        raise MeetError(
            f"checkpoint {path}: weights do not fit the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    try:
        # A checkpoint from before `pq_layout` has none in its config: shared.
        quantizer = Quantizers(config.H, config.M, config.K, config.pq_layout, codebooks)
    except ValueError as e:
        raise MeetError(f"checkpoint {path}: {e}") from None
    return net.to(device), quantizer.to(device), config


def load_checkpoint(path: str | Path, device: str = "auto") -> MeetModel:
    """A trained MEET model ready to encode; `device` "auto" picks cuda when present."""
    from meet_milvus.config import resolve_device

    device = resolve_device(device)
    net, quantizer, config = load_network(path, device)
    net.eval()
    return MeetModel(net, quantizer, config, device, source=Path(path))


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
        raise MeetError(f"resume {path}: {TRAINER} missing (not a resumable run directory)")
    body = json.loads(file.read_text())
    tensors = _load_tensors(path / OPTIMIZER)
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *body.pop("scalars").items()]:
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    groups = body.pop("param_groups")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise MeetError(f"resume {path}: optimizer state does not fit this model ({e})") from None
    try:
        objective.load_state_dict(_load_tensors(path / OBJECTIVE))
    except RuntimeError as e:
        raise MeetError(f"resume {path}: objective state does not fit ({e})") from None
    return body
