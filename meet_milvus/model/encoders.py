"""Encoders into the joint space: regions/grid features -> image vector, captions -> text vector.

Each encoder pools local features (regions or tokens) with self-attention guided by their mean
(as the reference's VisualSA/TextSA), then projects into the joint space and l2-normalises.
Text encoders share one interface: `tokenize(texts) -> dict of tensors` and
`forward(**that dict) -> (B, E)`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from meet_milvus.model.bert import Bert, BertTokenizer, is_plain_bert
from meet_milvus.model.text_model import hidden_size
from meet_milvus.model.vocab import Vocabulary


def l2norm(x: Tensor, dim: int = -1) -> Tensor:
    return F.normalize(x, p=2, dim=dim, eps=1e-8)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class AttentionPool(nn.Module):
    """(B, L, D) local features -> (B, heads * D): per head, a softmax over positions of scores
    from tanh(W_l x_i) * tanh(W_c mean(x)) (the reference's self-attention pooling, guided by the
    mean), and the weighted mean of the features.

    Pooling comes before the projection into the joint space: a linear projection commutes with
    a weighted mean, so only the small scoring layers run per region/token, which is what makes
    49 regions x 1280 dims cheap enough for CPU training.
    """

    def __init__(self, dim: int, attn_dim: int = 256, heads: int = 1, dropout: float = 0.1):
        super().__init__()
        self.heads = heads
        self.local = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.context = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.score = nn.Linear(attn_dim, heads)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        ctx = self.context(_masked_mean(x, mask)).unsqueeze(1)
        logits = self.score(self.local(x) * ctx).float()  # (B, L, heads)
        weights = logits.masked_fill(~mask.unsqueeze(-1), float("-inf")).softmax(dim=1)
        pooled = torch.einsum("blh,bld->bhd", weights.to(x.dtype), x)
        return pooled.reshape(x.shape[0], -1)


class Projection(nn.Module):
    """Pooled features -> joint space: a linear map plus (`mlp`) a residual two-layer MLP (the
    reference's precomp encoder), l2-normalised. Dropout on the pooled features regularises the
    map, which matters when test concepts are unseen in training (the demo)."""

    def __init__(self, in_dim: int, embed_dim: int, dropout: float = 0.0, mlp: bool = True):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, embed_dim)
        self.mlp = (
            nn.Sequential(
                nn.Linear(in_dim, embed_dim // 2), nn.ReLU(), nn.Linear(embed_dim // 2, embed_dim)
            )
            if mlp
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(x)
        y = self.fc(x)
        return l2norm(y if self.mlp is None else y + self.mlp(x))


class ImageEncoder(nn.Module):
    """Region/grid features (B, R, D) or pooled (B, D) -> (B, E), unit length."""

    def __init__(
        self,
        feature_dim: int,
        embed_dim: int,
        attn_dim: int,
        heads: int,
        dropout: float,
        feature_dropout: float = 0.0,
        mlp: bool = True,
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        # Grid features are raw CNN activations: normalise per region first.
        self.norm = nn.LayerNorm(feature_dim)
        self.pool = AttentionPool(feature_dim, attn_dim, heads, dropout)
        self.proj = Projection(feature_dim * heads, embed_dim, feature_dropout, mlp)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() == 2:
            features = features.unsqueeze(1)
        return self.proj(self.pool(self.norm(features)))


class BiGRUTextEncoder(nn.Module):
    """Word embeddings -> bidirectional GRU (directions averaged) -> attention pooling ->
    projection."""

    def __init__(
        self,
        vocab: Vocabulary,
        word_dim: int,
        embed_dim: int,
        attn_dim: int,
        heads: int,
        dropout: float,
        feature_dropout: float,
        mlp: bool,
        max_len: int,
    ) -> None:
        super().__init__()
        self.vocab = vocab
        self.max_len = max_len
        self.embed = nn.Embedding(len(vocab), word_dim, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.rnn = nn.GRU(word_dim, embed_dim, batch_first=True, bidirectional=True)
        self.pool = AttentionPool(embed_dim, attn_dim, heads, dropout)
        self.proj = Projection(embed_dim * heads, embed_dim, feature_dropout, mlp)

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return self.vocab.batch(texts, self.max_len)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [self.vocab.count_tokens(t) for t in texts]

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        x = self.embed(tokens)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        half = out.shape[-1] // 2
        out = (out[..., :half] + out[..., half:]) / 2
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths.to(
            tokens.device
        ).unsqueeze(1)
        return self.proj(self.pool(out, mask))


class _HFTokenizer:
    """transformers' tokenizer behind `BertTokenizer`'s interface (encode, count)."""

    def __init__(self, tokenizer: object) -> None:
        self._tokenizer = tokenizer

    def encode(self, texts: list[str], max_len: int) -> dict[str, Tensor]:
        enc = self._tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def count(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self._tokenizer(list(texts))["input_ids"]]


TextTokenizer = BertTokenizer | _HFTokenizer


def load_transformer(path: str | Path) -> tuple[nn.Module, TextTokenizer]:
    """A BERT-family model and its tokenizer from a local directory (no hub, no pickle).

    A plain BERT (the bundled MiniLM) is read by `meet_milvus.model.bert` in a fraction of the
    time; other families need transformers.
    """
    if is_plain_bert(path):
        return Bert.from_folder(path), BertTokenizer(path)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    return model, _HFTokenizer(tokenizer)


class LazyTransformer:
    """A frozen BERT-family model and its tokenizer, read from `path` on first use. Reading the
    model takes a while; a run whose captions come from cached token states or encodings, or
    that encodes only images, never needs it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.hidden_size = hidden_size(self.path)
        self._loaded: tuple[nn.Module, TextTokenizer] | None = None
        self._lock = threading.Lock()  # a service's first concurrent queries load it once

    def get(self) -> tuple[nn.Module, TextTokenizer]:
        with self._lock:
            if self._loaded is None:
                model, tokenizer = load_transformer(self.path)
                model.requires_grad_(False)
                self._loaded = (model.eval(), tokenizer)
            return self._loaded

    def __deepcopy__(self, memo: dict) -> LazyTransformer:
        return self  # frozen: copies of an encoder (a momentum encoder) share it


class BertTextEncoder(nn.Module):
    """A BERT-family transformer's token states -> attention pooling -> projection.

    Frozen (`finetune=False`): the transformer runs without gradients in eval mode and its token
    states are rounded through float16, exactly as the training cache stores them, so cached and
    live encodings agree. `forward` takes either token ids or such precomputed states. A frozen
    transformer may come as a `LazyTransformer` (tokenizer None): it is then no submodule (its
    weights are never in a checkpoint) and is read on first use, on this encoder's device.
    """

    def __init__(
        self,
        transformer: nn.Module | LazyTransformer,
        tokenizer: TextTokenizer | None,
        embed_dim: int,
        attn_dim: int,
        heads: int,
        dropout: float,
        feature_dropout: float,
        mlp: bool,
        max_len: int,
        finetune: bool,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.finetune = finetune
        self._lazy = transformer if isinstance(transformer, LazyTransformer) else None
        if self._lazy is not None:
            if finetune:
                raise ValueError("a fine-tuned transformer cannot be loaded lazily")
            hidden = self._lazy.hidden_size
        else:
            self.transformer = transformer
            self._tokenizer = tokenizer
            hidden = transformer.config.hidden_size
        self.pool = AttentionPool(hidden, attn_dim, heads, dropout)
        self.proj = Projection(hidden * heads, embed_dim, feature_dropout, mlp)
        if not finetune and self._lazy is None:
            self.transformer.requires_grad_(False)
            self.transformer.eval()

    @property
    def transformer(self) -> nn.Module:
        if "transformer" in self._modules:
            return self._modules["transformer"]
        model, _ = self._lazy.get()
        device = self.proj.fc.weight.device
        if next(model.parameters()).device != device:  # the encoder moved since
            model.to(device)
        return model

    @property
    def tokenizer(self) -> TextTokenizer:
        return self._tokenizer if self._lazy is None else self._lazy.get()[1]

    def train(self, mode: bool = True) -> BertTextEncoder:
        super().train(mode)
        if not self.finetune and self._lazy is None:
            self.transformer.eval()
        return self

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        return self.tokenizer.encode(list(texts), self.max_len)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.tokenizer.count(list(texts))

    def token_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.finetune:
            return self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        with torch.no_grad():
            states = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        return states.half().float()

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        states: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        if states is None:
            states = self.token_states(input_ids, attention_mask)
            mask = attention_mask
        return self.proj(self.pool(states, mask.bool()))
