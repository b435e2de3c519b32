"""Writing a gallery modality's local tier (its format, and reading it: meet_milvus.tier).

A tier is written by the loader (`write_tier`, whole) and by the gallery writer and the readers
catching up with Milvus (`append_rows`, `mark_deleted`, `set_generation`), each under the tier's
writer lock (`locked`). Every file goes under a temporary name and is renamed into place;
`tier.json` last, so a reader sees the old tier or the new one, never a half-written segment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import faiss
import numpy as np

from meet_milvus.errors import GalleryMismatchError
from meet_milvus.files import replace_dir, replacing
from meet_milvus.gallery_layout import GalleryMeta
from meet_milvus.tier import (
    DTYPES,
    FILES,
    TEXT_FIELDS,
    TIER_FORMAT,
    Chunk,
    LocalTier,
    field_widths,
    read_info,
    read_tier,
)

ANN_PCA_DIM = 256  # dims kept before RaBitQ: 32 B of sign bits an item
ANN_TRAIN_MAX = 200_000  # items that train the PCA and the IVF centroids
OLD_FILES_S = 300  # unreferenced files older than this are removed (a reader may still open one)


def ann_nlist(rows: int) -> int:
    """IVF lists of the ANN index: about 4·sqrt(n), so a list holds a few hundred items; at
    most rows / 39 so that k-means has enough points per centroid."""
    return int(max(1, min(round(4 * np.sqrt(rows)), rows // 39, 65536)))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """The tier's writer lock (a file beside it): one writer at a time, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_json(path: Path, info: dict) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(info, indent=1))


def write_tier(
    path: Path,
    meta: GalleryMeta,
    chunks: Iterable[Chunk],
    echo: Callable[[str], None] | None,
    generation: int = 0,
    deleted: np.ndarray | None = None,
    rows: int | None = None,
) -> dict:
    """A new tier at `path` from a gallery modality's rows 0.. in id order (one segment; ids
    in `deleted` are tombstones), and its ANN index; written beside `path` and renamed into
    place. `rows`: how many the chunks must hold (the gallery's count). Returns the manifest."""
    expected = rows
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        rows = _write_segment(tmp / _segment_name(0), meta, chunks)
        if expected is not None and rows != expected:
            raise GalleryMismatchError(
                f"gallery '{meta.gallery}' {meta.modality}s: {rows} rows written to its local "
                f"tier, the gallery records {expected}; reload it"
            )
        segments = [{"name": _segment_name(0), "lo": 0, "hi": rows}]
        if not rows:  # an empty gallery: no segment (the first add writes one from id 0)
            shutil.rmtree(tmp / _segment_name(0))
            segments = []
        info = {"format": TIER_FORMAT, "gallery": meta.model_dump(), "build": uuid.uuid4().hex,
                "generation": generation, "rows": rows, "deleted": None, "ann": None,
                "segments": segments}  # fmt: skip
        if deleted is not None and len(deleted):
            info["deleted"] = _write_deleted(tmp, np.asarray(deleted, np.int64), generation)
        info["ann"] = build_ann(LocalTier(tmp, meta, info), generation)
        info["build_s"] = round(time.perf_counter() - start, 2)
        _write_json(tmp / "tier.json", info)
        with locked(path):
            replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if echo:
        echo(f"local tier of '{meta.gallery}' {meta.modality}s: {rows} rows, {info['build_s']} s")
    return info


def _segment_name(lo: int) -> str:
    return f"seg-{lo:012d}"


def _write_segment(out: Path, meta: GalleryMeta, chunks: Iterable[Chunk]) -> int:
    """A segment folder from chunks of consecutive rows; the rows written."""
    out.mkdir(mode=0o700)
    widths = field_widths(meta)
    offsets = {f: [0] for f in TEXT_FIELDS}
    rows = 0
    files = {f: open(out / name, "wb") for f, name in FILES.items()}
    texts = {f: open(out / f"{f}.txt", "wb") for f in TEXT_FIELDS}
    try:
        for chunk in chunks:
            n = len(chunk["image"])
            for field, fh in files.items():
                array = np.ascontiguousarray(chunk[field], dtype=DTYPES.get(field, np.float32))
                if array.size != n * widths[field]:
                    raise GalleryMismatchError(
                        f"gallery '{meta.gallery}' {meta.modality}s: {field} of width "
                        f"{array.size // max(n, 1)}, the gallery records {widths[field]}"
                    )
                array.tofile(fh)
            for field, fh in texts.items():
                for text in chunk.get(field) or [""] * n:
                    raw = text.encode("utf-8")
                    fh.write(raw)
                    offsets[field].append(offsets[field][-1] + len(raw))
            rows += n
    finally:
        for fh in (*files.values(), *texts.values()):
            fh.close()
    for field, offs in offsets.items():
        np.asarray(offs, dtype=np.int64).tofile(out / f"{field}.off")
    return rows


def _write_deleted(path: Path, ids: np.ndarray, generation: int) -> dict:
    name = f"deleted-{generation:012d}.i64"
    with replacing(path / name) as tmp:
        np.unique(ids).astype(np.int64).tofile(tmp)
    return {"file": name, "count": int(len(np.unique(ids)))}


