"""Put a trained MEET model's gallery into Milvus: codes, embeddings, sources and the
re-ranker's per-item statistics (layout in meet_milvus.gallery_layout).

Idempotent and resumable without upserts: an item's primary key is its position in the source
split, and a load first reads which keys each collection already holds and inserts only the
rest. Whatever state it starts from (an interrupted load, a server that crashed with rows in
growing segments, a collection without its index), it ends durable: flushed, and every
collection verified to hold each key 0..n-1 exactly once, with its index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pymilvus.exceptions import MilvusException

from meet_milvus import gallery_layout as cols
from meet_milvus import milvus_arrays
from meet_milvus.config import Settings
from meet_milvus.errors import (
    CheckpointError,
    GalleryMismatchError,
    ParameterError,
    ServerUnavailableError,
)
from meet_milvus.gallery_layout import MODALITIES, GalleryMeta, Layout, Modality
from meet_milvus.inputs import check_count, check_name
from meet_milvus.model.checkpoint import load_checkpoint
from meet_milvus.model.meet_model import Encoded, MeetModel
from meet_milvus.progress import progress_bar
from meet_milvus.server import connect, describe, server_version
from meet_milvus.tier import Chunk, open_tier, tier_dir, write_tier
from meet_milvus_loaders.precomp import Split, load_split

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

DEFAULT_NEIGHBOURS = 32  # k of the stored reverse-neighbour statistics
MAX_NEIGHBOURS = 4096  # Milvus caps an ARRAY field's max_capacity at 4096
MAX_BATCH_ROWS = 4096


@dataclass
class Items:
    """One modality's rows, in primary-key order."""

    encoded: Encoded
    source: list[str]
    external_id: list[str]
    image: np.ndarray  # (n,) int64: the image each item shows
    neighbours: np.ndarray  # (n, k) float32: top-k similarities to the other modality, desc

    def __len__(self) -> int:
        return len(self.encoded.dense)

    def row(self, i: int, fields: list[str]) -> dict:
        e = self.encoded
        values = {
            "hash": lambda: e.hash_codes[i].tobytes(),
            "head": lambda: e.head[i],
            "codes": lambda: e.pq_codes[i].astype(np.int64).tolist(),
            "dense": lambda: e.dense[i],
            "source": lambda: _clip(self.source[i]),
            "external_id": lambda: _clip(self.external_id[i]),
            "image": lambda: int(self.image[i]),
            "neighbours": lambda: self.neighbours[i].tolist(),
        }
        return {"id": i, **{f: values[f]() for f in fields}}


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


def neighbour_stats(items: np.ndarray, others: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Each item's k highest similarities to `others` (both l2-normalised), descending."""
    k = max(1, min(k, len(others)))
    out = np.empty((len(items), k), dtype=np.float32)
    others = np.ascontiguousarray(others, dtype=np.float32)
    for s in range(0, len(items), chunk):
        sims = items[s : s + chunk].astype(np.float32) @ others.T
        top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:] if k < sims.shape[1] else sims
        out[s : s + chunk] = -np.sort(-top, axis=1)
    return out


def split_items(
    split: Split, images: Encoded, texts: Encoded, neighbours: int = DEFAULT_NEIGHBOURS
) -> dict[Modality, Items]:
    """The rows of both modalities of a data split, with their re-ranking statistics."""
    where = f"{split.name}/{split.split}"
    paths = split.image_paths
    image_names = [Path(p).name for p in paths] if paths else None
    return {
        "image": Items(
            encoded=images,
            source=list(paths) if paths else [f"{where} image {i}" for i in range(split.n_images)],
            external_id=image_names or [f"{where}/image/{i}" for i in range(split.n_images)],
            image=np.arange(split.n_images, dtype=np.int64),
            neighbours=neighbour_stats(images.dense, texts.dense, neighbours),
        ),
        "text": Items(
            encoded=texts,
            source=list(split.captions),
            external_id=[f"{where}/caption/{c}" for c in range(split.n_captions)],
            image=np.asarray(split.caption_image, dtype=np.int64),
            neighbours=neighbour_stats(texts.dense, images.dense, neighbours),
        ),
    }


