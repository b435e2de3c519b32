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

from meet_milvus.batching import Batcher
from meet_milvus.cascade import (
    AnnFilter,
    Candidates,
    Cascade,
    ExactRescore,
    HammingFilter,
    MilvusAnn,
    QuantizedFilter,
    Rerank,
    Stage,
    StageTrace,
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
from meet_milvus.results import Hit, StageHit
from meet_milvus.search_config import SearchConfig
from meet_milvus.server import connect, describe
from meet_milvus.tier import LocalTier
from meet_milvus.tier_write import rebuild_ann

QUERY_CELLS = 1 << 24  # queries x gallery items per cascade call (about 400 MB of candidates)
MAX_BATCH_CALLS = 64  # concurrent calls answered by one encoder pass and one stage pass
RECONNECT_ATTEMPTS = 3  # connections tried after Milvus stopped answering (1 s, 2 s apart)


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
            self.client, collection, fingerprint=self.model.config.fingerprint,
            mapped=settings.maps_segments,
        )  # fmt: skip
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
        warn: bool = True,
    ) -> list[Hit] | list[list[Hit]]:
        """Images for a text (a list of texts: one list of hits each), with the searcher's
        config or, for this call only, `config` (e.g. `searcher.config.updated(pq=False)`).
        A query longer than the model reads is truncated with a warning; `warn=False` for a
        caller that reports `check_texts`' notices itself (warnings are process-wide)."""
        single, texts = _batch(text, str, "query", "a text or a list of texts")
        check_k(k)  # before the (slow) encoding
        _checked(config)
        if not texts:
            return []
        for notice in self.check_texts(texts):
            if warn:
                warnings.warn(notice, stacklevel=2)
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
        same direction, kind of query, k, diagnostics and config (frozen: hashed by value)."""
        group = (call.gallery, kind, call.k, call.diagnostics, call.config)
        return self._calls.submit(call, group)

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
        for notice in self.check_texts(texts):
            warnings.warn(notice, stacklevel=2)
        with self._model_lock:
            return self.model.encode_texts(texts)

    def check_texts(self, texts: list[str]) -> list[str]:
        """Empty queries refused (ParameterError); one notice per query longer than the model
        reads (it is truncated)."""
        for i, t in enumerate(texts):
            check_text(t, f"query {i}")
        limit = self.model.max_text_len
        return [
            f"query {i}: {n} tokens, the model reads the first {limit} (truncated)"
            for i, n in enumerate(self.model.count_tokens(texts))
            if n > limit
        ]

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
        server = cfg.tier == "server"
        # The server's ANN is HNSW on the dense field; galleries from before it have FLAT.
        dense_index = self.gallery.dense_index(self.client, gallery) if server else "FLAT"
        ann = not server or dense_index == "HNSW"
        first = cfg.first_filter(store.rows, ann)
        if first == "ann" and not ann:
            raise ParameterError(
                f"collection '{self.gallery.name}': the server-side ANN needs HNSW on the dense "
                f"field, which this gallery's {gallery}s lack; use filter "
                f"'meet', tier 'local', or `meet-milvus reindex --collection {self.gallery.name} "
                f"--dense-index hnsw`"
            )
        exact = cfg.exact
        if first == "ann" and server:
            # HNSW's hits come with exact scores: an exact stage would only score them again.
            stages.append(MilvusAnn(store, keep=max(cfg.exact_keep, k), ef=cfg.ann_keep,
                                    milvus=side))  # fmt: skip
            exact = False
        elif first == "ann":
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
        if exact or not stages:
            stages.append(ExactRescore(store, keep=max(cfg.exact_keep, k), milvus=side,
                                       dense_index=dense_index))  # fmt: skip
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