def append_rows(path: Path, lo: int, chunks: Iterable[Chunk], generation: int) -> int:
    """A new segment of rows lo.. to an existing tier, and its generation; the rows written.
    A segment already there (another process caught up first) is kept as it is."""
    with locked(path):
        info = read_info(path)
        meta = GalleryMeta.model_validate(info["gallery"])
        if lo < info["rows"]:
            return 0
        if lo != info["rows"]:
            raise GalleryMismatchError(
                f"gallery tier {path}: rows {info['rows']}..{lo - 1} missing before a new segment"
            )
        name = _segment_name(lo)
        tmp = path / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        rows = _write_segment(tmp, meta, chunks)
        if not rows:
            shutil.rmtree(tmp)
            return 0
        replace_dir(tmp, path / name)  # a folder there was left by a writer killed mid-rename
        info["segments"].append({"name": name, "lo": lo, "hi": lo + rows})
        info["rows"] = lo + rows
        info["generation"] = max(info["generation"], generation)
        _write_json(path / "tier.json", info)
    return rows


def mark_deleted(path: Path, ids: np.ndarray, generation: int) -> None:
    """Tombstones for `ids` (added to those already there) at `generation`."""
    with locked(path):
        info = read_info(path)
        old = info.get("deleted")
        before = np.fromfile(path / old["file"], np.int64) if old else np.zeros(0, np.int64)
        ids = np.concatenate([before, np.asarray(ids, np.int64)])
        if len(ids):
            info["deleted"] = _write_deleted(path, ids, generation)
        info["generation"] = max(info["generation"], generation)
        _write_json(path / "tier.json", info)
        _remove_old_files(path, info)


def set_generation(path: Path, generation: int) -> None:
    """Record that the tier reflects the gallery up to `generation` (a change that did not
    touch this modality)."""
    with locked(path):
        info = read_info(path)
        if generation > info["generation"]:
            info["generation"] = generation
            _write_json(path / "tier.json", info)


def build_ann(tier: LocalTier, generation: int, seed: int = 0) -> dict | None:
    """Train and fill the ANN index (PCA -> IVF -> RaBitQ codes) from the tier's live rows;
    its manifest entry (None for an empty tier)."""
    rows, dim = tier.rows, tier.meta.embed_dim
    dead = tier.dead()
    live = np.flatnonzero(~dead) if dead is not None else np.arange(rows)
    if not len(live):
        return None
    # PCA only where it shrinks the codes and has the rows to fit it.
    pca = ANN_PCA_DIM if dim > ANN_PCA_DIM and len(live) >= 2 * dim else 0
    nlist = ann_nlist(len(live))
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(live, min(len(live), ANN_TRAIN_MAX), replace=False))
    sample = tier.dense(take)
    # L2 on unit vectors ranks as inner product does, and k-means under L2 gives balanced lists
    # (IVF under inner product favours long centroids).
    factory = f"{f'PCAR{pca},' if pca else ''}IVF{nlist},RaBitQ"
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
    faiss.extract_index_ivf(index).cp.seed = seed
    index.train(sample)
    for lo, vectors in tier.dense_range(0, rows):
        for a in range(0, len(vectors), 65536):
            ids = np.arange(lo + a, lo + min(a + 65536, len(vectors)), dtype=np.int64)
            keep = ids if dead is None else ids[~dead[ids]]
            if len(keep):
                index.add_with_ids(np.ascontiguousarray(vectors[keep - lo]), keep)
    name = f"ann-{generation:012d}-{uuid.uuid4().hex[:8]}.faiss"
    with replacing(tier.path / name) as tmp:
        faiss.write_index(index, str(tmp))
    return {"file": name, "covers": rows, "trained_rows": int(len(live)), "pca": pca,
            "nlist": nlist, "code": "RaBitQ", "trained_on": int(len(take))}  # fmt: skip


def rebuild_ann(path: Path) -> dict | None:
    """Train the ANN index again over the tier's rows of now and swap it in (readers take it
    up on their next refresh; rows added meanwhile they add themselves)."""
    tier = read_tier(path)
    entry = build_ann(tier, tier.generation)
    with locked(path):
        info = read_info(path)
        if info.get("build") != tier.info.get("build"):  # rebuilt whole meanwhile
            with contextlib.suppress(OSError):
                (path / entry["file"]).unlink()
            return None
        info["ann"] = entry
        _write_json(path / "tier.json", info)
        _remove_old_files(path, info)
    tier.close()
    return entry


def _remove_old_files(path: Path, info: dict) -> None:
    """ANN and tombstone files the manifest no longer names, once no reader can be opening
    them any more (OLD_FILES_S after they were replaced)."""
    keep = {(info.get("ann") or {}).get("file"), (info.get("deleted") or {}).get("file")}
    now = time.time()
    for f in [*path.glob("ann-*.faiss"), *path.glob("deleted-*.i64")]:
        with contextlib.suppress(OSError):
            if f.name not in keep and now - f.stat().st_mtime > OLD_FILES_S:
                f.unlink()
