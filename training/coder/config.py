"""CODER's hyper-parameters and ablation switches (defaults: the demo configuration)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CoderConfig(BaseModel):
    """Every CODER part can be switched off on its own, for the ablation table."""

    model_config = ConfigDict(extra="forbid")

    # Diversity-sensitive contrastive loss.
    nce_temperature: float = Field(0.07, gt=0, description="InfoNCE temperature")
    adaptive_weighting: bool = True
    weight_temperature: float = Field(0.1, gt=0, description="hardness softmax temperature")
    # Dynamic dictionaries.
    momentum_queue: bool = True
    queue_size: int = Field(1024, ge=1)
    momentum: float = Field(0.99, ge=0, le=1)
    # Concept branch.
    concept_branch: bool = True
    n_concepts: int = Field(200, ge=2)
    concept_min_count: int = Field(3, ge=1)
    concept_dim: int = Field(256, ge=2)
    graph_layers: int = Field(2, ge=1)
    graph_threshold: float = Field(0.1, ge=0, le=1, description="drop weaker P(b|a) edges")
    graph_self_weight: float = Field(0.5, ge=0, le=1)
    concept_loss_weight: float = Field(1.0, ge=0)
    fusion_weight: float = Field(0.3, gt=0, lt=1, description="w in (1-w)*s_instance + w*s_concept")
    # Online clustering pseudo-labels (predicted by the concept branch).
    cluster_loss: bool = True
    n_clusters: int = Field(32, ge=2)
    cluster_refresh: int = Field(50, ge=1, description="steps between k-means refits")
    cluster_temperature: float = Field(0.1, gt=0)
    cluster_loss_weight: float = Field(0.5, ge=0)
    sinkhorn_epsilon: float = Field(0.05, gt=0)
    sinkhorn_iterations: int = Field(3, ge=1)

    @property
    def uses_clustering(self) -> bool:
        """The clustering loss lives in the concept branch: without it there is nothing to train."""
        return self.cluster_loss and self.concept_branch
