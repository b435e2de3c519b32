"""The client's local tier of a gallery: what the cascade reads, derived from Milvus.

Milvus stays the source of truth; a `LocalTier` is a copy of one gallery modality under the data
dir, written by the loader and the gallery writer from the rows they insert, or built from the
Milvus collections (`meet_milvus.reader.open_tier`). It keeps in RAM only the compact codes the
filter stages scan, and reads the rest from disk per survivor, so the dense collection need not
sit in Milvus memory while the gallery is searched:

    in RAM   hash codes (H/8 B an item), MEET PQ codes (M B), the ANN index (an IVF over
             RaBitQ codes of a PCA-reduced dense vector, ~48 B): each loaded when a stage asks
    on disk  dense vectors (float32), re-ranking statistics, sources, external ids, digests,
             image ids: read with pread, so they live in the OS page cache, not in the process

A gallery grows and shrinks: item ids are given out in order and never reused, so the tier is a
list of **segments**, each the rows of one id range (`seg-LO/`, written once, then only read),
plus a **tombstone** file of the deleted ids, and `tier.json`, the manifest naming them and the
gallery generation they reflect. Every file is written under a temporary name and renamed;
`tier.json` last, so a reader sees the old tier or the new one, never a half-written segment.
A reader notices a new manifest by a stat of `tier.json` (`refresh`) and reads only what is new.
Writers (meet_milvus.tier_write) take a lock file beside the tier (`.MODALITY.lock`), so two
processes never append the same segment.

The ANN index is built over the rows of its time (`ann-G.faiss`); later rows are added to each
reader's copy in RAM (faiss `add_with_ids`) and deleted ones removed (`remove_ids`), and a new
index (PCA and centroids trained again) replaces the file once the gallery has grown by
ANN_REBUILD_GROWTH since it was built.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from pydantic import ValidationError

from meet_milvus.config import Settings
from meet_milvus.errors import GalleryMismatchError
from meet_milvus.files import read_json
from meet_milvus.gallery_layout import GalleryMeta, Modality

TIER_FORMAT = 2
# The ANN index is trained again once the gallery has grown by this fraction of the rows it
# was trained on: new rows only join its lists until then, and the recall of the kept index
# falls behind a fresh one's as the gallery grows (README "Your photo collection").
ANN_REBUILD_GROWTH = 0.5
# Reads that the page cache cannot answer fail at once instead of waiting for the disk
# (Linux >= 4.14; elsewhere every read waits, one at a time).
NOWAIT = getattr(os, "RWF_NOWAIT", 0)
WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)
Buffer = np.ndarray | bytearray  # filled in place by gather

Chunk = dict[str, Any]  # field -> values of consecutive rows (arrays; lists of strings)
TEXT_FIELDS = ("source", "external_id", "digest")
TIER_FIELDS = ("hash", "codes", "dense", "neighbours", "image", *TEXT_FIELDS)
FILES = {"hash": "hash.u8", "codes": "codes.u8", "dense": "dense.f32",
         "neighbours": "neighbours.f32", "image": "image.i64"}  # fmt: skip
DTYPES = {"hash": np.uint8, "codes": np.uint8, "image": np.int64}


def tier_dir(settings: Settings, gallery: str, modality: Modality) -> Path:
    """Where a gallery modality's tier lives: under the data dir, by the Milvus it comes from."""
    if settings.embedded:
        server = "embedded"
    else:
        where = f"{settings.milvus_uri}/{settings.milvus_db}"
        server = hashlib.sha1(where.encode()).hexdigest()[:12]
    return settings.data_dir / "tiers" / server / gallery / modality


def field_widths(meta: GalleryMeta) -> dict[str, int]:
    """Values per row of each fixed-width field."""
    return {"hash": meta.H // 8, "codes": meta.M, "dense": meta.embed_dim,
            "neighbours": meta.neighbours, "image": 1}  # fmt: skip


