"""Training objectives by name (`--objective`): MEET's own, and CODER's
(meet_milvus_training.coder.objective); the interface is meet_milvus_training.objective_base."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from meet_milvus.errors import ParameterError
from meet_milvus.model.network import Outputs
from meet_milvus_training.coder.objective import CoderObjective
from meet_milvus_training.config import TrainConfig
from meet_milvus_training.data import Batch
from meet_milvus_training.losses import QuantizationLoss, RankingLoss, SimilarityPreservationLoss
from meet_milvus_training.miners import NegativeFilter, kept_fraction
from meet_milvus_training.objective_base import (
    OBJECTIVES,
    LossOutput,
    Objective,
    StepContext,
    register_objective,
)
from meet_milvus_training.weighting import HardnessWeighting


def build_objective(config: TrainConfig) -> Objective:
    try:
        return OBJECTIVES[config.objective](config)
    except KeyError:
        known = ", ".join(sorted(OBJECTIVES))
        raise ParameterError(f"--objective {config.objective}: unknown (known: {known})") from None


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


BUILT_IN = (MeetObjective, CoderObjective)  # registered by their decorators on import
