"""What a checkpoint holds: the model's shape (ModelConfig), apart from how it was trained.

A checkpoint's config.json is a ModelConfig. Format 1 (written before the runtime owned the
model) kept the network's shape inside the embedded training config (`train`); it is still read:
`ModelConfig` takes those fields from there. The run's hyper-parameters stay in `train` as a
plain record (provenance, and what `meet-train --resume` / `--init_from` read back); the
runtime never interprets them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

# The network's shape as format 1 stored it, inside `train`, with the trainer's defaults then.
_SHAPE_V1 = {
    "word_dim": 300,
    "attn_dim": 256,
    "pool_heads": 4,
    "dropout": 0.1,
    "feature_dropout": 0.3,
    "mlp": True,
}


class ConceptNetConfig(BaseModel):
    """The served part of CODER's concept branch, stored in a checkpoint's config.json.

    The dense embedding of such a checkpoint is the fused one: instance (instance_dim) followed
    by concept descriptor (concept_dim), see meet_milvus.model.fusion.
    """

    model_config = ConfigDict(extra="forbid")

    instance_dim: int = Field(ge=1)
    concepts: list[str] = Field(min_length=2)
    node_dim: int = Field(ge=1, description="size of the concept nodes' input features")
    concept_dim: int = Field(ge=2)
    graph_layers: int = Field(2, ge=1)
    fusion_weight: float = Field(gt=0, lt=1)

    @property
    def dense_dim(self) -> int:
        return self.instance_dim + self.concept_dim


class ModelConfig(BaseModel):
    """A checkpoint's config.json: dims, encoders, codes, the network's shape, provenance."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    fingerprint: str = ""
    H: int
    M: int
    K: int
    # PQ codebooks shared by both modalities, or one set each (absent in older checkpoints).
    pq_layout: Literal["shared", "per_modality"] = "shared"
    embed_dim: int
    feature_dim: int
    text_encoder: Literal["bigru", "bert"]
    text_model: str | None = None  # path of the BERT-family model (frozen weights live there)
    text_model_sha: str | None = None  # content hash of that model's weights
    text_finetune: bool = False
    vocab_size: int | None = None
    max_text_len: int
    # The encoders' shape (what the network is built with).
    word_dim: int = Field(ge=1)
    attn_dim: int = Field(ge=1)
    pool_heads: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    feature_dropout: float = Field(ge=0, lt=1)
    mlp: bool
    epoch: int = 0
    scores: dict[str, float] = Field(default_factory=dict)  # dev rSums of this checkpoint
    # CODER's concept branch; embed_dim is then the fused (instance + concept) size.
    coder: ConceptNetConfig | None = None
    # The training run's hyper-parameters as the trainer recorded them (not read when serving).
    train: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_format_1(cls, raw: Any) -> Any:
        """Format 1: the shape lived in `train`; the config is otherwise the same."""
        if isinstance(raw, dict) and raw.get("format_version") == 1:
            train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
            shape = {k: train.get(k, default) for k, default in _SHAPE_V1.items()}
            raw = {**shape, **raw, "format_version": FORMAT_VERSION}
        return raw
