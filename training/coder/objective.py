"""`meet-train --objective coder`: CODER's loss over the shared encoders.

The network is MEET's (same encoders, hash heads, PQ, checkpoints); CODER adds the concept
branch to it as a `ConceptFusion` after each encoder, so the served dense embedding is the fused
one. Everything that exists only for training lives here: momentum encoders, queues, cluster
prototypes and the pseudo-label classifier.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meet_milvus.errors import CheckpointError, DataSetError
from meet_milvus.model.config import ConceptNetConfig, ModelConfig
from meet_milvus.model.graph import normalize_adjacency
from meet_milvus.model.network import MeetNet, Outputs
from meet_milvus.model.text_model import hidden_size
from meet_milvus_training.coder.concepts import cooccurrence_graph, mine_concepts
from meet_milvus_training.coder.config import CoderConfig
from meet_milvus_training.coder.criterion import CoderCriterion, CoderOutputs
from meet_milvus_training.coder.momentum import MomentumEncoder
from meet_milvus_training.config import TrainConfig
from meet_milvus_training.data import Batch, PairIndex
from meet_milvus_training.objective_base import (
    LossOutput,
    Objective,
    StepContext,
    register_objective,
)

if TYPE_CHECKING:
    from meet_milvus_loaders.precomp import Split


@register_objective("coder")
class CoderObjective(Objective):
    """Instance DCL + concept DCL + pseudo-cluster prediction, each part switchable."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.coder: CoderConfig = config.coder or CoderConfig()
        cc = self.coder
        self.criterion = CoderCriterion(cc, config.embed_size)
        # Predicts the pseudo cluster of a pair from its concept descriptors; training only.
        self.cluster_head = nn.Linear(cc.concept_dim, cc.n_clusters) if cc.uses_clustering else None
        self.momentum: nn.ModuleDict | None = None
        self._concepts: list[str] = []
        self._text_ids = self._image_ids = torch.zeros(0, dtype=torch.long)

    # ---- set-up hooks ----------------------------------------------------------------------

    def configure(self, model_config: ModelConfig, split: Split) -> ModelConfig:
        """Adds the concept branch (vocabulary mined from `split`) to a fresh model's config."""
        cc = self.coder
        if not cc.concept_branch:
            return model_config
        self._concepts = mine_concepts(split.captions, cc.n_concepts, cc.concept_min_count)
        if len(self._concepts) < 2:
            raise DataSetError(
                f"data set {self.config.data_name!r}: only {len(self._concepts)} concept words "
                f"occur {cc.concept_min_count}+ times in the training captions; lower "
                "--concept_min_count or pass --no_concept_branch"
            )
        concepts = ConceptNetConfig(
            instance_dim=model_config.embed_dim,
            concepts=self._concepts,
            node_dim=_node_dim(model_config),
            concept_dim=cc.concept_dim,
            graph_layers=cc.graph_layers,
            fusion_weight=cc.fusion_weight,
        )
        return model_config.model_copy(update={"coder": concepts, "embed_dim": concepts.dense_dim})

    def attach(self, net: MeetNet, split: Split, fresh: bool) -> None:
        """Binds to the network: concept graph and nodes (fresh runs), momentum copies, ids."""
        if self.coder.concept_branch and net.concepts is None:
            raise CheckpointError(
                "--objective coder with its concept branch needs a network built for it"
            )
        device = next(net.parameters()).device
        index = PairIndex(split)
        # Queue entries are tagged with global ids: same source image, same caption text.
        self._text_ids = torch.from_numpy(index.text_ids).to(device)
        self._image_ids = torch.from_numpy(index.source_ids).to(device)
        if fresh and net.concepts is not None:
            self._init_concepts(net, split)
        if self.coder.momentum_queue:
            m = self.coder.momentum
            copies = {
                "image": MomentumEncoder(net.image_encoder, m),
                "text": MomentumEncoder(net.text_encoder, m),
            }
            if net.concepts is not None:
                copies["concepts"] = MomentumEncoder(net.concepts, m)
            self.momentum = nn.ModuleDict(copies)

    @torch.no_grad()
    def _init_concepts(self, net: MeetNet, split: Split) -> None:
        cc, graph = self.coder, net.concepts.branch.graph
        probs = cooccurrence_graph(split.captions, self._concepts, split.caption_image)
        adjacency = normalize_adjacency(
            torch.from_numpy(probs), cc.graph_threshold, cc.graph_self_weight
        )
        graph.adjacency.copy_(adjacency)
        graph.features.copy_(_concept_features(net.text_encoder, self._concepts))

    # ---- training --------------------------------------------------------------------------

    def forward(self, out: Outputs, batch: Batch, ctx: StepContext) -> LossOutput:
        net = ctx.net
        image, text = out.img_dense.float(), out.txt_dense.float()
        o = CoderOutputs(
            image=image,
            text=text,
            image_ids=self._image_ids[batch.image_ids],
            caption_ids=self._text_ids[batch.caption_ids],
        )
        if net.concepts is not None:
            o.image, o.image_concept = net.concepts.split(image)
            o.text, o.text_concept = net.concepts.split(text)
        if self.momentum is not None:
            o.image_key = self.momentum["image"](batch.images).float()
            o.text_key = self.momentum["text"](**batch.text).float()
            if "concepts" in self.momentum:
                concepts = net.concepts
                fused = self.momentum["concepts"](o.image_key, "image")
                o.image_concept_key = concepts.split(fused)[1]
                fused = self.momentum["concepts"](o.text_key, "text")
                o.text_concept_key = concepts.split(fused)[1]
        if self.cluster_head is not None:
            o.image_cluster = self.cluster_head(o.image_concept)
            o.text_cluster = self.cluster_head(o.text_concept)
        loss, parts = self.criterion(o)
        return LossOutput(loss, parts)

    def after_step(self, net: MeetNet) -> None:
        if self.momentum is None:
            return
        self.momentum["image"].update(net.image_encoder)
        self.momentum["text"].update(net.text_encoder)
        if "concepts" in self.momentum:
            self.momentum["concepts"].update(net.concepts)


def _node_dim(config: ModelConfig) -> int:
    """Input size of the concept nodes: the text model's hidden size, or the word size."""
    if config.text_encoder == "bigru":
        return config.train.word_dim
    return hidden_size(config.text_model)


def _concept_features(text_encoder: nn.Module, words: list[str]) -> Tensor:
    """(C, node_dim) unit start features of the concept nodes from the text encoder's inputs.

    BERT: the mean token state of each word (pretrained semantics, like the word vectors CODER
    starts from); BiGRU: its (untrained) word embeddings.
    """
    if hasattr(text_encoder, "token_states"):
        tokens = text_encoder.tokenize(words)
        device = next(text_encoder.parameters()).device
        tokens = {k: v.to(device) for k, v in tokens.items()}
        states = text_encoder.token_states(**tokens).float()
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
        feats = (states * mask).sum(1) / mask.sum(1)
    else:
        vocab = text_encoder.vocab
        ids = torch.tensor([vocab.index.get(w, vocab.index["<unk>"]) for w in words])
        feats = text_encoder.embed(ids.to(text_encoder.embed.weight.device)).float()
    return F.normalize(feats.detach(), dim=1)
