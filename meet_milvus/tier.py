"""The client's local tier of a gallery: what the cascade reads, derived from Milvus.

Milvus stays the source of truth; a `LocalTier` is a copy of one gallery modality under the data
dir, written by the loader from the rows it inserted or built from the Milvus collections
(`open_tier`), and rebuilt when it no longer matches them (another model, row count or source).
It keeps in RAM only the compact codes the filter stages scan, and reads the rest from disk per
survivor, so the dense collection need not sit in Milvus memory while the gallery is searched:

    in RAM   hash codes (H/8 B an item), MEET PQ codes (M B), the ANN index (an IVF over
             RaBitQ codes of a PCA-reduced dense vector, ~48 B): each loaded when a stage asks
    on disk  dense vectors (float32), re-ranking statistics, sources, external ids, image ids:
             read with pread, so they live in the OS page cache, not in the process

Files sit in `{data_dir}/tiers/{server}/{gallery}/{modality}/`, written to a temporary folder and
renamed into place, so a crash never leaves a half-built tier behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from meet_milvus import milvus_arrays
from meet_milvus.config import Settings
from meet_milvus.errors import GalleryMismatchError
from meet_milvus.gallery_layout import Gallery, GalleryMeta, Modality, load_all

if TYPE_CHECKING:
    from pymilvus import MilvusClient

TIER_FORMAT = 1
# Rows fetched from Milvus per request while building (a 1024-d float32 row is 4 KB).
FETCH_ROWS = 8192
ANN_PCA_DIM = 256  # dims kept before RaBitQ: 32 B of sign bits an item
ANN_TRAIN_MAX = 200_000  # items that train the PCA and the IVF centroids
READ_THREADS = 8  # concurrent preads of one batch of rows (a cold disk serves them in parallel)
PARALLEL_READS = 64  # fewer rows than this are read in the calling thread
READ_POOL = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="meet-tier-read")


def ann_nlist(rows: int) -> int:
    """IVF lists of the ANN index: about 4·sqrt(n), so a list holds a few hundred items; at
    most rows / 39 so that k-means has enough points per centroid."""
    return int(max(1, min(round(4 * np.sqrt(rows)), rows // 39, 65536)))


def tier_dir(settings: Settings, gallery: str, modality: Modality) -> Path:
    """Where a gallery modality's tier lives: under the data dir, by the Milvus it comes from."""
    if settings.embedded:
        server = "embedded"
    else:
        where = f"{settings.milvus_uri}/{settings.milvus_db}"
        server = hashlib.sha1(where.encode()).hexdigest()[:12]
    return settings.data_dir / "tiers" / server / gallery / modality