class _Segment:
    """The rows lo..hi-1 of a tier: one folder, its files opened on first read."""

    def __init__(self, path: Path, lo: int, hi: int) -> None:
        self.path, self.lo, self.hi = path, lo, hi
        self._fds: dict[str, int] = {}

    def fd(self, name: str) -> int:
        if name not in self._fds:
            self._fds[name] = os.open(self.path / name, os.O_RDONLY)
        return self._fds[name]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class LocalTier:
    """One gallery modality's local tier (see the module docstring); open it with `read_tier`
    (files alone) or `meet_milvus.reader.open_tier` (checked against Milvus).

    It is one of the two `GalleryReader`s the cascade stages read (meet_milvus.reader).
    """

    remote = False  # reads come from this machine's disk

    def __init__(self, path: Path, meta: GalleryMeta, info: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self.info: dict[str, Any] = {}
        self._segments: list[_Segment] = []
        self._starts = np.zeros(0, np.int64)
        self._ram: dict[str, Any] = {}
        self._dead: np.ndarray | None = None
        self._ann_dead = 0  # tombstones already removed from the in-RAM ANN index
        self._stamp: tuple = ()
        self._apply(info)

    # -- the manifest -----------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Ids are 0..rows-1 (deleted ones included: see `dead`)."""
        return int(self.info["rows"])

    @property
    def live(self) -> int:
        return self.rows - (0 if self._dead is None else int(self._dead.sum()))

    @property
    def generation(self) -> int:
        return int(self.info["generation"])

    def refresh(self) -> bool:
        """Take up a manifest another process wrote since (one stat when nothing changed):
        new segments' codes are appended in RAM, new tombstones applied. True if it changed."""
        stamp = _stamp(self.path)
        if stamp == self._stamp or not stamp:
            return False
        info = read_info(self.path)
        if info.get("build") != self.info.get("build"):  # rebuilt whole: start again
            self.close()
            self.__init__(self.path, GalleryMeta.model_validate(info["gallery"]), info)
        else:
            self._apply(info)
        return True

    def _apply(self, info: dict[str, Any]) -> None:
        known = {(s.lo, s.hi) for s in self._segments}
        for seg in info["segments"]:
            if (seg["lo"], seg["hi"]) not in known:
                self._segments.append(_Segment(self.path / seg["name"], seg["lo"], seg["hi"]))
        self._segments.sort(key=lambda s: s.lo)
        self._starts = np.asarray([s.lo for s in self._segments], dtype=np.int64)
        old_rows = int(self.info.get("rows", 0))
        self.info = info
        for field in [f for f in ("hash", "codes") if f in self._ram]:
            if self.rows > old_rows:  # codes of the new rows only
                new = self._read_range(field, old_rows, self.rows)
                self._ram[field] = np.concatenate([self._ram[field], new])
        dead = info.get("deleted")
        self._dead = None
        if dead:
            ids = np.fromfile(self.path / dead["file"], np.int64)
            self._dead = np.zeros(self.rows, dtype=bool)
            self._dead[ids[ids < self.rows]] = True
        if "ann" in self._ram and self._ram["ann_file"] != (info.get("ann") or {}).get("file"):
            for key in ("ann", "ann_file", "ann_rows"):  # rebuilt: read the new one when asked
                self._ram.pop(key)
        if "ann" in self._ram:
            self._ann_catch_up()
        self._stamp = _stamp(self.path) or self._stamp

    # -- in RAM: the filter stages' codes ------------------------------------------------------

    def codes(self, field: str) -> np.ndarray:
        """`hash` (rows, H/8) or `codes` (rows, M) as uint8 of every id, read into RAM once."""
        if field not in self._ram:
            self._ram[field] = self._read_range(field, 0, self.rows)
        return self._ram[field]

    def dead(self) -> np.ndarray | None:
        """(rows,) bool, True for a deleted id; None when nothing was deleted."""
        return self._dead

    def _read_range(self, field: str, lo: int, hi: int) -> np.ndarray:
        width = field_widths(self.meta)[field]
        parts = [np.zeros((0, width), np.uint8)]
        for seg in self._segments:
            if seg.hi <= lo or seg.lo >= hi:
                continue
            a, b = max(lo, seg.lo) - seg.lo, min(hi, seg.hi) - seg.lo
            raw = np.fromfile(seg.path / FILES[field], np.uint8, (b - a) * width, offset=a * width)
            parts.append(raw.reshape(-1, width))
        out = np.concatenate(parts)
        if len(out) != hi - lo:
            raise GalleryMismatchError(f"gallery tier {self.path}: {field} truncated (rebuild it)")
        return out

    def ann(self) -> faiss.Index:
        """The IVF-RaBitQ index over the PCA-reduced dense vectors, read into RAM once, with
        the rows added since it was built and without the deleted ones."""
        if "ann" not in self._ram:
            entry = self.info.get("ann")
            if not entry:
                raise GalleryMismatchError(
                    f"gallery tier {self.path}: no ANN index (the gallery was empty when built)"
                )
            self._ram["ann"] = faiss.read_index(str(self.path / entry["file"]))
            self._ram["ann_file"] = entry["file"]
            self._ram["ann_rows"] = int(entry["covers"])
            self._ann_dead = 0
            self._ann_catch_up()
        return self._ram["ann"]

    def _ann_catch_up(self) -> None:
        index, covered = self._ram["ann"], self._ram["ann_rows"]
        if self.rows > covered:
            ids = np.arange(covered, self.rows, dtype=np.int64)
            for lo in range(0, len(ids), 65536):
                part = ids[lo : lo + 65536]
                index.add_with_ids(self.dense(part), part)
            self._ram["ann_rows"] = self.rows
        dead = np.flatnonzero(self._dead) if self._dead is not None else np.zeros(0, np.int64)
        if len(dead) > self._ann_dead:
            index.remove_ids(faiss.IDSelectorBatch(dead.astype(np.int64)))
            self._ann_dead = len(dead)

    def ann_lists(self) -> int:
        """IVF lists of the ANN index in use."""
        return int(faiss.extract_index_ivf(self.ann()).nlist)

    def ann_stale(self) -> bool:
        """The gallery grew by ANN_REBUILD_GROWTH since the ANN index was trained."""
        entry = self.info.get("ann")
        if not entry:
            return self.live > 0
        return self.rows - entry["covers"] > ANN_REBUILD_GROWTH * max(entry["trained_rows"], 1)

    def ann_search(self, dense: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k by the ANN index, scanning `nprobe` lists: ids (nq, k), -1 where short, and
        approximate inner products (unit vectors: 1 - |q - x|^2 / 2)."""
        index = self.ann()
        x = np.ascontiguousarray(dense, dtype=np.float32)
        # faiss splits a batch by query; one query alone is split by list instead, so that it
        # uses every core (1.6x faster at 1M items on two). The index is this reader's own.
        faiss.extract_index_ivf(index).parallel_mode = 1 if len(x) == 1 else 0
        params = faiss.IVFSearchParameters(nprobe=int(nprobe))
        if isinstance(index, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
        dist, ids = index.search(x, int(k), params=params)
        return ids, np.where(ids >= 0, 1.0 - dist / 2, -np.inf).astype(np.float32)

    # -- on disk: read per item ----------------------------------------------------------------

    def dense(self, ids: np.ndarray) -> np.ndarray:
        """Dense vectors (len(ids), D) float32 of gallery ids (any order, repeats allowed)."""
        return self._rows("dense", ids, self.meta.embed_dim, np.float32)

    def neighbours(self, ids: np.ndarray) -> np.ndarray:
        """Re-ranking statistics (len(ids), k) float32: each item's top-k similarities."""
        return self._rows("neighbours", ids, self.meta.neighbours, np.float32)

    def image(self, ids: np.ndarray) -> np.ndarray:
        """The image each item shows (its own id for images; -1: none), int64."""
        return self._rows("image", ids, 1, np.int64).reshape(-1)

    def text(self, field: str, ids: np.ndarray) -> list[str]:
        """`source`, `external_id` or `digest` of each id."""
        ids = self._check(ids)
        segs = [self._segments[s] for s in self._segment_of(ids).tolist()]
        bounds = np.empty((len(ids), 2), np.int64)  # each text's start and end in its file
        offsets = [8 * (i - s.lo) for i, s in zip(ids.tolist(), segs, strict=True)]
        got = gather(list(bounds.view(np.uint8)), [s.fd(f"{field}.off") for s in segs], offsets)
        if got != bounds.nbytes or (len(ids) and (bounds[:, 1] < bounds[:, 0]).any()):
            raise GalleryMismatchError(f"gallery tier {self.path}: {field} truncated (rebuild it)")
        texts = [bytearray(b - a) for a, b in bounds.tolist()]
        got = gather(texts, [s.fd(f"{field}.txt") for s in segs], bounds[:, 0].tolist())
        if got != sum(map(len, texts)):
            raise GalleryMismatchError(f"gallery tier {self.path}: {field} truncated (rebuild it)")
        return [t.decode("utf-8") for t in texts]

    def _check(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.rows):
            raise GalleryMismatchError(f"gallery tier {self.path}: ids outside 0..{self.rows - 1}")
        return ids

    def _segment_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._starts, ids, side="right") - 1

    def _rows(self, field: str, ids: np.ndarray, width: int, dtype: type) -> np.ndarray:
        """Rows `ids` of a (rows, width) field, each read from its segment's file."""
        ids = self._check(ids)
        size = width * np.dtype(dtype).itemsize
        out = np.empty((len(ids), width), dtype=dtype)
        segs = self._segment_of(ids)
        fd_of = [s.fd(FILES[field]) for s in self._segments]
        fds = [fd_of[s] for s in segs.tolist()]
        offsets = ((ids - self._starts[segs]) * size).tolist()
        got = gather(list(out.view(np.uint8).reshape(len(ids), size)), fds, offsets)
        if got != size * len(ids):
            raise GalleryMismatchError(f"gallery tier {self.path}: {field} truncated (rebuild it)")
        return out

    def dense_range(self, lo: int, hi: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first id, dense vectors) of the rows lo..hi-1, a memory map per segment part."""
        for seg in self._segments:
            a, b = max(lo, seg.lo), min(hi, seg.hi)
            if a < b:
                shape = (seg.hi - seg.lo, self.meta.embed_dim)
                mm = np.memmap(seg.path / FILES["dense"], np.float32, mode="r", shape=shape)
                yield a, mm[a - seg.lo : b - seg.lo]

    def drop_page_cache(self) -> None:
        """Ask the OS to evict this tier's on-disk files from the page cache (cold reads)."""
        for seg in self._segments:
            for name in (FILES["dense"], FILES["neighbours"], FILES["image"], "source.txt",
                         "source.off"):  # fmt: skip
                os.posix_fadvise(seg.fd(name), 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        for seg in self._segments:
            seg.close()
        self._ram.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    def __repr__(self) -> str:
        return (f"LocalTier({self.meta.gallery!r}, {self.meta.modality!r}, rows={self.rows}, "
                f"generation={self.generation})")  # fmt: skip


def gather(buffers: Sequence[Buffer], fds: Sequence[int], offsets: Sequence[int]) -> int:
    """Fill each buffer from its file at its offset; the bytes read in all.

    What the page cache holds is copied at once (preadv with RWF_NOWAIT: no thread, no wait).
    The rest is asked of the disk together (WILLNEED queues each read without waiting for it)
    and then read in order, so a cold batch waits about one disk latency, not one per row.
    The data passes through the page cache, never mapped into this process."""
    done, missed = 0, []
    for buf, fd, offset in zip(buffers, fds, offsets, strict=True):
        n = 0
        if NOWAIT:
            try:
                n = os.preadv(fd, [buf], offset, NOWAIT)
            except OSError as e:  # not cached (EAGAIN), or a file system without RWF_NOWAIT
                if e.errno not in (errno.EAGAIN, errno.EOPNOTSUPP):
                    raise
        if n == len(buf):
            done += n
        else:
            missed.append((buf, fd, offset))
    if WILLNEED is not None and len(missed) > 1:
        for buf, fd, offset in missed:
            os.posix_fadvise(fd, offset, len(buf), WILLNEED)
    return done + sum(os.preadv(fd, [buf], offset) for buf, fd, offset in missed)


# -- reading and checking a tier's manifest ----------------------------------------------------


def _stamp(path: Path) -> tuple:
    try:
        st = os.stat(path / "tier.json")
    except OSError:
        return ()
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read_info(path: Path) -> dict:
    try:
        info = read_json(Path(path) / "tier.json")
    except (OSError, ValueError, RecursionError):
        raise GalleryMismatchError(
            f"gallery tier {path}: missing or unreadable tier.json"
        ) from None
    if info.get("format") != TIER_FORMAT:
        raise GalleryMismatchError(f"gallery tier {path}: written by another version")
    return info


def read_tier(path: Path) -> LocalTier:
    """A tier from its folder alone (no Milvus): for tools that inspect or benchmark it."""
    info = read_info(path)
    return LocalTier(Path(path), GalleryMeta.model_validate(info["gallery"]), info)


def fresh_info(path: Path, meta: GalleryMeta) -> dict | None:
    """The tier's manifest when it exists and was built for this gallery, else None."""
    try:
        info = read_info(path)
        # Parsed, not compared as written: a field added since the tier was built takes its
        # default on both sides, so an upgrade does not rebuild every tier.
        built_for = GalleryMeta.model_validate(info.get("gallery"))
    except (GalleryMismatchError, ValidationError):
        return None
    return info if built_for == meta else None