def write_gallery(
    client: MilvusClient,
    gallery: str,
    items: dict[Modality, Items],
    origin: Origin,
    *,
    drop: bool = False,
    layout: Layout | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = log.info,
) -> LoadReport:
    """Create the gallery's collections (or find them, finishing a half-made one), insert the
    rows they lack, rebuild one holding rows a load never writes, flush, verify.

    Refuses to add to a gallery built from another model or source (`drop` rebuilds it).
    """
    cols.check_name(gallery)
    start = time.perf_counter()
    if drop:
        for name in cols.drop(client, gallery):
            log.info("dropped %s", name)
    version = server_version(client)
    layout = cols.find_layout(client, gallery) or layout or Layout.for_version(version)
    report = LoadReport(gallery, layout.kind)
    indexes = cols.index_family(version)
    metas = {m: _meta(gallery, m, layout, items[m], origin, indexes) for m in MODALITIES}
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
    report.seconds = time.perf_counter() - start
    return report


def _meta(
    gallery: str,
    modality: Modality,
    layout: Layout,
    rows: Items,
    origin: Origin,
    indexes: cols.IndexFamily,
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
        nlist=cols.default_nlist(len(rows)),
        source=origin.source,
        checkpoint=origin.checkpoint,
        indexes=indexes,
    )


def _check_same(found: GalleryMeta, meta: GalleryMeta, name: str, gallery: str) -> None:
    keys = ("fingerprint", "source", "rows", "neighbours", "H", "M", "K", "embed_dim", "layout")
    differ = [k for k in keys if getattr(found, k) != getattr(meta, k)]
    if differ:
        what = ", ".join(f"{k} {getattr(found, k)!r} != {getattr(meta, k)!r}" for k in differ)
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


def _chunks(items: Items, step: int = 65536) -> Iterator[Chunk]:
    """An `Items`' rows in consecutive chunks, as the local tier takes them."""
    e = items.encoded
    for lo in range(0, len(items), step):
        hi = min(len(items), lo + step)
        yield {
            "hash": e.hash_codes[lo:hi], "codes": e.pq_codes[lo:hi], "dense": e.dense[lo:hi],
            "neighbours": items.neighbours[lo:hi], "image": items.image[lo:hi],
            "source": [_clip(t) for t in items.source[lo:hi]],
            "external_id": [_clip(t) for t in items.external_id[lo:hi]],
        }  # fmt: skip


def _row_bytes(items: Items) -> int:
    e = items.encoded
    size = e.hash_codes.shape[1] + 4 * (e.head.shape[1] + e.dense.shape[1])
    size += 8 * e.pq_codes.shape[1] + 4 * items.neighbours.shape[1]
    longest = max((len(s.encode()) for s in items.source), default=0)
    return size + longest + 2 * cols.SOURCE_MAX // 8 + 64


def _clip(text: str) -> str:
    """At most SOURCE_MAX bytes of UTF-8 (Milvus VARCHAR limit), cut at a character boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= cols.SOURCE_MAX:
        return text
    return raw[: cols.SOURCE_MAX].decode("utf-8", errors="ignore")


# ---------------------------------------------------------------------------------------------
# The command's job: a data split and a checkpoint into a gallery


def resolve_checkpoint(settings: Settings, checkpoint: str | Path | None, data: str) -> Path:
    """--checkpoint, else the settings' checkpoint, else {data_dir}/checkpoints/{data}."""
    path = checkpoint or settings.checkpoint or settings.data_dir / "checkpoints" / data
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {path}: no such directory; train one (`meet-train`) or pass --checkpoint"
        )
    return path


