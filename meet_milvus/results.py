"""Typed search results: what `MeetSearcher.search` and `.search_image` return."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class StageHit(BaseModel):
    """Where one result stood after one stage of the cascade."""

    model_config = ConfigDict(frozen=True)

    rank: int | None  # 1-based position in that stage's output; None when it was not there
    score: float | None  # that stage's score (hash: minus the Hamming distance)


class Hit(BaseModel):
    """One result: a gallery item, its final score and where it comes from."""

    model_config = ConfigDict(frozen=True)

    id: int  # primary key in the gallery (position in the loaded split)
    score: float  # final score, higher = better (dense cosine, plus re-ranking terms)
    source: str  # image path (or name) for images, the text for captions
    external_id: str
    modality: Literal["image", "text"]
    image: int  # the image the item shows (its own id for images)
    stages: dict[str, StageHit] | None = None  # per-stage diagnostics, when asked

    def __str__(self) -> str:
        return f"{self.score:.4f}  {self.source}"
