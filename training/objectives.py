"""Training objectives: an objective turns a batch's embeddings and head outputs into a loss.

The trainer only knows the `Objective` interface, so another objective (issue 5: CODER) plugs in
by subclassing it and registering a name:

    @register_objective("coder")
    class CoderObjective(Objective):
        def __init__(self, config: TrainConfig): ...
        def forward(self, out, batch, ctx) -> LossOutput: ...

An objective is an nn.Module: its own parameters (if any) are trained with the network's, and its
buffers are saved with a resumable run. `after_step` runs after every optimizer step (e.g. for
momentum encoders) and `on_epoch_end` after every epoch; `configure` may extend a fresh run's
ModelConfig before the network is built and `attach` binds to the built network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from meet_milvus.errors import MeetError
from training.config import ModelConfig, TrainConfig
from training.data import Batch
from training.losses import QuantizationLoss, RankingLoss, SimilarityPreservationLoss
from training.miners import NegativeFilter, kept_fraction
from training.network import MeetNet, Outputs
from training.quantization import Quantizers
from training.weighting import HardnessWeighting

if TYPE_CHECKING:
    from loaders.precomp import Split


@dataclass
class StepContext:
    """What an objective may read besides the batch: epoch (0-based), step, net, quantizer."""

    epoch: int
    step: int
    net: MeetNet
    quantizer: Quantizers


@dataclass
class LossOutput:
    """The loss to back-propagate and its parts (plain floats, for logs)."""

    total: Tensor
    parts: dict[str, float] = field(default_factory=dict)


class Objective(nn.Module):
    name = "base"

    def configure(self, model_config: ModelConfig, split: Split) -> ModelConfig:
        """A fresh run's model config, before the network is built (e.g. to add parts)."""
        return model_config

    def attach(self, net: MeetNet, split: Split, fresh: bool) -> None:
        """Called once the network exists (fresh or resumed), before the optimizer is made."""

    def forward(self, out: Outputs, batch: Batch, ctx: StepContext) -> LossOutput:
        raise NotImplementedError

    def after_step(self, net: MeetNet) -> None:
        """Called after each optimizer step."""

    def on_epoch_end(self, net: MeetNet, epoch: int) -> None:
        """Called after each epoch, before validation."""


OBJECTIVES: dict[str, Callable[[TrainConfig], Objective]] = {}


def register_objective(name: str) -> Callable[[type[Objective]], type[Objective]]:
    def deco(cls: type[Objective]) -> type[Objective]:
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return deco


def build_objective(config: TrainConfig) -> Objective:
    if config.objective not in OBJECTIVES:
        _load_plugins()
    try:
        return OBJECTIVES[config.objective](config)
    except KeyError:
        known = ", ".join(sorted(OBJECTIVES))
        raise MeetError(f"--objective {config.objective}: unknown (known: {known})") from None


def _load_plugins() -> None:
    # Objectives living in sub-packages register themselves on import.
    try:
        import training.coder.objective  # noqa: F401
    except ImportError:
        pass


@register_objective("meet")
class MeetObjective(Objective):
    """L = L_rank(dense) + L_rank(hash) + beta1 L_f + beta2 L_q, with negative filtering and
    hardness reweighting inside both ranking terms; every term and mechanism switchable.

    The filter judges pairs on dense similarities (the better trained space); its similarity
    criterion waits `filter_warmup` epochs, while untrained similarities mean nothing. Hash
    ranking uses cosine similarity of head outputs, so the margin means the same in both spaces.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.rank = RankingLoss(config.margin, config.max_violation)
        self.lf = SimilarityPreservationLoss()
        self.lq = QuantizationLoss()
        self.weighting = HardnessWeighting(config.temperature)

    def negative_filter(self, epoch: int) -> NegativeFilter:
        c = self.config
        if not c.filter:
            return NegativeFilter(same_text=False, same_source=False, margin=None)
        margin = c.filter_margin if epoch >= c.filter_warmup else None
        return NegativeFilter(same_text=True, same_source=True, margin=margin)

    def forward(self, out: Outputs, batch: Batch, ctx: StepContext) -> LossOutput:
        c = self.config
        img_d, txt_d = out.img_dense.float(), out.txt_dense.float()
        img_h, txt_h = out.img_head.float(), out.txt_head.float()
        dense = img_d @ txt_d.T
        hashed = F.normalize(img_h, dim=1) @ F.normalize(txt_h, dim=1).T
        keep_i2t, keep_t2i = self.negative_filter(ctx.epoch)(dense, batch.pairs)

        def ranking(sims: Tensor) -> Tensor:
            if not c.reweight:
                return self.rank(sims, keep_i2t, keep_t2i)
            w_i2t = self.weighting(sims, keep_i2t, dim=1)
            w_t2i = self.weighting(sims, keep_t2i, dim=0)
            return self.rank(sims, keep_i2t, keep_t2i, w_i2t, w_t2i)

        parts = {"rank_dense": ranking(dense), "rank_hash": ranking(hashed)}
        if c.lf:
            parts["lf"] = self.lf(img_h, txt_h, dense)
        if c.lq:
            q = ctx.quantizer
            parts["lq"] = self.lq(img_h, q.quantize(img_h, "image")) + self.lq(
                txt_h, q.quantize(txt_h, "text")
            )
        total = parts["rank_dense"] + parts["rank_hash"]
        if "lf" in parts:
            total = total + c.beta1 * parts["lf"]
        if "lq" in parts:
            total = total + c.beta2 * parts["lq"]
        logs = {k: float(v.detach()) for k, v in parts.items()}
        logs["kept"] = kept_fraction(keep_i2t, batch.image_ids)
        return LossOutput(total, logs)