def encode_split(
    model: MeetModel, split: Split, cache_dir: Path | None, batch_size: int, progress: bool
) -> tuple[Encoded, Encoded]:
    """Both modalities of a split through the model, cached on disk by model and split."""
    check_count(batch_size, "batch_size")  # refused with a warm cache too
    cache = None
    if cache_dir is not None:
        tag = f"{model.config.fingerprint[:16]}-{split.name}-{split.split}"
        cache = Path(cache_dir) / "encoded" / f"{tag}-{split.n_images}-{split.n_captions}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                parts = [
                    Encoded(*(z[f"{m}_{f}"] for f in ("dense", "head", "hash", "pq")))
                    for m in MODALITIES
                ]
            return parts[0], parts[1]
    images = model.encode_images(split.images, batch_size=batch_size, progress=progress)
    texts = model.encode_texts(split.captions, batch_size=batch_size, progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for m, e in zip(MODALITIES, (images, texts), strict=True):
            arrays.update(
                {f"{m}_dense": e.dense, f"{m}_head": e.head}
                | {f"{m}_hash": e.hash_codes, f"{m}_pq": e.pq_codes}
            )
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cache)
    return images, texts


def load(
    settings: Settings,
    collection: str,
    checkpoint: str | Path | None = None,
    data: str | None = None,
    split: str = "test",
    drop: bool = False,
    neighbours: int = DEFAULT_NEIGHBOURS,
    batch_size: int = 128,
    progress: bool = True,
    echo: Callable[[str], None] = log.info,
) -> LoadReport:
    """`meet-milvus load`: encode a data split with a checkpoint and write it to Milvus."""
    cols.check_name(collection)
    if not 1 <= neighbours <= MAX_NEIGHBOURS:
        raise ParameterError(
            f"--neighbours {neighbours}: must be between 1 and {MAX_NEIGHBOURS} (Milvus's "
            "longest array)"
        )
    data = check_name(data or collection, "data set")  # it names folders under the data dir
    path = resolve_checkpoint(settings, checkpoint, data)
    source = load_split(settings.data_dir, data, split)
    client = connect(settings)  # before the slow encoding: a dead server fails fast
    model = load_checkpoint(path, settings.device, settings.cache_dir)
    echo(
        f"encoding {data}/{split}: {source.n_images} images, {source.n_captions} captions "
        f"with model {model.config.fingerprint[:12]} ({path})"
    )
    long = sum(n > model.max_text_len for n in model.count_tokens(source.captions))
    if long:
        echo(f"note: {long} captions exceed {model.max_text_len} tokens and are truncated")
    images, texts = encode_split(model, source, settings.cache_dir, batch_size, progress)
    items = split_items(source, images, texts, neighbours)
    origin = Origin.of(model, f"{data}/{split}", str(path.resolve()))
    try:
        report = write_gallery(
            client, collection, items, origin, drop=drop, progress=progress, echo=echo
        )
    except MilvusException as e:  # the server failed or went away mid-load
        raise ServerUnavailableError(
            f"{describe(settings)}: {e.message}; rerun the load to finish it (it resumes: "
            f"nothing is doubled or lost)"
        ) from None
    build_tiers(client, collection, settings, echo, items)
    return report


def build_tiers(
    client: MilvusClient,
    collection: str,
    settings: Settings,
    echo: Callable[[str], None],
    items: dict[Modality, Items] | None = None,
) -> None:
    """The searcher's local tiers of a loaded gallery (both modalities): from `items`, the rows
    just inserted, or else fetched back from Milvus; then release the gallery's collections
    from Milvus memory: the client-side search reads the tiers, and a server-side search loads
    what it queries on first use."""
    gallery = cols.open_gallery(client, collection)
    for modality in MODALITIES:
        if items is None:
            open_tier(client, gallery, modality, settings, echo)
        else:
            path = tier_dir(settings, collection, modality)
            write_tier(path, gallery.meta[modality], _chunks(items[modality]), echo)
    gallery.release(client)
    echo(f"gallery '{collection}': local tiers ready; its collections released from Milvus memory")
