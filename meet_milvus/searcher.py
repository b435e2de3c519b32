"""`MeetSearcher`: text -> images and image -> captions through MEET's cascade on Milvus.

from meet_milvus import MeetSearcher
searcher = MeetSearcher("coco")                  # checkpoint: the one the gallery was loaded with
hits = searcher.search("a tiger next to a flower", k=5)
hits = searcher.search_image("cat.jpg", k=5)
"""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meet_milvus.batching import Batcher
from meet_milvus.cascade import (
    AnnFilter,
    Candidates,
    Cascade,
    ExactRescore,
    HammingFilter,
    QuantizedFilter,
    Rerank,
    Stage,
    StageTrace,
    check_keep,
)
from meet_milvus.config import Settings, load_settings
from meet_milvus.errors import (
    GalleryMismatchError,
    MeetError,
    MilvusError,
    ParameterError,
    ServerUnavailableError,
)
from meet_milvus.gallery_layout import (
    MODALITIES,
    Gallery,
    Modality,
    check_gallery_name,
    open_gallery,
)
from meet_milvus.gallery_log import GalleryState, gallery_state
from meet_milvus.inputs import check_text, is_file
from meet_milvus.milvus_arrays import MAX_TOPK
from meet_milvus.model.checkpoint import load_checkpoint
from meet_milvus.model.meet_model import Encoded, MeetModel
from meet_milvus.reader import GalleryReader, MilvusReader, MilvusSide, TierSync, open_tier
from meet_milvus.rerank import Reranker
from meet_milvus.results import Hit, StageHit
from meet_milvus.server import connect, describe
from meet_milvus.tier import LocalTier
from meet_milvus.tier_write import rebuild_ann

Keep = int | float
QUERY_CELLS = 1 << 24  # queries x gallery items per cascade call (about 400 MB of candidates)
# `filter="auto"` uses the ANN index from this gallery size on
# (`python -m benchmarks.bench_cascade`, README "Performance at scale").
ANN_MIN_ROWS = 50_000
MAX_BATCH_CALLS = 64  # concurrent calls answered by one encoder pass and one stage pass
RECONNECT_ATTEMPTS = 3  # connections tried after Milvus stopped answering (1 s, 2 s apart)


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
        description=f"first filter: MEET's codes (Hamming -> PQ), the ANN index over the dense "
        f"vectors (tier local), or auto (ANN from {ANN_MIN_ROWS:,} items on)",
    )
    # ann_keep and ann_nprobe: `python -m benchmarks.bench_cascade --ann-nprobe ...` (README
    # "Performance at scale").
    ann_keep: int = Field(300, ge=1, description="candidates the ANN stage passes on")
    ann_nprobe: int | float = Field(
        0.05, gt=0, description="IVF lists the ANN stage scans (a count, or a fraction)"
    )
    hash: bool = Field(True, description="the Hamming filter stage")
    # MEET's reference rates (at_bert/lib/evalution_AHR.py); with them the cascade stays within
    # a point of exact dense search (`meet-milvus eval --collection demo`, README "Retrieval
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
    # (`meet-milvus eval --collection demo_dev --tune-pq`, README "PQ keep per direction").
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
    # alpha, beta, z: the best of a grid (`meet-milvus eval --collection demo_dev --tune`,
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

    @model_validator(mode="after")
    def _ann_needs_local(self) -> SearchConfig:
        if self.filter == "ann" and self.tier != "local":
            raise ValueError("search setting 'filter': the ANN index needs tier='local'")
        return self

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

    def first_filter(self, rows: int) -> Literal["meet", "ann"]:
        """The filter used on a gallery of `rows` items."""
        if self.filter != "auto":
            return self.filter
        return "ann" if self.tier == "local" and rows >= ANN_MIN_ROWS else "meet"


