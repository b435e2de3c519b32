"""Retrieval quality of encoded splits: dense, hash-only (Hamming) and PQ-only (ADC) rankings."""

from __future__ import annotations

import numpy as np
import torch

from meet_milvus.evaluation import recall_from_similarity
from meet_milvus.model.hashing import hamming
from meet_milvus.model.meet_model import Encoded
from meet_milvus.model.quantization import Quantizers

_T2I = ("r1_t2i", "r5_t2i", "r10_t2i", "medr_t2i", "meanr_t2i")


def retrieval_recalls(
    images: Encoded, texts: Encoded, codebooks: np.ndarray, caption_image: np.ndarray
) -> dict:
    """{"dense", "hash", "pq"} -> meet_milvus.evaluation.Recall on the image x caption gallery.

    hash: Hamming distance of the packed codes (lower = closer), in both directions; ties
    pessimistic (`meet_milvus.evaluation.TIE_POLICY`), the policy `meet-milvus eval` applies to
    its ranked lists, so both print the same hash-only rSum.
    pq: asymmetric distance, the continuous query head against the PQ reconstruction of the
    other modality's codes (image queries vs coded captions, caption queries vs coded images),
    in that modality's codebooks: `codebooks` as a checkpoint stores them (3-D shared, 4-D one
    set per modality, image then text).
    """
    pq = Quantizers.from_codebooks(torch.from_numpy(np.asarray(codebooks, dtype=np.float32)))
    dense = images.dense @ texts.dense.T
    hashed = -hamming(images.hash_codes, texts.hash_codes).astype(np.float32)
    i2t = pq["text"].adc(
        torch.from_numpy(images.head), torch.from_numpy(texts.pq_codes.astype(np.int64))
    )
    t2i = pq["image"].adc(
        torch.from_numpy(texts.head), torch.from_numpy(images.pq_codes.astype(np.int64))
    )
    return {
        "dense": recall_from_similarity(dense, caption_image),
        "hash": recall_from_similarity(hashed, caption_image),
        "pq": _combine(
            recall_from_similarity(i2t.numpy(), caption_image),
            recall_from_similarity(t2i.numpy().T, caption_image),
        ),
    }


def _combine(i2t, t2i):
    """Image-to-text figures of one Recall with the text-to-image figures of another."""
    update = {k: getattr(t2i, k) for k in _T2I}
    r = i2t.model_copy(update=update)
    rsum = r.r1_i2t + r.r5_i2t + r.r10_i2t + r.r1_t2i + r.r5_t2i + r.r10_t2i
    return r.model_copy(update={"rsum": rsum})


def rsums(recalls: dict) -> dict[str, float]:
    """{"dense", "hash", "pq", "sum"} rSums."""
    out = {k: float(v.rsum) for k, v in recalls.items()}
    out["sum"] = sum(out.values())
    return out
