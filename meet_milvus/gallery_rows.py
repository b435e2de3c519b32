"""Writing a gallery's rows into Milvus: a whole data split (`write_gallery`, the `load`), rows
added to it (`append_items`), rows deleted (`delete_items`), and the repair of a change a killed
writer left half done (`recover`). The read side is meet_milvus.gallery_layout (names, schemas,
metadata) and meet_milvus.reader; the change log is meet_milvus.gallery_log.

A load is idempotent and resumable without upserts: an item's key is its position in the source
split, and a load first reads which keys each collection already holds and inserts only the
rest. Whatever state it starts from (an interrupted load, a server that crashed with rows in
growing segments, a collection without its index), it ends durable: flushed, and every
collection verified to hold each key 0..n-1 exactly once, with its index.

An add or a delete is one logged change (meet_milvus.gallery_log): logged `pending`, written to
every collection of the modality (the dense collection first, the hash collection last, so a
first stage never finds an id the later stages cannot read), flushed, logged `done`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from meet_milvus import gallery_layout as cols
from meet_milvus import milvus_arrays
from meet_milvus.errors import GalleryMismatchError
from meet_milvus.gallery_layout import (
    MODALITIES,
    DenseIndex,
    Gallery,
    GalleryMeta,
    Layout,
    Modality,
)
from meet_milvus.gallery_log import (
    MAX_DELETED,
    Change,
    GalleryState,
    create_log,
    drop_change,
    has_log,
    log_change,
    log_name,
    read_changes,
)
from meet_milvus.model.meet_model import Encoded, MeetModel
from meet_milvus.pool import Pool, read_pool, write_pool
from meet_milvus.progress import progress_bar
from meet_milvus.server import server_version
from meet_milvus.tier import Chunk

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

MAX_BATCH_ROWS = 4096
GROWN_ROWS = 65536


def source_digest(source: str) -> str:
    """The digest of a row from a data split: a hash of its source (image path or caption)."""
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class Items:
    """One modality's rows, in primary-key order."""

    encoded: Encoded
    source: list[str]
    external_id: list[str]
    image: np.ndarray  # (n,) int64: the image each item shows (-1: none)
    neighbours: np.ndarray  # (n, k) float32: top-k similarities to the other modality, desc
    digest: list[str] | None = None  # content hashes (None: a data split's, of each source)

    def __post_init__(self) -> None:
        # Never empty: Milvus 2.3's mmap cannot map a segment whose VARCHAR column holds
        # only empty strings (the load fails and is retried for ever).
        if self.digest is None:
            self.digest = [source_digest(s) for s in self.source]

    def __len__(self) -> int:
        return len(self.encoded.dense)

    def row(self, i: int, fields: list[str], first: int = 0) -> dict:
        """Item i as a Milvus row of `fields`, its key `first + i`."""
        e = self.encoded
        values = {
            "hash": lambda: e.hash_codes[i].tobytes(),
            "head": lambda: e.head[i],
            "codes": lambda: e.pq_codes[i].astype(np.int64).tolist(),
            "dense": lambda: e.dense[i],
            "source": lambda: clip(self.source[i]),
            "external_id": lambda: clip(self.external_id[i]),
            "image": lambda: int(self.image[i]),
            "neighbours": lambda: self.neighbours[i].tolist(),
            "digest": lambda: self.digest[i],
        }
        return {"id": first + i, **{f: values[f]() for f in fields}}

    def chunks(self, step: int = 65536) -> Iterator[Chunk]:
        """The rows in consecutive chunks, as the local tier takes them."""
        e = self.encoded
        for lo in range(0, len(self), step):
            hi = min(len(self), lo + step)
            yield {
                "hash": e.hash_codes[lo:hi], "codes": e.pq_codes[lo:hi], "dense": e.dense[lo:hi],
                "neighbours": self.neighbours[lo:hi], "image": self.image[lo:hi],
                "source": [clip(t) for t in self.source[lo:hi]],
                "external_id": [clip(t) for t in self.external_id[lo:hi]],
                "digest": list(self.digest[lo:hi]),
            }  # fmt: skip


@dataclass(frozen=True)
class Origin:
    """Where a gallery's rows come from, recorded in each of its collections: the model (its
    fingerprint and code sizes), the data split, and where the checkpoint was."""

    fingerprint: str
    H: int
    M: int
    K: int
    source: str  # data set and split, e.g. "demo/test"
    checkpoint: str = ""

    @classmethod
    def of(cls, model: MeetModel, source: str, checkpoint: str = "") -> Origin:
        c = model.config
        return cls(c.fingerprint, c.H, c.M, c.K, source, checkpoint)