class MeetSearcher:
    """Queries a gallery loaded by `meet-milvus load`; one object per gallery and model.

    `checkpoint` defaults to the settings' checkpoint, else the one the gallery was loaded
    with; a checkpoint whose model differs from the gallery's is refused. `uri` points at a
    Milvus server (default: the settings', else the embedded one). Keyword arguments override
    fields of `SearchConfig` (e.g. `alpha=0.2, pq=False`); a call's `config=` overrides the
    searcher's for that call only.
    """

    def __init__(
        self,
        collection: str = "coco",
        checkpoint: str | Path | None = None,
        uri: str | None = None,
        settings: Settings | None = None,
        config: SearchConfig | None = None,
        **overrides: Any,
    ) -> None:
        settings = settings or load_settings()
        if uri is not None:
            settings = load_settings(None, **{**settings.model_dump(), "milvus_uri": uri})
        self.settings = settings
        self.config: SearchConfig = (_checked(config) or SearchConfig()).updated(**overrides)
        check_gallery_name(collection)  # before connecting: a bad name starts no server
        self.client = connect(settings)
        path = checkpoint or settings.checkpoint or self._loaded_with(collection)
        self.model: MeetModel = load_checkpoint(path, settings.device, settings.cache_dir)
        self.gallery: Gallery = open_gallery(
            self.client, collection, fingerprint=self.model.config.fingerprint
        )
        self.state: GalleryState = gallery_state(self.client, self.gallery)
        changed = self.state.generation > len(MODALITIES) or any(self.state.deleted.values())
        live = {m: self.state.live(m) for m in MODALITIES} if changed else None
        self.gallery.check_rows(self.client, live)
        self._stores: dict[tuple[str, str], TierSync | MilvusReader] = {}
        # One encoding at a time: the model flips eval/train state around a call, and torch
        # already spreads one call over every core (concurrent calls only oversubscribe them).
        self._model_lock = threading.Lock()
        # Concurrent search calls share one encoder pass and one stage pass: batched, the
        # model and the stages answer many queries for little more than one.
        self._calls: Batcher[_Call, list[list[Hit]]] = Batcher(self._answer, MAX_BATCH_CALLS)
        self._lost = False  # Milvus stopped answering: the next call reconnects first

    def store(
        self, gallery: Modality, tier: Literal["local", "server"] | None = None
    ) -> GalleryReader:
        """What the stages read one modality through, up to date with the gallery's changes:
        its local tier (built from Milvus when missing or stale) or, with tier 'server', the
        Milvus collections. `tier` defaults to the searcher's config."""
        key = (tier or self.config.tier, gallery)
        if key not in self._stores:
            if key[0] == "local":
                tier = open_tier(self.client, self.gallery, gallery, self.settings,
                                 state=self.state)  # fmt: skip
                self._stores[key] = TierSync(self.client, self.gallery, tier)
            else:
                side = MilvusSide(self.client, self.gallery, gallery)
                self._stores[key] = MilvusReader(side, self.state)
        found = self._stores[key]
        if isinstance(found, TierSync):
            return found()
        found.refresh()
        return found

    def _ann_ready(self, gallery: Modality) -> None:
        """A tier without an ANN index (a gallery that started empty) gets one now; one the
        gallery outgrew is trained again in the background."""
        sync = self._stores[("local", gallery)]
        if isinstance(sync, TierSync):
            if sync.tier.info.get("ann") is None:
                rebuild_ann(sync.tier.path)
                sync.tier.refresh()
            sync.rebuild_if_stale()

    def tier(self, gallery: Modality) -> LocalTier | None:
        """The local tier of one modality; None in the server-side mode."""
        store = self.store(gallery)
        return store if isinstance(store, LocalTier) else None

    # -- public -------------------------------------------------------------------------------

    def search(
        self,
        text: str | Sequence[str],
        k: int = 10,
        diagnostics: bool = False,
        config: SearchConfig | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Images for a text (a list of texts: one list of hits each), with the searcher's
        config or, for this call only, `config` (e.g. `searcher.config.updated(pq=False)`)."""
        single, texts = _batch(text, str, "query", "a text or a list of texts")
        check_k(k)  # before the (slow) encoding
        _checked(config)
        if not texts:
            return []
        self._check_texts(texts)
        hits = self._submit(_Call("image", texts, k, diagnostics, config), "text")
        return hits[0] if single else hits

    def search_image(
        self,
        image: str | Path | np.ndarray | Sequence,
        k: int = 10,
        diagnostics: bool = False,
        config: SearchConfig | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Captions for an image: a file path, or features of one image ((R, D) grid or (D,)
        pooled). A list of those, or an (N, R, D) array, is a batch: one list of hits each.
        `config` as for `search`."""
        single, items = _batch(image, str | Path | np.ndarray, "image", "a file path or features")
        check_k(k)
        _checked(config)
        if not items:
            return []
        kind = tuple(sorted({getattr(x, "shape", "file") for x in items}, key=str))
        hits = self._submit(_Call("text", items, k, diagnostics, config), kind)
        return hits[0] if single else hits

    def _submit(self, call: _Call, kind: object) -> list[list[Hit]]:
        """`call` answered together with the calls of other threads that can share its passes:
        same direction, kind of query, k, diagnostics and config."""
        settings = None if call.config is None else call.config.model_dump_json()
        return self._calls.submit(call, (call.gallery, kind, call.k, call.diagnostics, settings))

    def _answer(self, calls: list[_Call]) -> list[list[list[Hit]]]:
        """One batch of like calls: their queries encoded together, searched together."""
        first = calls[0]
        items = [x for c in calls for x in c.items]
        if first.gallery == "image":
            with self._model_lock:
                queries = self.model.encode_texts(items)
        else:
            queries = self.encode_images(items)
        hits = self.run(queries, first.gallery, first.k, first.diagnostics, first.config)
        out, at = [], 0
        for c in calls:
            out.append(hits[at : at + len(c.items)])
            at += len(c.items)
        return out

    def encode_texts(self, texts: list[str]) -> Encoded:
        """Query texts through the model; empty ones refused, over-long ones truncated (warned)."""
        self._check_texts(texts)
        with self._model_lock:
            return self.model.encode_texts(texts)

    def _check_texts(self, texts: list[str]) -> None:
        """Empty texts refused, over-long ones warned about (in the caller's own thread)."""
        for i, t in enumerate(texts):
            check_text(t, f"query {i}")
        limit = self.model.max_text_len
        for i, n in enumerate(self.model.count_tokens(texts)):
            if n > limit:
                warnings.warn(
                    f"query {i}: {n} tokens, the model reads the first {limit} (truncated)",
                    stacklevel=3,
                )

    def encode_images(self, items: list) -> Encoded:
        """Image files or feature arrays through the model (the same kind within a batch)."""
        if all(isinstance(x, str | Path) for x in items):
            for x in items:
                if not is_file(x):
                    raise ParameterError(f"image file {x}: not found")
            with self._model_lock:
                return self.model.encode_image_files([str(x) for x in items])
        if all(isinstance(x, np.ndarray) for x in items):
            shapes = {x.shape for x in items}
            if len(shapes) > 1:
                raise ParameterError(f"image features of different shapes in one batch: {shapes}")
            features = np.stack([x if x.ndim <= 2 else x.reshape(-1, x.shape[-1]) for x in items])
            if features.ndim == 2 or features.ndim == 3:
                with self._model_lock:
                    return self.model.encode_images(features)
            raise ParameterError(
                f"image features of shape {items[0].shape}: expected (R, D) or (D,)"
            )
        raise ParameterError("images: give file paths or feature arrays (numpy), not a mix")

    def cascade(
        self, gallery: Modality, k: int = 10, config: SearchConfig | None = None
    ) -> Cascade:
        """The stages that answer queries against one modality of the gallery, for top k, with
        the searcher's config or `config` (e.g. one stage switched off, for an evaluation)."""
        cfg = _checked(config) or self.config
        store = self.store(gallery, cfg.tier)
        side = MilvusSide(self.client, self.gallery, gallery)
        stages: list[Stage] = []
        if cfg.first_filter(store.rows) == "ann":
            self._ann_ready(gallery)
            keep = max(cfg.ann_keep, cfg.exact_keep, k)
            stages.append(AnnFilter(store, keep=keep, nprobe=cfg.ann_nprobe))
        else:
            if cfg.hash:
                stages.append(
                    HammingFilter(store, keep=cfg.hash_keep(gallery), mode=cfg.hash_mode,
                                  nprobe=cfg.nprobe, least=k, milvus=side)
                )  # fmt: skip
            if cfg.pq:
                stages.append(
                    QuantizedFilter(store, self.model.codebooks_for(gallery),
                                    keep=cfg.pq_keep(gallery), mode=cfg.pq_mode,
                                    nprobe=cfg.nprobe, least=k, milvus=side)
                )  # fmt: skip
        if cfg.exact or not stages:
            stages.append(ExactRescore(store, keep=max(cfg.exact_keep, k), milvus=side))
        if cfg.rerank:
            stages.append(Rerank(store, cfg.reranker(gallery)))
        return Cascade(stages)

    def run(
        self,
        queries: Encoded,
        gallery: Modality,
        k: int = 10,
        diagnostics: bool = False,
        config: SearchConfig | None = None,
    ) -> list[list[Hit]]:
        """Encoded queries through the cascade (the searcher's config, or `config`): the top k
        hits of each."""
        check_k(k)
        if self._lost:
            self.reconnect()
        try:
            cascade, hits = self.cascade(gallery, k, config), []
            store = cascade.stages[0].store
            dead = store.dead()
            if store.rows - (0 if dead is None else int(dead.sum())) == 0:
                return [[] for _ in range(len(queries))]  # nothing of that modality (yet)
            # Bounded batches: a stage holds (queries x candidates) arrays, up to the gallery
            # wide.
            step = max(1, QUERY_CELLS // max(1, store.rows))
            for lo in range(0, len(queries), step):
                traces = cascade.trace(queries[lo : lo + step])
                final = traces[-1].candidates.head(k)
                hits += self._hits(final, store, gallery, traces if diagnostics else None)
        except ServerUnavailableError as e:
            self._lost = True
            where = describe(self.settings)
            raise ServerUnavailableError(f"{where}: {e}; the next call reconnects") from None
        except MilvusError as e:  # e.g. a server restarted moments ago, still settling
            raise MilvusError(
                f"{describe(self.settings)}: {e}; retry in a minute (a server restarted moments "
                "ago is still settling); if it persists, see the server's log"
            ) from None
        return hits

    def reconnect(self, attempts: int = RECONNECT_ATTEMPTS) -> None:
        """A new connection to Milvus (the embedded server is restarted if it died), tried
        `attempts` times with doubling pauses; MeetError if none answers."""
        with contextlib.suppress(Exception):
            self.client.close()
        pause = 1.0
        for attempt in range(1, attempts + 1):
            try:
                self.client = connect(self.settings)
                break
            except MeetError as e:
                if attempt == attempts:
                    raise ServerUnavailableError(f"{e} (tried {attempts} times)") from None
                time.sleep(pause)
                pause *= 2
        self.gallery.loaded.clear()  # a restarted server loads collections on first use again
        self._stores.clear()  # they hold the old connection
        self._lost = False

    # -- internals ----------------------------------------------------------------------------

    def _loaded_with(self, collection: str) -> Path:
        """The checkpoint recorded by the load, when the settings name none."""
        gallery = open_gallery(self.client, collection)
        path = gallery.meta["image"].checkpoint
        if not path:
            raise GalleryMismatchError(
                f"collection '{collection}': records no checkpoint; pass checkpoint="
            )
        return Path(path)

    def _hits(
        self,
        final: Candidates,
        store: GalleryReader,
        gallery: Modality,
        traces: list[StageTrace] | None,
    ) -> list[list[Hit]]:
        ids = final.ids[final.ids >= 0]
        rows = {f: store.text(f, ids) for f in ("source", "external_id")}
        rows["image"] = store.image(ids)
        info = {
            int(i): (s, e, int(im))
            for i, s, e, im in zip(
                ids, rows["source"], rows["external_id"], rows["image"], strict=True
            )
        }
        out = []
        for q, (row_ids, row_scores) in enumerate(zip(final.ids, final.scores, strict=True)):
            hits = []
            for i, score in zip(row_ids, row_scores, strict=True):
                if i < 0:
                    continue
                source, external, image = info[int(i)]
                stages = _stage_hits(traces, q, int(i)) if traces is not None else None
                hits.append(
                    Hit(
                        id=int(i),
                        score=float(score),
                        source=source,
                        external_id=external,
                        modality=gallery,
                        image=image,
                        stages=stages,
                    )
                )
            out.append(hits)
        return out

    def __repr__(self) -> str:
        model = self.model.config.fingerprint[:12]
        return f"MeetSearcher(collection={self.gallery.name!r}, model={model!r})"


@dataclass(frozen=True)
class _Call:
    """One search call waiting for its batch: the modality searched and its queries."""

    gallery: Modality
    items: list
    k: int
    diagnostics: bool
    config: SearchConfig | None


def _checked(config: object) -> SearchConfig | None:
    """`config` when it is a SearchConfig (or None); ParameterError for anything else."""
    if config is None or isinstance(config, SearchConfig):
        return config
    raise ParameterError(
        f"config: expected a SearchConfig (e.g. searcher.config.updated(...)), "
        f"got {type(config).__name__}"
    )


def _batch(value: Any, kind: Any, what: str, expected: str) -> tuple[bool, list]:
    """(single, items) of a query argument: one `kind`, or a list of them (an (N, ...) array
    of image features is a batch); anything else refused before the model runs."""
    if isinstance(value, np.ndarray) and value.ndim >= 3:
        return False, list(value)
    if isinstance(value, kind):
        return True, [value]
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return False, list(value)
    raise ParameterError(f"{what}: expected {expected}, got {type(value).__name__}")


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= MAX_TOPK:
        raise ParameterError(f"k={k}: must be an integer between 1 and {MAX_TOPK}")
    return int(k)


def _stage_hits(traces: list[StageTrace], q: int, item: int) -> dict[str, StageHit]:
    out = {}
    for trace in traces:
        row = trace.candidates.ids[q]
        where = np.flatnonzero(row == item)
        if len(where):
            pos = int(where[0])
            out[trace.name] = StageHit(rank=pos + 1, score=float(trace.candidates.scores[q, pos]))
        else:
            out[trace.name] = StageHit(rank=None, score=None)
    return out
