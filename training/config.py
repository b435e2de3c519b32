"""Hyper-parameters of a training run (TrainConfig); a checkpoint's own config is
meet_milvus.model.config.ModelConfig."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meet_milvus.inputs import check_data_name
from meet_milvus_training.coder.config import CoderConfig


class TrainConfig(BaseModel):
    """Every hyper-parameter of a run; the defaults are the demo configuration."""

    model_config = ConfigDict(extra="forbid")

    data_name: str = "demo"
    objective: str = "meet"
    # Encoders. The demo default is the frozen pretrained MiniLM: dev/test stamps are unseen in
    # training, so a BiGRU vocabulary built on train captions misses their words.
    text_encoder: Literal["bigru", "bert"] = "bert"
    text_model: str | None = Field(None, description="BERT-family dir; None = offline MiniLM")
    text_finetune: bool = False
    text_lr: float = 2e-5
    max_text_len: int = Field(40, ge=4)
    word_dim: int = Field(300, ge=1)
    embed_size: int = Field(1024, ge=8)
    attn_dim: int = Field(256, ge=1, description="width of the attention-pooling scorer")
    pool_heads: int = Field(4, ge=1, description="attention-pooling heads")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout in the pooling scorers")
    # Regularised by default: feature dropout and weight decay raised the demo's best dev rSum
    # of all three scores (README "Training on the CPU").
    feature_dropout: float = Field(0.3, ge=0, lt=1, description="dropout on pooled features")
    mlp: bool = Field(True, description="residual MLP beside the linear projection")
    # Codes.
    H: int = Field(64, ge=8)
    M: int = Field(8, ge=1)
    K: int = Field(8, ge=1, le=8)
    kmeans_iters: int = Field(25, ge=1)
    # PQ codebooks shared by images and texts, or one set per modality as MEET's reference
    # learns them (measured side by side on the demo: README, "PQ codebook layout").
    pq_layout: Literal["shared", "per_modality"] = "shared"
    # Objective.
    margin: float = 0.2
    max_violation: bool = True
    beta1: float = Field(1.0, ge=0, description="weight of L_f (similarity preservation)")
    beta2: float = Field(0.1, ge=0, description="weight of L_q (quantization)")
    lf: bool = True
    lq: bool = True
    filter: bool = True
    reweight: bool = True
    filter_margin: float = Field(0.1, description="drop negatives this far above the positive")
    filter_warmup: int = Field(1, ge=0, description="epochs before the similarity filter acts")
    temperature: float = Field(0.1, gt=0, description="hardness softmax temperature")
    # Optimisation.
    # Training stops once the dev score (`select`) has not improved for `patience` epochs; the
    # best epoch is kept and `num_epochs` is the ceiling. On the demo dev rSum peaks after one
    # epoch (dev/test stamps are unseen; later epochs fit the training stamps: dense+hash+PQ
    # 263.6, 238.7, 205.7, 203.0 over 4 epochs), so patience 1 stops it after two, as fast as
    # the fixed two epochs were; a small data set whose dev score still rises trains on.
    num_epochs: int = Field(30, ge=1, description="most epochs")
    patience: int = Field(1, ge=0, description="epochs without a better dev score (0: off)")
    batch_size: int = Field(128, ge=2)
    learning_rate: float = Field(2e-4, gt=0)
    # The heads start as random hyperplanes of unit scale: at the encoders' rate they barely
    # move in a demo-sized run.
    learning_hash_rate: float | None = Field(
        1e-2, gt=0, description="learning rate of the hash heads (unset: --learning_rate)"
    )
    lr_update: int = Field(15, ge=1)
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay")
    grad_clip: float = 2.0
    workers: int = Field(0, ge=0)
    seed: int = 0
    select: Literal["dense", "sum"] = "sum"
    # CODER's hyper-parameters, set when objective is "coder".
    coder: CoderConfig | None = None
    # Start from another checkpoint's encoders (e.g. CODER's) with fresh heads and codebooks.
    init_from: str | None = None
    freeze_encoders: bool = Field(True, description="with init_from: train only the heads")

    @field_validator("data_name")
    @classmethod
    def _data_name(cls, v: str) -> str:
        return check_data_name(v, "data set")  # it names folders under the data dir

    @model_validator(mode="after")
    def _dims(self) -> TrainConfig:
        if self.objective == "coder":
            if self.coder is None:
                self.coder = CoderConfig()
            if "select" not in self.model_fields_set:
                self.select = "dense"  # CODER trains no code heads
        if self.H % 8:
            raise ValueError(f"H={self.H} must be a multiple of 8 (codes are packed into bytes)")
        if self.H % self.M:
            raise ValueError(f"H={self.H} must be divisible by M={self.M}")
        return self