@dataclass
class LoadReport:
    """What a load did: per collection the rows found before, inserted, and finally held."""

    gallery: str
    layout: str
    before: dict[str, int] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)
    final: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"gallery '{self.gallery}' ({self.layout} layout), {self.seconds:.1f} s"]
        for name, rows in self.final.items():
            out.append(
                f"  {name}: {rows} rows (source {self.expected[name]}; had {self.before[name]}, "
                f"inserted {self.inserted[name]}) ok"
            )
        return out


def write_gallery(
    client: MilvusClient,
    gallery: str,
    items: dict[Modality, Items],
    origin: Origin,
    *,
    drop: bool = False,
    layout: Layout | None = None,
    pool: Pool | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = log.info,
    dense_index: DenseIndex = "HNSW",
) -> LoadReport:
    """Create the gallery's collections (or find them, finishing a half-made one), insert the
    rows they lack, rebuild one holding rows a load never writes, flush, verify; then store
    its reference `pool` (when its statistics came from one) and start its change log.

    Refuses to add to a gallery built from another model or source, or changed by `index`
    or `delete` since its load (`drop` rebuilds it).
    """
    cols.check_gallery_name(gallery)
    start = time.perf_counter()
    if drop:
        for name in cols.drop(client, gallery):
            log.info("dropped %s", name)
    if has_log(client, gallery):
        changed = [c for c in read_changes(client, gallery) if c.generation > len(MODALITIES)]
        if changed:
            raise GalleryMismatchError(
                f"collection '{gallery}': changed by `meet-milvus index`/`delete` since its load "
                f"({len(changed)} changes); rebuild it with `meet-milvus load --collection "
                f"{gallery} --drop`"
            )
    version = server_version(client)
    layout = cols.find_layout(client, gallery) or layout or Layout.for_version(version)
    report = LoadReport(gallery, layout.kind)
    indexes = cols.index_family(version)
    metas = {m: _meta(gallery, m, layout, items[m], origin, indexes, dense_index=dense_index)
             for m in MODALITIES}  # fmt: skip
    for modality, meta in metas.items():  # check everything before writing anything
        for name in layout.collections(gallery, modality):
            if client.has_collection(name):
                _check_same(cols.read_meta(client, name), meta, name, gallery)
    names = [n for meta in metas.values() for n in cols.create(client, meta)]
    cols.load_all(client, names)
    owner = {n: m for m in MODALITIES for n in layout.collections(gallery, m)}
    report.expected = {name: len(items[m]) for name, m in owner.items()}
    # What each collection holds (Strong: every write, also an earlier load's): the rows it
    # lacks go in; one holding rows a load never writes (a doubled or foreign key) is rebuilt.
    found = cols.each(lambda n: _holdings(client, n, report.expected[n]), names)
    for name, (ids, problem) in found.items():
        report.before[name] = len(ids) if problem is None else 0
        if problem is not None:
            echo(f"{name}: {problem}; rebuilding it")
            ids = _recreate(client, name, metas[owner[name]])
        report.inserted[name] = 0
        missing = np.setdiff1d(np.arange(report.expected[name]), ids, assume_unique=True)
        _insert(client, layout, gallery, owner[name], items[owner[name]], name, missing, report,
                progress)  # fmt: skip
    # Durable whatever state the load started from: seal every segment (rows of an earlier,
    # interrupted load live in growing segments until flushed, and a server crash loses
    # them), then check each collection holds exactly the keys 0..n-1, once, and its index.
    cols.each(client.flush, names)
    for name in names:
        ids, problem = _holdings(client, name, report.expected[name])
        if problem is None and len(ids) != report.expected[name]:
            problem = f"holds {len(ids)} of its {report.expected[name]} rows after the load"
        if problem is None and not client.list_indexes(name):
            problem = "has no index after the load"
        if problem is not None:
            raise GalleryMismatchError(
                f"Milvus collection {name}: {problem}; rerun the load, or rebuild it with "
                f"`meet-milvus load --collection {gallery} --drop`"
            )
        report.final[name] = len(ids)
    if pool is not None and read_pool(client, gallery) is None:
        write_pool(client, gallery, pool)
    create_log(client, gallery, {m: len(items[m]) for m in MODALITIES})
    report.seconds = time.perf_counter() - start
    return report