class LocalTier:
    """One gallery modality's local tier (see the module docstring). Open it with `open_tier`."""

    def __init__(self, path: Path, meta: GalleryMeta, info: dict[str, Any]) -> None:
        self.path = Path(path)
        self.meta = meta
        self.info = info
        self._ram: dict[str, Any] = {}
        self._fds: dict[str, int] = {}

    @property
    def rows(self) -> int:
        return self.meta.rows

    # -- in RAM: the filter stages' codes ------------------------------------------------------

    def codes(self, field: str) -> np.ndarray:
        """`hash` (rows, H/8) or `codes` (rows, M) as uint8, read into RAM once."""
        if field not in self._ram:
            width = self.meta.H // 8 if field == "hash" else self.meta.M
            self._ram[field] = np.fromfile(self.path / f"{field}.u8", np.uint8).reshape(-1, width)
        return self._ram[field]

    def ann(self) -> faiss.Index:
        """The IVF-RaBitQ index over the PCA-reduced dense vectors, read into RAM once."""
        if "ann" not in self._ram:
            self._ram["ann"] = faiss.read_index(str(self.path / "ann.faiss"))
        return self._ram["ann"]

    def ann_search(self, dense: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k by the ANN index, scanning `nprobe` lists: ids (nq, k), -1 where short, and
        approximate inner products (unit vectors: 1 - |q - x|^2 / 2)."""
        index = self.ann()
        params = faiss.IVFSearchParameters(nprobe=int(nprobe))
        if isinstance(index, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
        x = np.ascontiguousarray(dense, dtype=np.float32)
        dist, ids = index.search(x, int(k), params=params)
        return ids, np.where(ids >= 0, 1.0 - dist / 2, -np.inf).astype(np.float32)

    # -- on disk: read per item ----------------------------------------------------------------

    def dense(self, ids: np.ndarray) -> np.ndarray:
        """Dense vectors (len(ids), D) float32 of gallery ids (any order, repeats allowed)."""
        return self._rows("dense.f32", ids, self.meta.embed_dim, np.float32)

    def neighbours(self, ids: np.ndarray) -> np.ndarray:
        """Re-ranking statistics (len(ids), k) float32: each item's top-k similarities."""
        return self._rows("neighbours.f32", ids, self.meta.neighbours, np.float32)

    def image(self, ids: np.ndarray) -> np.ndarray:
        """The image each item shows (its own id for images), int64."""
        return self._rows("image.i64", ids, 1, np.int64).reshape(-1)

    def text(self, field: str, ids: np.ndarray) -> list[str]:
        """`source` or `external_id` of each id."""
        offsets = self._rows(f"{field}.off", ids, 2, np.int64, stride=1)
        fd = self._fd(f"{field}.txt")
        return [os.pread(fd, int(b - a), int(a)).decode("utf-8") for a, b in offsets]

    def _rows(
        self, name: str, ids: np.ndarray, width: int, dtype: type, stride: int | None = None
    ) -> np.ndarray:
        """Rows `ids` of a (rows, width) file; `stride` (in items) between consecutive rows
        when it differs from `width` (the offsets file: row i is entries i and i+1)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.rows):
            raise GalleryMismatchError(f"gallery tier {self.path}: ids outside 0..{self.rows - 1}")
        itemsize = np.dtype(dtype).itemsize
        size, step = width * itemsize, (stride or width) * itemsize
        fd = self._fd(name)
        out = np.empty((len(ids), width), dtype=dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        jobs = [(view[r * size : (r + 1) * size], int(i) * step) for r, i in enumerate(ids)]

        def read(part: list[tuple[memoryview, int]]) -> int:
            # preadv fills the array in place (no bytes objects) and releases the GIL; the
            # data passes through the page cache, never mapped into this process.
            return sum(os.preadv(fd, [buf], offset) for buf, offset in part)

        if len(jobs) >= PARALLEL_READS:  # a cold disk serves concurrent reads in parallel
            got = sum(READ_POOL.map(read, [jobs[t::READ_THREADS] for t in range(READ_THREADS)]))
        else:
            got = read(jobs)
        if got != size * len(ids):
            raise GalleryMismatchError(f"gallery tier {self.path / name}: truncated (rebuild it)")
        return out

    def _fd(self, name: str) -> int:
        if name not in self._fds:
            self._fds[name] = os.open(self.path / name, os.O_RDONLY)
        return self._fds[name]

    def drop_page_cache(self) -> None:
        """Ask the OS to evict this tier's on-disk files from the page cache (cold reads)."""
        for name in ("dense.f32", "neighbours.f32", "image.i64", "source.txt", "source.off"):
            fd = self._fd(name)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._ram.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to release
            pass

    def __repr__(self) -> str:
        return f"LocalTier({self.meta.gallery!r}, {self.meta.modality!r}, rows={self.rows})"


def read_tier(path: Path) -> LocalTier:
    """A tier from its folder alone (no Milvus): for tools that inspect or benchmark it."""
    try:
        info = json.loads((Path(path) / "tier.json").read_text())
    except (OSError, ValueError):
        raise GalleryMismatchError(
            f"gallery tier {path}: missing or unreadable tier.json"
        ) from None
    return LocalTier(Path(path), GalleryMeta.model_validate(info["gallery"]), info)


def _fresh(path: Path, meta: GalleryMeta) -> dict | None:
    """The tier's info when it exists and matches the gallery's metadata, else None."""
    try:
        info = json.loads((path / "tier.json").read_text())
    except (OSError, ValueError):
        return None
    if info.get("format") != TIER_FORMAT or info.get("gallery") != meta.model_dump():
        return None
    return info


Chunk = dict[str, Any]  # field -> values of consecutive rows (arrays; lists of strings)
TIER_FIELDS = ("hash", "codes", "dense", "neighbours", "image", "source", "external_id")


def open_tier(
    client: MilvusClient,
    gallery: Gallery,
    modality: Modality,
    settings: Settings,
    echo: Callable[[str], None] | None = None,
) -> LocalTier:
    """A gallery modality's local tier, built from Milvus first when missing or stale."""
    meta = gallery.meta[modality]
    path = tier_dir(settings, gallery.name, modality)
    info = _fresh(path, meta)
    if info is None:
        names = sorted({gallery.collection(modality, f) for f in ("hash", "codes", "dense")})
        load_all(client, names)  # queries need loaded collections; loading is idempotent
        gallery.loaded.update(names)
        info = write_tier(path, meta, milvus_chunks(client, gallery, modality), echo)
    return LocalTier(path, meta, info)


def milvus_chunks(client: MilvusClient, gallery: Gallery, modality: Modality) -> Iterator[Chunk]:
    """Every row of a gallery modality, fetched from Milvus by id range (whole ranges only:
    `rows_in_range` refuses a gallery that lost or doubled rows)."""
    meta = gallery.meta[modality]
    by_collection: dict[str, list[str]] = {}
    for field in TIER_FIELDS:
        by_collection.setdefault(gallery.collection(modality, field), []).append(field)
    row_bytes = 4 * (meta.embed_dim + meta.neighbours) + 2 * 512
    step = max(1, min(FETCH_ROWS, milvus_arrays.RPC_BYTES // row_bytes))
    for lo in range(0, meta.rows, step):
        hi = min(meta.rows, lo + step)
        chunk: Chunk = {}
        for name, fields in by_collection.items():
            chunk.update(milvus_arrays.rows_in_range(client, name, lo, hi, fields))
        yield chunk


def write_tier(
    path: Path, meta: GalleryMeta, chunks: Iterable[Chunk], echo: Callable[[str], None] | None
) -> dict:
    """A new tier at `path` from a gallery modality's rows, in id order, and its ANN index;
    written beside `path` and renamed into place. Returns the tier's info."""
    start = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    try:
        rows = _write_rows(tmp, meta, chunks)
        if rows != meta.rows:
            raise GalleryMismatchError(
                f"gallery '{meta.gallery}' {meta.modality}s: {rows} rows written to its local "
                f"tier, the gallery records {meta.rows}; reload it"
            )
        info = {"format": TIER_FORMAT, "gallery": meta.model_dump()}
        info["ann"] = build_ann(tmp, meta)
        info["build_s"] = round(time.perf_counter() - start, 2)
        (tmp / "tier.json").write_text(json.dumps(info, indent=1))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if echo:
        echo(f"local tier of '{meta.gallery}' {meta.modality}s: {meta.rows} rows, "
             f"{info['build_s']} s")  # fmt: skip
    return info


def _write_rows(out: Path, meta: GalleryMeta, chunks: Iterable[Chunk]) -> int:
    """Append every chunk's fields to the tier's files; the rows written."""
    names = {"hash": "hash.u8", "codes": "codes.u8", "dense": "dense.f32",
             "neighbours": "neighbours.f32", "image": "image.i64", "source": "source.txt",
             "external_id": "external_id.txt"}  # fmt: skip
    widths = {"hash": meta.H // 8, "codes": meta.M, "dense": meta.embed_dim,
              "neighbours": meta.neighbours}  # fmt: skip
    dtypes = {"hash": np.uint8, "codes": np.uint8, "image": np.int64}
    offsets = {"source": [0], "external_id": [0]}
    rows = 0
    files = {f: open(out / name, "wb") for f, name in names.items()}
    try:
        for chunk in chunks:
            for field, fh in files.items():
                values = chunk[field]
                if field in offsets:
                    for text in values:
                        raw = text.encode("utf-8")
                        fh.write(raw)
                        offsets[field].append(offsets[field][-1] + len(raw))
                    continue
                array = np.ascontiguousarray(values, dtype=dtypes.get(field, np.float32))
                array.reshape(len(array), -1 if field == "image" else widths[field]).tofile(fh)
            rows += len(chunk["image"])
    finally:
        for fh in files.values():
            fh.close()
    for field, offs in offsets.items():
        np.asarray(offs, dtype=np.int64).tofile(out / f"{field}.off")
    return rows


def build_ann(path: Path, meta: GalleryMeta, seed: int = 0) -> dict:
    """Train and fill the ANN index (PCA -> IVF -> RaBitQ codes) from the tier's dense file."""
    rows, dim = meta.rows, meta.embed_dim
    dense = np.memmap(path / "dense.f32", np.float32, mode="r", shape=(rows, dim))
    # PCA only where it shrinks the codes and has the rows to fit it.
    pca = ANN_PCA_DIM if dim > ANN_PCA_DIM and rows >= 2 * dim else 0
    nlist = ann_nlist(rows)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(rows, min(rows, ANN_TRAIN_MAX), replace=False))
    sample = np.ascontiguousarray(dense[take])
    # L2 on unit vectors ranks as inner product does, and k-means under L2 gives balanced lists
    # (IVF under inner product favours long centroids).
    factory = f"{f'PCAR{pca},' if pca else ''}IVF{nlist},RaBitQ"
    index = faiss.index_factory(dim, factory, faiss.METRIC_L2)
    faiss.extract_index_ivf(index).cp.seed = seed
    index.train(sample)
    for lo in range(0, rows, 65536):
        index.add(np.ascontiguousarray(dense[lo : lo + 65536]))
    del dense
    faiss.write_index(index, str(path / "ann.faiss"))
    return {"pca": pca, "nlist": nlist, "code": "RaBitQ", "trained_on": len(take)}
