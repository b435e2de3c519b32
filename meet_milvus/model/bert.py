"""A BERT encoder and its WordPiece tokenizer, read from a local model folder without transformers.

Importing transformers and building its model class was most of a one-off text search's
start-up (README "Starting a command"); this module needs only torch, safetensors and
tokenizers, and reads the same folder (config.json, model.safetensors, tokenizer.json) into the
same computation: token ids equal transformers', token states within float rounding
(tests/test_bert.py). Parameter names follow transformers' BertModel, so a fine-tuned encoder's
checkpoint keeps its keys.
Other model families (RoBERTa, DistilBERT, ...) are served by transformers
(`encoders.load_transformer`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from meet_milvus.errors import ParameterError
from meet_milvus.files import read_json

WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
# Names some checkpoints put before the encoder's own (BertForMaskedLM, BertForPreTraining).
_PREFIXES = ("bert.",)


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_dropout_prob: float
    attention_probs_dropout_prob: float
    pad_token_id: int

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        raw = _read_json(path / "config.json")
        try:
            return cls(**{name: type_(raw[name]) for name, type_ in _FIELDS.items()})
        except (KeyError, TypeError, ValueError) as e:
            raise ParameterError(f"text model {path}: config.json lacks a valid {e}") from None


_FIELDS = {
    "vocab_size": int,
    "hidden_size": int,
    "num_hidden_layers": int,
    "num_attention_heads": int,
    "intermediate_size": int,
    "max_position_embeddings": int,
    "type_vocab_size": int,
    "layer_norm_eps": float,
    "hidden_dropout_prob": float,
    "attention_probs_dropout_prob": float,
    "pad_token_id": int,
}


def _read_json(path: Path) -> dict:
    """files.read_json, its failures worded as a text model's; a JSON object."""
    try:
        value = read_json(path)
    except (OSError, ValueError, RecursionError) as e:
        raise ParameterError(f"text model {path}: unreadable ({e})") from None
    if not isinstance(value, dict):
        raise ParameterError(f"text model {path}: expected a JSON object")
    return value


def is_plain_bert(path: str | Path) -> bool:
    """Whether this module serves the folder: a BERT with absolute positions and exact GELU, one
    safetensors file and a fast-tokenizer file. Anything else goes to transformers."""
    path = Path(path)
    try:
        raw = read_json(path / "config.json")
    except (OSError, ValueError, RecursionError):
        return False
    return (
        isinstance(raw, dict)
        and raw.get("model_type") == "bert"
        and raw.get("position_embedding_type", "absolute") == "absolute"
        and raw.get("hidden_act", "gelu") == "gelu"
        and not raw.get("is_decoder", False)
        and (path / WEIGHTS).is_file()
        and (path / TOKENIZER).is_file()
    )


class _Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, input_ids: Tensor) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # One segment: every token has type 0, as transformers assumes without token_type_ids.
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings.weight[0]
        )
        return self.dropout(self.LayerNorm(x))


class _SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        if c.hidden_size % c.num_attention_heads:
            raise ParameterError(
                f"text model: hidden_size {c.hidden_size} is not a multiple of "
                f"num_attention_heads {c.num_attention_heads}"
            )
        self.heads = c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)
        self.dropout_p = c.attention_probs_dropout_prob

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        b, n, d = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            attn_mask=attend,
            dropout_p=self.dropout_p if self.training else 0.0,
        )
        return out.transpose(1, 2).reshape(b, n, d)