def _meta(
    gallery: str,
    modality: Modality,
    layout: Layout,
    rows: Items,
    origin: Origin,
    indexes: cols.IndexFamily,
    nlist_rows: int = 0,
    dense_index: DenseIndex = "HNSW",
) -> GalleryMeta:
    return GalleryMeta(
        gallery=gallery,
        modality=modality,
        layout=layout.kind,
        fingerprint=origin.fingerprint,
        H=origin.H,
        M=origin.M,
        K=origin.K,
        embed_dim=int(rows.encoded.dense.shape[1]),
        neighbours=int(rows.neighbours.shape[1]),
        rows=len(rows),
        nlist=cols.default_nlist(max(len(rows), nlist_rows)),
        source=origin.source,
        checkpoint=origin.checkpoint,
        indexes=indexes,
        dense_index=cols.check_dense_index(dense_index),
    )


def _check_same(found: GalleryMeta, meta: GalleryMeta, name: str, gallery: str) -> None:
    def record(m: GalleryMeta) -> dict:
        keys = ("fingerprint", "source", "rows", "neighbours", "H", "M", "K", "embed_dim",
                "layout")  # fmt: skip
        # Format 3 only fills digests a format-2 load left empty: a load may finish either.
        return {**{k: getattr(m, k) for k in keys}, "format": min(m.meet_milvus, 2)}

    have, want = record(found), record(meta)
    differ = [k for k in want if have[k] != want[k]]
    if differ:
        what = ", ".join(f"{k} {have[k]!r} != {want[k]!r}" for k in differ)
        raise GalleryMismatchError(
            f"collection '{gallery}': {name} holds another load ({what}); "
            f"rebuild it with `meet-milvus load --collection {gallery} --drop`"
        )


def _holdings(client: MilvusClient, name: str, n: int) -> tuple[np.ndarray, str | None]:
    """The distinct keys 0..n-1 a collection holds, and what else is wrong with it (None if
    nothing): keys beyond 0..n-1, or rows stored twice (a count above the distinct keys)."""
    total = milvus_arrays.count(client, name)
    if total == 0:
        return np.zeros(0, np.int64), None
    ids = milvus_arrays.ids_in_range(client, name, 0, n)
    unique = np.unique(ids)
    outside = milvus_arrays.count(client, name, f"id < 0 or id >= {n}")
    if outside:
        return unique, f"{outside} rows have keys outside 0..{n - 1}"
    if len(ids) != len(unique) or total != len(unique):
        return unique, f"{total} rows for {len(unique)} distinct keys (rows stored twice)"
    return unique, None


def _recreate(client: MilvusClient, name: str, meta: GalleryMeta) -> np.ndarray:
    """Drop one collection of a gallery and create it empty again (index, loaded)."""
    client.drop_collection(name)
    cols.create(client, meta)
    client.load_collection(name)
    return np.zeros(0, np.int64)


