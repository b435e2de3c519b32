"""`SearchConfig`: the cascade's switches and sizes, the one place their defaults are defined.
Light to import (no torch): the command line's help reads its defaults and descriptions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from meet_milvus.errors import ParameterError
from meet_milvus.milvus_arrays import MAX_TOPK
from meet_milvus.rerank import Reranker

if TYPE_CHECKING:
    from meet_milvus.gallery_layout import Modality

Keep = int | float
# `filter="auto"` uses the ANN index from this gallery size on
# (`python -m benchmarks.bench_cascade`, README "Performance at scale").
ANN_MIN_ROWS = 50_000


def check_keep(keep: Keep) -> Keep:
    """`keep` when it is a stage size: a positive count, or a fraction (float) in (0, 1]."""
    if isinstance(keep, bool) or not isinstance(keep, int | float) or not keep > 0:
        raise ParameterError(
            f"stage size {keep!r}: must be a positive count or a fraction in (0, 1]"
        )
    if isinstance(keep, float) and keep > 1:
        raise ParameterError(f"stage size {keep}: a fraction must be at most 1 (or give a count)")
    return keep


class SearchConfig(BaseModel):
    """The cascade's switches and sizes: the one place their defaults are defined.

    A size (`*_keep*`) is a count, or a fraction (float in (0, 1]) of what the stage receives:
    the gallery for the first stage, the survivors after that. Per-modality settings come in
    pairs named by the modality searched (`_images`: text queries, `_texts`: image queries).
    Change settings with `config.updated(name=value)`, which validates them (ParameterError).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: Literal["local", "server"] = Field(
        "local",
        description="where the cascade reads the gallery: the client's local tier (codes in "
        "RAM, dense vectors on disk) or the Milvus collections themselves",
    )
    # From ANN_MIN_ROWS items on, the ANN index keeps the exact top-10 with far fewer
    # candidates than MEET's 8-byte codes (`python -m benchmarks.bench_cascade`).
    filter: Literal["auto", "meet", "ann"] = Field(
        "auto",
        description=f"first filter: MEET's codes (Hamming -> PQ), an ANN index over the dense "
        f"vectors (tier local: IVF over RaBitQ codes; tier server: Milvus's HNSW), or auto "
        f"(ANN from {ANN_MIN_ROWS:,} items on)",
    )
    # ann_keep and ann_nprobe: `python -m benchmarks.bench_cascade --ann-nprobe ...` (README
    # "Performance at scale"). 150 survivors, not 300: at 300k they kept 0.985 of the exact
    # top-10 (300: 0.993) for half the reads from disk, so half the cold latency and twice the
    # batch QPS (README "Beside the peers"); real encodings needed 54-75 for 0.95 (real.md).
    ann_keep: int = Field(
        150, ge=1,
        description="candidates the ANN stage passes on (tier server: HNSW's candidate list, ef)",
    )  # fmt: skip
    ann_nprobe: int | float = Field(
        0.05, gt=0, description="IVF lists the ANN stage scans (a count, or a fraction)"
    )
    hash: bool = Field(True, description="the Hamming filter stage")
    # MEET's reference rates (at_bert/lib/evalution_AHR.py); with them the cascade stays within
    # a point of exact dense search (`meet-milvus eval run --collection demo`, README "Retrieval
    # through Milvus").
    hash_keep_images: Keep = Field(0.6, description="Hamming stage size searching images")
    hash_keep_texts: Keep = Field(0.3, description="Hamming stage size searching captions")
    # The scan has no topk cap and is faster than Milvus at scale
    # (`python -m benchmarks.bench_cascade`, README "Performance at scale").
    hash_mode: Literal["milvus", "client"] = Field(
        "client",
        description="Hamming stage: a client-side scan of cached codes (no topk cap) or Milvus "
        "BIN_IVF_FLAT",
    )
    nprobe: int | None = Field(
        None, ge=1, description="IVF lists Milvus probes (None: all, i.e. exact)"
    )
    pq: bool = Field(True, description="the product-quantization filter stage")
    # The smallest keeps within a point of keeping everything
    # (`meet-milvus eval tune-pq --collection demo_dev`, README "PQ keep per direction").
    pq_keep_images: Keep = Field(
        0.4, description="PQ stage size searching images (the reference: 0.6)"
    )
    pq_keep_texts: Keep = Field(
        0.3, description="PQ stage size searching captions (the reference: 0.5)"
    )
    pq_mode: Literal["adc", "milvus"] = Field(
        "adc",
        description="PQ stage: ADC on MEET's own codebooks (client-side) or Milvus IVF_PQ",
    )
    exact: bool = Field(True, description="the exact dense re-scoring stage")
    exact_keep: int = Field(
        100, ge=1, le=MAX_TOPK, description="candidates the exact stage keeps (at least k)"
    )
    rerank: bool | Literal["weighted", "reference"] = Field(
        "weighted",
        description="re-ranking: weighted (similarity + alpha*consistency + "
        "beta*complementarity over the top z; true means this), reference (MEET's reference "
        "rule: the top K1 by reverse rank alone), or false (off)",
    )
    # alpha, beta, z: the best of a grid (`meet-milvus eval tune-rerank --collection demo_dev`,
    # README "Retrieval through Milvus").
    alpha: float = Field(0.0, description="re-ranking weight of consistency")
    beta: float = Field(0.4, description="re-ranking weight of complementarity")
    z: int = Field(30, ge=1, description="re-ranking depth")
    temperature: float = Field(0.05, gt=0, description="attention temperature of consistency")
    # The reference's K1 (at_bert/lib/evalution_AHR.py: K_t2i = 12, K_i2t = 15).
    reference_k_images: int = Field(
        12, ge=1, description="reference re-ranking depth searching images"
    )
    reference_k_texts: int = Field(
        15, ge=1, description="reference re-ranking depth searching captions"
    )

    @field_validator("hash_keep_images", "hash_keep_texts", "pq_keep_images", "pq_keep_texts")
    @classmethod
    def _stage_size(cls, value: Keep) -> Keep:
        return check_keep(value)

    @field_validator("rerank", mode="before")
    @classmethod
    def _rerank_mode(cls, value: object) -> object:
        if value is True:
            return "weighted"
        if value is False or value in ("weighted", "reference"):
            return value
        raise ValueError(f"{value!r}: use true, false, 'weighted' or 'reference'")

    def updated(self, **overrides: Any) -> SearchConfig:
        """A copy with `overrides` applied and validated; ParameterError names the first
        setting that is unknown or out of range."""
        unknown = sorted(set(overrides) - set(type(self).model_fields))
        if unknown:
            known = ", ".join(type(self).model_fields)
            raise ParameterError(f"search setting '{unknown[0]}': unknown (known: {known})")
        try:
            return type(self).model_validate({**self.model_dump(), **overrides})
        except ValidationError as e:
            err = e.errors()[0]
            message = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:
                raise ParameterError(message) from None
            raise ParameterError(f"search setting '{err['loc'][0]}': {message}") from None

    def hash_keep(self, gallery: Modality) -> Keep:
        """The Hamming stage's size searching `gallery`."""
        return self.hash_keep_images if gallery == "image" else self.hash_keep_texts

    def pq_keep(self, gallery: Modality) -> Keep:
        """The PQ stage's size searching `gallery`."""
        return self.pq_keep_images if gallery == "image" else self.pq_keep_texts

    def reranker(self, gallery: Modality) -> Reranker:
        """The re-ranker for queries searching `gallery` (re-ranking on)."""
        if self.rerank == "reference":
            k1 = self.reference_k_images if gallery == "image" else self.reference_k_texts
            return Reranker.reference(k1)
        return Reranker(alpha=self.alpha, beta=self.beta, z=self.z,
                        temperature=self.temperature, mode="weighted")  # fmt: skip

    def first_filter(self, rows: int, ann: bool = True) -> Literal["meet", "ann"]:
        """The filter used on a gallery of `rows` items; `ann`: whether the tier has an ANN
        index (the server's needs HNSW on the dense field)."""
        if self.filter != "auto":
            return self.filter
        return "ann" if ann and rows >= ANN_MIN_ROWS else "meet"