class _Residual(nn.Module):
    """dense -> dropout -> add the block's input -> LayerNorm (BERT's "output" blocks)."""

    def __init__(self, c: BertConfig, in_dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class _Layer(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        # "self" and "output" are transformers' key names; a ModuleDict keeps them.
        self.attention = nn.ModuleDict(
            {"self": _SelfAttention(c), "output": _Residual(c, c.hidden_size)}
        )
        self.intermediate = nn.ModuleDict({"dense": nn.Linear(c.hidden_size, c.intermediate_size)})
        self.output = _Residual(c, c.intermediate_size)

    def forward(self, x: Tensor, attend: Tensor) -> Tensor:
        h = self.attention["output"](self.attention["self"](x, attend), x)
        return self.output(F.gelu(self.intermediate["dense"](h)), h)


class Bert(nn.Module):
    """BERT's encoder stack: `model(input_ids=..., attention_mask=...)[0]` is the (B, L, H)
    last hidden state, called as transformers' models are (a one-element tuple)."""

    def __init__(self, config: BertConfig, pooler: bool = False) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = nn.ModuleDict(
            {"layer": nn.ModuleList(_Layer(config) for _ in range(config.num_hidden_layers))}
        )
        # Unused by the token states; kept when the weights carry it so keys match transformers'.
        if pooler:
            dense = nn.Linear(config.hidden_size, config.hidden_size)
            self.pooler = nn.ModuleDict({"dense": dense})

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor]:
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ParameterError(
                f"text model: {input_ids.shape[1]} tokens, more than its "
                f"{self.config.max_position_embeddings} positions"
            )
        attend = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L): keys to attend to
        x = self.embeddings(input_ids)
        for layer in self.encoder["layer"]:
            x = layer(x, attend)
        return (x,)

    @classmethod
    def from_folder(cls, path: str | Path) -> Bert:
        """The encoder with the folder's weights (safetensors only: no pickle is ever read)."""
        path = Path(path)
        config = BertConfig.read(path)
        try:
            stored = load_file(path / WEIGHTS)
        except (OSError, SafetensorError) as e:
            raise ParameterError(f"text model {path / WEIGHTS}: unreadable ({e})") from None
        weights = {}
        for key, tensor in stored.items():
            for prefix in _PREFIXES:
                key = key.removeprefix(prefix)
            weights[key] = tensor
        # Built on the CPU and then given the file's tensors (`assign`). A "meta" device would
        # skip the random initialisation, but its first use imports torch._dynamo, which takes
        # longer than the initialisation it saves.
        model = cls(config, pooler="pooler.dense.weight" in weights)
        wanted = model.state_dict()
        missing = sorted(set(wanted) - set(weights))
        if missing:
            raise ParameterError(
                f"text model {path / WEIGHTS}: no tensor {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        for key, built in wanted.items():
            if weights[key].shape != built.shape:
                raise ParameterError(
                    f"text model {path / WEIGHTS}: {key} has shape {tuple(weights[key].shape)}, "
                    f"config.json implies {tuple(built.shape)}"
                )
        # Tensors the encoder does not use (position_ids, a masked-LM head) are left out.
        model.load_state_dict({k: weights[k].float() for k in wanted}, assign=True)
        return model


class BertTokenizer:
    """The folder's fast tokenizer (tokenizer.json, run by the `tokenizers` library that
    transformers' fast tokenizers wrap), padding each batch to its longest caption."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._plain = Tokenizer.from_file(str(self.path / TOKENIZER))
        except Exception as e:  # tokenizers raises its own untyped errors for a bad file
            raise ParameterError(f"text model {self.path / TOKENIZER}: unreadable ({e})") from None
        preset = self._plain.padding or {}  # the file's own padding settings, if any
        self._pad_token = preset.get("pad_token", "[PAD]")
        pad_id = self._plain.token_to_id(self._pad_token)
        if pad_id is None:
            raise ParameterError(f"text model {self.path}: no pad token {self._pad_token!r}")
        self._pad_id = pad_id
        # The file may preset truncation and fixed-length padding; counting needs neither.
        self._plain.no_truncation()
        self._plain.no_padding()
        self._sized: dict[int, Tokenizer] = {}
        self._lock = threading.Lock()

    def _for_length(self, max_len: int) -> Tokenizer:
        with self._lock:  # each length gets its own configured copy: no shared mutable state
            if max_len not in self._sized:
                tok = Tokenizer.from_str(self._plain.to_str())
                tok.enable_truncation(max_length=max_len)
                tok.enable_padding(pad_id=self._pad_id, pad_token=self._pad_token)
                self._sized[max_len] = tok
            return self._sized[max_len]

    def encode(self, texts: list[str], max_len: int) -> dict[str, Tensor]:
        """input_ids and attention_mask (B, L), L = the longest caption after truncation."""
        batch = self._for_length(max_len).encode_batch(list(texts))
        return {
            "input_ids": torch.tensor([e.ids for e in batch], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in batch], dtype=torch.long),
        }

    def count(self, texts: list[str]) -> list[int]:
        """Tokens per caption, special tokens included, before truncation."""
        return [len(e.ids) for e in self._plain.encode_batch(list(texts))]