def _insert(
    client: MilvusClient,
    layout: Layout,
    gallery: str,
    modality: Modality,
    items: Items,
    name: str,
    missing: np.ndarray,
    report: LoadReport,
    progress: bool,
) -> None:
    """Insert the rows `missing` (primary keys) of one collection, in batches in key order."""
    if not len(missing):
        return
    fields = layout.fields(gallery, modality, name)
    batch = max(1, min(MAX_BATCH_ROWS, milvus_arrays.RPC_BYTES // _row_bytes(items)))
    n = len(items)
    bar = progress_bar(total=n, initial=n - len(missing), desc=f"load {name}", unit="row",
                       enabled=progress)  # fmt: skip
    with bar:
        for lo in range(0, len(missing), batch):
            keys = missing[lo : lo + batch].tolist()
            client.insert(name, [items.row(i, fields) for i in keys])
            report.inserted[name] += len(keys)
            bar.update(len(keys))


def _row_bytes(items: Items) -> int:
    e = items.encoded
    size = e.hash_codes.shape[1] + 4 * (e.head.shape[1] + e.dense.shape[1])
    size += 8 * e.pq_codes.shape[1] + 4 * items.neighbours.shape[1]
    longest = max((len(s.encode()) for s in items.source), default=0)
    return size + longest + 2 * cols.SOURCE_MAX // 8 + 64


def clip(text: str) -> str:
    """At most SOURCE_MAX bytes of UTF-8 (Milvus VARCHAR limit), cut at a character boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= cols.SOURCE_MAX:
        return text
    return raw[: cols.SOURCE_MAX].decode("utf-8", errors="ignore")


def append_items(
    client: MilvusClient, gallery: Gallery, modality: Modality, items: Items, lo: int,
    generation: int, progress: bool = False,
) -> Change:
    """Insert `items` as ids lo.. of a modality, as one logged change (`generation`).

    Rows a killed writer left at ids >= lo without a durable log entry (Milvus seals growing
    segments on its own) are deleted first, so a key is never stored twice; the pending entry
    is then flushed with the rows, in one round, and the done entry after them.
    """
    change = Change(generation, modality, lo, lo + len(items), state="pending")
    names = gallery.layout.collections(gallery.name, modality)  # the dense one first
    for name in names:
        client.delete(name, filter=f"id >= {lo}")
    log_change(client, gallery.name, change, flush=False)
    meta = gallery.meta[modality]
    batch = max(1, min(MAX_BATCH_ROWS, milvus_arrays.RPC_BYTES // _row_bytes(items)))
    bar = progress_bar(total=len(items) * len(names), desc=f"add {gallery.name} {modality}s",
                       unit="row", enabled=progress)  # fmt: skip
    with bar:
        for name in names:
            fields = gallery.layout.fields(gallery.name, modality, name, meta.meet_milvus)
            for a in range(0, len(items), batch):
                keys = range(a, min(len(items), a + batch))
                client.insert(name, [items.row(i, fields, lo) for i in keys])
                bar.update(len(keys))
    cols.each(client.flush, [*names, log_name(gallery.name)])
    done = replace(change, state="done")
    log_change(client, gallery.name, done)
    return done


def delete_items(
    client: MilvusClient, gallery: Gallery, modality: Modality, ids: np.ndarray, generation: int
) -> list[Change]:
    """Delete ids of a modality, as logged changes of at most MAX_DELETED ids each
    (generations `generation`, `generation` + 1, ...)."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    changes = []
    for n, lo in enumerate(range(0, len(ids), MAX_DELETED)):
        change = Change(generation + n, modality, deleted=ids[lo : lo + MAX_DELETED],
                        state="pending")  # fmt: skip
        log_change(client, gallery.name, change)
        _delete(client, gallery, modality, f"id in [{','.join(map(str, change.deleted))}]")
        changes.append(replace(change, state="done"))
        log_change(client, gallery.name, changes[-1])
    return changes


def _delete(client: MilvusClient, gallery: Gallery, modality: Modality, expr: str) -> None:
    names = gallery.layout.collections(gallery.name, modality)[::-1]  # the hash one first
    for name in names:
        client.delete(name, filter=expr)
    cols.each(client.flush, names)


def recover(client: MilvusClient, gallery: Gallery, state: GalleryState) -> list[str]:
    """Finish what a killed writer left `pending`: an add is rolled back (its rows deleted,
    its change dropped, its ids free again), a delete is done again and logged done. What was
    done, one line each."""
    done = []
    for change in state.pending:
        if change.added:
            _delete(client, gallery, change.modality, f"id >= {change.lo} and id < {change.hi}")
            drop_change(client, gallery.name, change.generation)
            done.append(f"rolled back an interrupted add of {change.added} "
                        f"{change.modality}s (change {change.generation})")  # fmt: skip
        if len(change.deleted):
            ids = ",".join(map(str, change.deleted))
            _delete(client, gallery, change.modality, f"id in [{ids}]")
            log_change(client, gallery.name, replace(change, state="done"))
            done.append(f"finished an interrupted delete of {len(change.deleted)} "
                        f"{change.modality}s (change {change.generation})")  # fmt: skip
    state.pending.clear()
    return done


def create_gallery(
    client: MilvusClient, gallery: str, origin: Origin, embed_dim: int, neighbours: int,
    pool: Pool | None, dense_index: DenseIndex = "HNSW",
) -> Gallery:
    """An empty gallery (both modalities, its log and pool), for `meet-milvus index`."""
    cols.check_gallery_name(gallery)
    version = server_version(client)
    layout = Layout.for_version(version)
    empty = Items(Encoded(np.zeros((0, embed_dim), np.float32), np.zeros((0, origin.H)),
                          np.zeros((0, origin.H // 8), np.uint8), np.zeros((0, origin.M))),
                  [], [], np.zeros(0, np.int64), np.zeros((0, neighbours), np.float32))  # fmt: skip
    # IVF lists for a gallery that grows: as for GROWN_ROWS items (Milvus builds them per
    # sealed segment; the server-side stages probe every list unless told otherwise).
    family = cols.index_family(version)
    metas = {m: _meta(gallery, m, layout, empty, origin, family, GROWN_ROWS, dense_index)
             for m in MODALITIES}  # fmt: skip
    names = [n for meta in metas.values() for n in cols.create(client, meta)]
    cols.load_all(client, names)
    if pool is not None and read_pool(client, gallery) is None:
        write_pool(client, gallery, pool)
    create_log(client, gallery, {})
    return Gallery(gallery, layout, metas)
