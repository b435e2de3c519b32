"""What the cascade stages read a gallery through: one interface, two stores.

A stage's algorithm never knows where its data lives. It asks a `GalleryReader` for

    codes(field)          every item's hash or PQ codes, (rows, width) uint8, row = item id
    dead()                which ids are deleted (tombstones), or None
    dense(ids), neighbours(ids), image(ids), text(field, ids)   values of given ids

and two stores answer: the client's `LocalTier` (meet_milvus.tier: codes in RAM, the rest on
disk) and `MilvusReader` (the Milvus collections themselves: the server-side mode). The stages
that let Milvus search (BIN_IVF_FLAT, IVF_PQ, a filtered FLAT search) go through `MilvusSide`.

`TierSync` keeps a local tier in step with the gallery in Milvus: a stat of the tier's manifest
on every call (a writer on this machine appends segments and tombstones itself), and at most
every SYNC_S seconds a look at the gallery's change log (`id > generation`: one small query),
after which only the rows of the new changes are read from Milvus.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from meet_milvus import milvus_arrays
from meet_milvus.config import Settings
from meet_milvus.gallery_layout import Gallery, GalleryMeta, Modality, load_all
from meet_milvus.gallery_log import (
    GalleryState,
    gallery_state,
    has_log,
    log_name,
    newer,
    read_changes,
)
from meet_milvus.tier import TIER_FIELDS, Chunk, LocalTier, fresh_info, read_info, tier_dir
from meet_milvus.tier_write import (
    append_rows,
    locked,
    mark_deleted,
    rebuild_ann,
    set_generation,
    write_tier,
)

if TYPE_CHECKING:
    from pymilvus import MilvusClient

CONSISTENCY = "Eventually"  # writers flush and log a change done only once it is visible
SYNC_S = 1.0  # the change log is asked at most this often (a stat of the tier: every call)
FETCH_ROWS = 8192  # rows fetched from Milvus per request while building a tier


class GalleryReader(Protocol):
    """One gallery modality as the stages read it (see the module docstring)."""

    meta: GalleryMeta

    @property
    def rows(self) -> int: ...

    def codes(self, field: str) -> np.ndarray: ...

    def dead(self) -> np.ndarray | None: ...

    def dense(self, ids: np.ndarray) -> np.ndarray: ...

    def neighbours(self, ids: np.ndarray) -> np.ndarray: ...

    def image(self, ids: np.ndarray) -> np.ndarray: ...

    def text(self, field: str, ids: np.ndarray) -> list[str]: ...


class MilvusSide:
    """A gallery modality's collections in Milvus, for the stages that let Milvus search."""

    def __init__(self, client: MilvusClient, gallery: Gallery, modality: Modality) -> None:
        self.client, self.gallery, self.modality = client, gallery, modality
        self.meta = gallery.meta[modality]

    def collection(self, field: str) -> str:
        """The collection holding `field`, loaded into Milvus memory on first use."""
        name = self.gallery.collection(self.modality, field)
        self.gallery.ensure_loaded(self.client, name)
        return name

    def search(
        self,
        field: str,
        queries: np.ndarray | list[bytes],
        limit: int,
        metric: str,
        params: dict | None = None,
        ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Milvus's top `limit` by `field` (among `ids` when given): ids, raw distances."""
        expr = None if ids is None else f"id in [{','.join(map(str, ids.tolist()))}]"
        return milvus_arrays.search(self.client, self.collection(field), field, queries, limit,
                                    metric, params, expr=expr, consistency=CONSISTENCY)  # fmt: skip

    def fetch(self, ids: np.ndarray, fields: list[str], row_bytes: int) -> dict:
        return milvus_arrays.fetch(self.client, self.collection(fields[0]), ids, fields,
                                   row_bytes, CONSISTENCY)  # fmt: skip


class MilvusReader:
    """A gallery modality read from Milvus (the server-side mode): codes fetched once (again
    when the gallery changed), everything else fetched per call."""

    remote = True  # a read is a round trip: the exact stage may let Milvus score instead

    def __init__(self, side: MilvusSide, state: GalleryState | None = None) -> None:
        self.milvus = side
        self.meta = side.meta
        self._state = state or gallery_state(side.client, side.gallery)
        self._codes: dict[str, np.ndarray] = {}
        self._checked = time.monotonic()
        self._logged = has_log(side.client, side.gallery.name)

    @property
    def rows(self) -> int:
        return self._state.bound[self.milvus.modality]

    def refresh(self) -> bool:
        """Take up changes of the gallery (its log, at most every SYNC_S seconds)."""
        side = self.milvus
        if time.monotonic() - self._checked < SYNC_S or not self._logged:
            return False
        self._checked = time.monotonic()
        side.gallery.ensure_loaded(side.client, log_name(side.gallery.name))
        if not newer(side.client, side.gallery.name, self._state.generation):
            return False
        new = read_changes(side.client, side.gallery.name, self._state.generation)
        for change in new:
            self._state.apply(change)
        self._state.pending.clear()
        self._codes.clear()
        return True

    def dead(self) -> np.ndarray | None:
        deleted = self._state.dead(self.milvus.modality)
        if not len(deleted):
            return None
        mask = np.zeros(self.rows, dtype=bool)
        mask[deleted] = True
        return mask

    def live_ids(self) -> np.ndarray:
        dead = self.dead()
        return np.arange(self.rows) if dead is None else np.flatnonzero(~dead)

    def codes(self, field: str) -> np.ndarray:
        if field not in self._codes:
            width = self.meta.H // 8 if field == "hash" else self.meta.M
            out = np.zeros((self.rows, width), dtype=np.uint8)
            live = self.live_ids()
            for lo in range(0, len(live), milvus_arrays.ID_CHUNK):
                part = live[lo : lo + milvus_arrays.ID_CHUNK]
                got = self.milvus.fetch(part, [field], 2 * width + 16)[field]
                out[part] = np.asarray(got, dtype=np.uint8)  # codes: K <= 8 bits
            self._codes[field] = out
        return self._codes[field]

    def dense(self, ids: np.ndarray) -> np.ndarray:
        row = 4 * self.meta.embed_dim + 16
        return np.asarray(self.milvus.fetch(ids, ["dense"], row)["dense"], np.float32)

    def neighbours(self, ids: np.ndarray) -> np.ndarray:
        row = 4 * self.meta.neighbours + 16
        return np.asarray(self.milvus.fetch(ids, ["neighbours"], row)["neighbours"], np.float32)

    def image(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.milvus.fetch(ids, ["image"], 24)["image"], np.int64).reshape(-1)

    def text(self, field: str, ids: np.ndarray) -> list[str]:
        return list(self.milvus.fetch(ids, [field], 8192)[field])


# -- the local tier kept in step with Milvus ---------------------------------------------------


def _fields(gallery: Gallery, modality: Modality) -> dict[str, list[str]]:
    """The tier's fields by the collection holding them (a format-1 gallery has no digest)."""
    meta = gallery.meta[modality]
    by_collection: dict[str, list[str]] = {}
    for field in TIER_FIELDS:
        if field == "digest" and meta.meet_milvus < 2:
            continue
        by_collection.setdefault(gallery.collection(modality, field), []).append(field)
    return by_collection


def milvus_chunks(
    client: MilvusClient, gallery: Gallery, modality: Modality, lo: int, hi: int, dead: set[int]
) -> Iterator[Chunk]:
    """The rows lo..hi-1 of a gallery modality from Milvus, in id order, the ids in `dead`
    (deleted) as zeros. A live id Milvus does not hold, or holds twice, is refused."""
    meta = gallery.meta[modality]
    collections = _fields(gallery, modality)
    row_bytes = 4 * (meta.embed_dim + meta.neighbours) + 2 * 512
    step = max(1, min(FETCH_ROWS, milvus_arrays.RPC_BYTES // row_bytes))
    for a in range(lo, hi, step):
        ids = np.arange(a, min(hi, a + step), dtype=np.int64)
        live = np.asarray([i for i in ids if int(i) not in dead], dtype=np.int64)
        where = np.searchsorted(ids, live)
        chunk: Chunk = {"digest": [""] * len(ids)}
        for name, fields in collections.items():
            got = milvus_arrays.fetch(client, name, live, fields, row_bytes, "Strong")
            for f in fields:
                if isinstance(got[f], list):
                    values = [""] * len(ids)
                    for w, v in zip(where, got[f], strict=True):
                        values[w] = v
                else:
                    values = np.zeros((len(ids), *np.shape(got[f])[1:]), np.asarray(got[f]).dtype)
                    values[where] = got[f]
                chunk[f] = values
        yield chunk


def open_tier(
    client: MilvusClient,
    gallery: Gallery,
    modality: Modality,
    settings: Settings,
    echo: Callable[[str], None] | None = None,
    state: GalleryState | None = None,
) -> LocalTier:
    """A gallery modality's local tier, built from Milvus first when missing or built for
    another gallery, and caught up with the changes logged since it was written."""
    meta = gallery.meta[modality]
    path = tier_dir(settings, gallery.name, modality)
    state = state or gallery_state(client, gallery)
    info = fresh_info(path, meta)
    if info is None or info["generation"] > state.generation:
        names = sorted(_fields(gallery, modality))
        load_all(client, names)  # queries need loaded collections; loading is idempotent
        gallery.loaded.update(names)
        dead = state.deleted[modality]
        chunks = milvus_chunks(client, gallery, modality, 0, state.bound[modality], dead)
        info = write_tier(path, meta, chunks, echo, state.generation, state.dead(modality),
                          state.bound[modality])  # fmt: skip
    tier = LocalTier(path, meta, info)
    if tier.generation < state.generation:
        catch_up(client, gallery, modality, tier.path, tier.generation)
        tier.refresh()
    return tier


def catch_up(
    client: MilvusClient, gallery: Gallery, modality: Modality, path: Path, generation: int
) -> int:
    """Apply to a tier the changes logged after `generation` (under the tier's lock, so the
    rows are read from Milvus once per machine): new rows as a segment, deletions as
    tombstones. The generation reached."""
    with locked(path):
        current = LocalTier(path, gallery.meta[modality], read_info(path))
        if current.generation > generation:  # another process caught up meanwhile
            return current.generation
        changes = [c for c in read_changes(client, gallery.name, current.generation, "Strong")
                   if c.state == "done"]  # fmt: skip
        current.close()
    if not changes:
        return generation
    state = GalleryState.of(changes)
    mine = [c for c in changes if c.modality == modality]
    top = changes[-1].generation
    added = [c for c in mine if c.added]
    if added:
        lo, hi = min(c.lo for c in added), max(c.hi for c in added)
        dead = state.deleted[modality]
        append_rows(path, lo, milvus_chunks(client, gallery, modality, lo, hi, dead), top)
        if dead:
            mark_deleted(path, np.asarray(sorted(dead), np.int64), top)
    elif state.deleted[modality]:
        mark_deleted(path, state.dead(modality), top)
    set_generation(path, top)
    return top


class TierSync:
    """Keeps one local tier in step with its gallery (see the module docstring); rebuilds the
    ANN index in a background thread once the gallery has outgrown it."""

    def __init__(self, client: MilvusClient, gallery: Gallery, tier: LocalTier) -> None:
        self.client, self.gallery, self.tier = client, gallery, tier
        self._checked = time.monotonic()
        self._rebuilding: threading.Thread | None = None
        self._logged = has_log(client, gallery.name)

    def __call__(self) -> LocalTier:
        """The tier, up to date with this machine's writers, and with Milvus's log every
        SYNC_S seconds."""
        self.tier.refresh()
        if time.monotonic() - self._checked >= SYNC_S and self._logged:
            self._checked = time.monotonic()
            self.gallery.ensure_loaded(self.client, log_name(self.gallery.name))
            if newer(self.client, self.gallery.name, self.tier.generation):
                catch_up(self.client, self.gallery, self.tier.meta.modality, self.tier.path,
                         self.tier.generation)
                self.tier.refresh()
        return self.tier

    def rebuild_if_stale(self) -> None:
        """Start training a new ANN index in the background when the gallery outgrew it."""
        if self.tier.ann_stale() and not (self._rebuilding and self._rebuilding.is_alive()):
            self._rebuilding = threading.Thread(target=rebuild_ann, args=(self.tier.path,),
                                                daemon=True, name="meet-ann-rebuild")  # fmt: skip
            self._rebuilding.start()

