"""Reading checkpoint directories: safetensors weights and codebooks, a JSON config, nothing
pickled. (Writing them is the trainer's: meet_milvus_training.checkpoint.)

config.json          ModelConfig: dims, encoders, codes, the network's shape, fingerprint, the
                     training run's hyper-parameters (format 2; format 1 is read too)
model.safetensors    network weights (a frozen transformer is not copied: its path and hash
                     are in the config)
codebooks.safetensors  "codebooks" (M, 2**K, H // M) float32, or (2, M, 2**K, H // M) with
                     config `pq_layout` "per_modality" (image set, text set)
vocab.json           BiGRU word list (bigru only)
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from meet_milvus.config import resolve_device
from meet_milvus.errors import CheckpointError, ParameterError
from meet_milvus.files import read_json
from meet_milvus.model.config import READABLE_VERSIONS, ModelConfig
from meet_milvus.model.meet_model import MeetModel
from meet_milvus.model.network import TRANSFORMER_PREFIX, MeetNet, build_net
from meet_milvus.model.onnx_text import OnnxTextPath
from meet_milvus.model.quantization import Quantizers
from meet_milvus.model.text_model import default_text_model, resolve_text_model, text_model_sha
from meet_milvus.model.vocab import Vocabulary

CONFIG, WEIGHTS, VOCAB = "config.json", "model.safetensors", "vocab.json"
CODEBOOKS = "codebooks.safetensors"


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


def read_config(path: str | Path) -> ModelConfig:
    if not isinstance(path, str | os.PathLike):
        raise CheckpointError(
            f"checkpoint: expected a directory path, got {type(path).__name__}"
        )
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such directory")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path}: not a directory")
    file = path / CONFIG
    if not file.is_file():
        raise CheckpointError(f"checkpoint {path}: {CONFIG} missing (not a MEET checkpoint)")
    try:
        raw = read_json(file)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: not UTF-8, not JSON
        raise CheckpointError(f"checkpoint {file}: unreadable ({e})") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path}: format version {version}, this meet-milvus reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise CheckpointError(f"checkpoint {file}: field {where!r}: {err['msg']}") from None


def load_tensors(file: Path) -> dict[str, Tensor]:
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file.parent}: {file.name} missing")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {file}: unreadable ({e})") from None


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
    raise CheckpointError(
        f"checkpoint {path}: its text model {config.text_model} is missing (no model with hash "
        f"{(config.text_model_sha or '')[:12]} found)"
    )


def load_network(
    path: str | Path, device: str = "cpu"
) -> tuple[MeetNet, Quantizers, ModelConfig]:
    """The network, quantizer and config of a checkpoint directory, on `device`."""
    config = read_config(path)  # first: it refuses what is not a path
    path = Path(path)
    weights = load_tensors(path / WEIGHTS)
    codebooks = load_tensors(path / CODEBOOKS).get("codebooks")
    if codebooks is None:
        raise CheckpointError(f"checkpoint {path}: {CODEBOOKS} holds no 'codebooks'")
    sha = config.text_model_sha if not config.text_finetune else None
    if fingerprint(weights, codebooks, sha) != config.fingerprint:
        raise CheckpointError(f"checkpoint {path}: weights do not match the config's fingerprint")
    vocab = None
    if config.text_encoder == "bigru":
        vocab_file = path / VOCAB
        if not vocab_file.is_file():
            raise CheckpointError(f"checkpoint {path}: {VOCAB} missing")
        try:
            vocab = Vocabulary(read_json(vocab_file))
        except (OSError, ValueError, RecursionError, TypeError) as e:
            raise CheckpointError(f"checkpoint {vocab_file}: not a vocabulary ({e})") from None
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
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit its config.json ({detail})"
        ) from None
    frozen = config.text_encoder == "bert" and not config.text_finetune
    missing = [k for k in missing if not (frozen and k.startswith(TRANSFORMER_PREFIX))]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: weights do not fit the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    try:
        # A checkpoint from before `pq_layout` has none in its config: shared.
        quantizer = Quantizers(config.H, config.M, config.K, config.pq_layout, codebooks)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
    return net.to(device), quantizer.to(device), config


def load_checkpoint(
    path: str | Path,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    text_runtime: str = "auto",
) -> MeetModel:
    """A trained MEET model ready to encode; `device` "auto" picks cuda when present.
    `cache_dir` caches image files' grid features and the exported text graph (the settings'
    cache dir; None: no cache). `text_runtime` runs captions through "torch" or "onnx" (ONNX
    Runtime, CPU only); "auto" takes ONNX Runtime on the CPU for a transformer text encoder."""
    device = resolve_device(device)
    if text_runtime not in ("auto", "torch", "onnx"):
        raise ParameterError(f"text runtime {text_runtime!r}: expected auto, torch or onnx")
    if text_runtime == "onnx" and device != "cpu":
        raise ParameterError(f"text runtime onnx runs on the CPU, not on {device}")
    net, quantizer, config = load_network(path, device)
    net.eval()
    cache = Path(cache_dir) if cache_dir is not None else None
    onnx = text_runtime == "onnx" or (
        text_runtime == "auto" and device == "cpu" and config.text_encoder == "bert"
    )
    text_path = OnnxTextPath(net, config.fingerprint, cache) if onnx else None
    return MeetModel(
        net, quantizer, config, device, source=Path(path), cache_dir=cache, text_path=text_path
    )
