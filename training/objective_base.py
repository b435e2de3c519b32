"""The objective interface and registry: an objective turns a batch's embeddings and head
outputs into a loss.

The trainer only knows the `Objective` interface, so another objective (CODER's, in
`training/coder/`) plugs in by subclassing it and registering a name
(`meet_milvus_training.objectives` imports the built-in ones, so the registry is complete
wherever `build_objective` is):

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

from torch import Tensor, nn

from meet_milvus.model.config import ModelConfig
from meet_milvus.model.network import MeetNet, Outputs
from meet_milvus.model.quantization import Quantizers
from meet_milvus_loaders.precomp import Split
from meet_milvus_training.config import TrainConfig
from meet_milvus_training.data import Batch


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
