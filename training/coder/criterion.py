"""CODER's training loss from one batch's embeddings: instance DCL + concept DCL + cluster loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meet_milvus_training.coder.clustering import OnlineClusterer
from meet_milvus_training.coder.config import CoderConfig
from meet_milvus_training.coder.loss import DiversityContrastiveLoss
from meet_milvus_training.coder.queue import EmbeddingQueue


@dataclass
class CoderOutputs:
    """What the encoders produced for a batch of B (image, caption) pairs.

    Instance embeddings and concept descriptors are l2-normalised; `*_key` are the momentum
    encoders' versions (None when the momentum queue is off), `*_cluster` the concept branch's
    pseudo-cluster logits (None when the clustering loss is off). `caption_ids` identify the
    caption text, so two images with the same caption share an id.
    """

    image: Tensor
    text: Tensor
    image_ids: Tensor
    caption_ids: Tensor
    image_key: Tensor | None = None
    text_key: Tensor | None = None
    image_concept: Tensor | None = None
    text_concept: Tensor | None = None
    image_concept_key: Tensor | None = None
    text_concept_key: Tensor | None = None
    image_cluster: Tensor | None = None
    text_cluster: Tensor | None = None


class _Branch(nn.Module):
    """The DCL of one branch (instance or concept), both directions, with its two queues."""

    def __init__(self, dim: int, config: CoderConfig) -> None:
        super().__init__()
        self.loss = DiversityContrastiveLoss(
            config.nce_temperature, config.adaptive_weighting, config.weight_temperature
        )
        self.queues = (
            nn.ModuleDict({m: EmbeddingQueue(config.queue_size, dim) for m in ("image", "text")})
            if config.momentum_queue
            else None
        )

    def forward(
        self,
        image: Tensor,
        text: Tensor,
        image_ids: Tensor,
        caption_ids: Tensor,
        image_key: Tensor | None,
        text_key: Tensor | None,
    ) -> Tensor:
        # In-batch: another pair is a negative unless it shares the image or the caption text.
        in_batch = (image_ids[:, None] != image_ids[None, :]) & (
            caption_ids[:, None] != caption_ids[None, :]
        )
        losses = []
        for query, positive, modality in ((image, text, "text"), (text, image, "image")):
            # The other modality's batch rows are the in-batch negatives (diagonal masked).
            negatives, mask = positive, in_batch
            if self.queues is not None:
                queue = self.queues[modality]
                negatives = torch.cat([positive, queue.embeddings.to(positive)])
                mask = torch.cat([in_batch, queue.negative_mask(image_ids, caption_ids)], dim=1)
            losses.append(self.loss(query, positive, negatives, mask))
        if self.queues is not None and self.training:
            if image_key is None or text_key is None:
                raise ValueError("the momentum queue needs the momentum encoders' keys")
            self.queues["image"].enqueue(image_key, image_ids, caption_ids)
            self.queues["text"].enqueue(text_key, image_ids, caption_ids)
        return (losses[0] + losses[1]) / 2

    def pool(self) -> Tensor | None:
        """Every queued key of both modalities (None without queues)."""
        if self.queues is None:
            return None
        return torch.cat([q.embeddings[q.filled] for q in self.queues.values()])


class CoderCriterion(nn.Module):
    """L = DCL(instance) + a * DCL(concept) + b * CE(cluster logits, Sinkhorn pseudo-labels).

    Holds the state the loss needs across steps (queues, cluster prototypes), not the encoders.
    Queues are read before this batch's keys are written, so a pair never meets itself.
    """

    def __init__(self, config: CoderConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.instance = _Branch(embed_dim, config)
        self.concept = _Branch(config.concept_dim, config) if config.concept_branch else None
        self.clusterer = (
            OnlineClusterer(
                config.n_clusters,
                embed_dim,
                config.cluster_refresh,
                config.sinkhorn_epsilon,
                config.sinkhorn_iterations,
            )
            if config.uses_clustering
            else None
        )

    def forward(self, out: CoderOutputs) -> tuple[Tensor, dict[str, float]]:
        """The loss and its weighted-sum parts (floats, for logging)."""
        cfg = self.config
        # Pseudo-labels come from the queue as it stood before this batch.
        pool = self.instance.pool()
        loss = self.instance(
            out.image, out.text, out.image_ids, out.caption_ids, out.image_key, out.text_key
        )
        parts = {"instance": float(loss.detach())}
        if self.concept is not None:
            if out.image_concept is None or out.text_concept is None:
                raise ValueError("the concept branch is on but no concept descriptors were given")
            concept = self.concept(
                out.image_concept,
                out.text_concept,
                out.image_ids,
                out.caption_ids,
                out.image_concept_key,
                out.text_concept_key,
            )
            parts["concept"] = float(concept.detach())
            loss = loss + cfg.concept_loss_weight * concept
        if self.clusterer is not None and self.training:
            cluster = self._cluster_loss(out, pool)
            if cluster is not None:
                parts["cluster"] = float(cluster.detach())
                loss = loss + cfg.cluster_loss_weight * cluster
        return loss, parts

    def _cluster_loss(self, out: CoderOutputs, pool: Tensor | None) -> Tensor | None:
        if out.image_cluster is None or out.text_cluster is None:
            raise ValueError("the clustering loss is on but no cluster logits were given")
        # A pair's label comes from its instance embeddings (the momentum keys when there are).
        image = out.image_key if out.image_key is not None else out.image
        text = out.text_key if out.text_key is not None else out.text
        joint = F.normalize((image + text).detach(), dim=1)
        if pool is None or pool.shape[0] < self.clusterer.n_clusters:
            pool = None
        self.clusterer.refresh(joint if pool is None else torch.cat([joint, pool]))
        if not bool(self.clusterer.ready):
            return None
        codes = self.clusterer.assign(joint, pool)
        t = self.config.cluster_temperature
        image_ce = -(codes * F.log_softmax(out.image_cluster / t, dim=1)).sum(1).mean()
        text_ce = -(codes * F.log_softmax(out.text_cluster / t, dim=1)).sum(1).mean()
        return (image_ce + text_ce) / 2
