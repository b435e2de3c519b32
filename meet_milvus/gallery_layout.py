"""How a gallery lives in Milvus: collection names, schemas, indexes and the stored metadata.

A gallery (`--collection coco`) holds two modalities, `image` and `text`. Each item of a
modality has one primary key (its position in the source split) and these fields:

    hash        BINARY_VECTOR(H)    packed sign bits of the hash head   BIN_IVF_FLAT, HAMMING
    head        FLOAT_VECTOR(H)     hash-head outputs (tanh)            IVF_PQ m=M nbits=K, IP
    codes       ARRAY<INT16>(M)     MEET's own PQ codes of `head`       (client-side ADC)
    dense       FLOAT_VECTOR(D)     l2-normalised embedding             HNSW, IP
    source      VARCHAR             image path or caption text
    external_id VARCHAR             the item's name outside Milvus
    digest      VARCHAR             the item's content hash (`meet-milvus index`: re-encode a
                                    changed file); a data split's rows: a hash of the source
    image       INT64               the image an item shows (captions: their image's id; -1: none)
    neighbours  ARRAY<FLOAT>(k)     the item's top-k similarities to the other modality,
                                    descending (the complementarity re-ranker's statistics)

Milvus 2.3 allows one vector field per collection, so the `split` layout gives each stage its
own collection sharing the primary key (`coco_image_hash`, `coco_image_pq`, `coco_image_dense`,
with the scalars beside `dense`); Milvus 2.4+ takes all fields in one collection per modality
(`multi` layout: `coco_image`). Every collection's description holds the gallery's metadata
(model fingerprint, code parameters, source, index family) as JSON; how the gallery changed
since (items added and deleted, its generation) is in its change log (meet_milvus.gallery_log).
Item ids are given out in order and never reused while in use: `rows` below is the number a
load wrote, not the number a gallery holds now.

Index family (`GalleryMeta.indexes`), by what the server accepts: `ivf` (BIN_IVF_FLAT on
`hash`, IVF_PQ on `head`, HNSW on `dense`; galleries made before HNSW have FLAT there) on a
Milvus server; `flat` (BIN_FLAT, FLAT: exact) on Milvus Lite, a local `.db` file, whose local
mode refuses the IVF indexes ("local mode only support BIN_FLAT").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from meet_milvus import milvus_arrays
from meet_milvus.errors import (
    GalleryMismatchError,
    GalleryNotFoundError,
    ParameterError,
    ServerUnavailableError,
)

if TYPE_CHECKING:
    from pymilvus import CollectionSchema, MilvusClient

T = TypeVar("T")
Modality = Literal["image", "text"]
LayoutKind = Literal["split", "multi"]
IndexFamily = Literal["ivf", "flat"]
DenseIndex = Literal["HNSW", "FLAT"]
# The dense field's HNSW on a Milvus server: the server-side ANN (cascade.MilvusAnn). It keeps
# the vectors, so its hits come with exact scores, and a search filtered to a few ids scores
# them all exactly (the exact stage). M and efConstruction as the hnswlib rows of
# `python -m benchmarks.bench_cascade` (README, "The server-side mode").
DENSE_HNSW = {"M": 16, "efConstruction": 100}
# A search filtered to a few ids scores them by brute force, exactly, only while they are a
# small share of the items (knowhere leaves the graph when 93% are filtered out). Measured by
# hand on 5,000 and 20,000 synthetic 768-d items (benchmarks/synthetic.py): survivors of 5% and
# 6% came back exact, of 20% not.
HNSW_EXACT_SHARE = 0.05
# What `meet_milvus.server.server_version` reports for Milvus Lite, which answers no version
# request; it is Milvus 2.4+ inside (one collection takes several vector fields).
MILVUS_LITE = "milvus-lite"
MODALITIES: tuple[Modality, Modality] = ("image", "text")
# 2: the `digest` field (galleries of format 1 are read, not changed); 3: no column all empty
# (a data split's digests: a hash of the source; the log's adds: `deleted` [-1]), which the
# embedded server's mmap needs.
FORMAT_VERSION = 3
SOURCE_MAX = 4096  # bytes of `source` / `external_id` kept (VARCHAR max_length)
DIGEST_MAX = 64
# A gallery's collections are named `{gallery}_{suffix}`, and Milvus takes collection names of
# letters, digits and '_' (the first not a digit) up to 255 characters.
NAME_MAX = 255 - len("_image_dense")  # the longest suffix (test_gallery_layout.py checks)
_NAME = re.compile(rf"[A-Za-z_][A-Za-z0-9_]{{0,{NAME_MAX - 1}}}")

# field -> stage collection suffix in the split layout
_SPLIT = {
    "hash": "hash",
    "head": "pq",
    "codes": "pq",
    "dense": "dense",
    "source": "dense",
    "external_id": "dense",
    "digest": "dense",
    "image": "dense",
    "neighbours": "dense",
}


class GalleryMeta(BaseModel):
    """What every collection of a gallery records about how it was built."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    meet_milvus: int = FORMAT_VERSION
    gallery: str
    modality: Modality
    layout: LayoutKind
    fingerprint: str
    H: int
    M: int
    K: int
    embed_dim: int
    neighbours: int  # k of the stored reverse-neighbour statistics
    rows: int  # items of this modality the load wrote (0 for a gallery `index` started)
    nlist: int  # IVF lists of the hash and PQ indexes
    indexes: IndexFamily = "ivf"  # `flat` on Milvus Lite; galleries from before it: ivf
    # The dense field's index on an `ivf` server: FLAT spares a gallery searched only through
    # its local tier the HNSW build (minutes of the server's CPU at 300k items).
    dense_index: DenseIndex = "HNSW"
    source: str  # data set and split, e.g. "demo/test"
    checkpoint: str = ""  # where the model was when loaded (a default for the searcher)


def check_gallery_name(name: str) -> str:
    """A gallery name Milvus accepts as a collection-name prefix."""
    if not isinstance(name, str):
        raise ParameterError(f"collection name: expected text, got {type(name).__name__}")
    if not _NAME.fullmatch(name):
        shown = name if len(name) <= 60 else name[:60] + "..."
        raise ParameterError(
            f"collection name {shown!r}: use letters, digits and underscores (at most "
            f"{NAME_MAX}), starting with a letter or an underscore"
        )
    return name


def default_nlist(rows: int) -> int:
    """IVF lists: ~4·sqrt(n), at least 1, so a list holds a few hundred items at scale."""
    return int(min(65536, max(1, round(4 * math.sqrt(max(rows, 1))))))


@dataclass(frozen=True)
class Layout:
    """Which collection holds which field of a gallery's modality."""

    kind: LayoutKind

    @classmethod
    def for_version(cls, version: str) -> Layout:
        """The layout a server supports: `multi` from Milvus 2.4 on (Milvus Lite included),
        `split` on 2.3."""
        if version == MILVUS_LITE:
            return cls("multi")
        found = re.search(r"(\d+)\.(\d+)", version or "")
        if not found:
            raise ServerUnavailableError(
                f"Milvus server version '{version}': cannot tell which it is"
            )
        major, minor = int(found.group(1)), int(found.group(2))
        if (major, minor) < (2, 3):
            raise ServerUnavailableError(f"Milvus {version}: meet-milvus needs Milvus 2.3 or newer")
        return cls("split" if (major, minor) < (2, 4) else "multi")

    def collection(self, gallery: str, modality: Modality, field: str) -> str:
        if self.kind == "multi":
            return f"{gallery}_{modality}"
        return f"{gallery}_{modality}_{_SPLIT[field]}"

    def collections(self, gallery: str, modality: Modality) -> list[str]:
        """The collections of one modality, the one holding `dense` (the main one) first."""
        names = [self.collection(gallery, modality, f) for f in ("dense", "hash", "head")]
        return list(dict.fromkeys(names))

    def fields(
        self, gallery: str, modality: Modality, collection: str, version: int = FORMAT_VERSION
    ) -> list[str]:
        """The non-key fields that `collection` holds (in a gallery of format `version`)."""
        return [
            f for f in _SPLIT
            if self.collection(gallery, modality, f) == collection
            and (f != "digest" or version >= 2)
        ]  # fmt: skip


def schema(meta: GalleryMeta, fields: list[str]) -> CollectionSchema:
    """The schema of a collection holding `fields` (plus the primary key `id`)."""
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(
        auto_id=False, enable_dynamic_field=False, description=meta.model_dump_json()
    )
    s.add_field("id", DataType.INT64, is_primary=True)
    for name in fields:
        if name == "hash":
            s.add_field(name, DataType.BINARY_VECTOR, dim=meta.H)
        elif name == "head":
            s.add_field(name, DataType.FLOAT_VECTOR, dim=meta.H)
        elif name == "dense":
            s.add_field(name, DataType.FLOAT_VECTOR, dim=meta.embed_dim)
        elif name == "codes":
            s.add_field(name, DataType.ARRAY, element_type=DataType.INT16, max_capacity=meta.M)
        elif name == "neighbours":
            cap = max(1, meta.neighbours)
            s.add_field(name, DataType.ARRAY, element_type=DataType.FLOAT, max_capacity=cap)
        elif name in ("source", "external_id"):
            s.add_field(name, DataType.VARCHAR, max_length=SOURCE_MAX)
        elif name == "digest":
            s.add_field(name, DataType.VARCHAR, max_length=DIGEST_MAX)
        elif name == "image":
            s.add_field(name, DataType.INT64)
    return s


def index_family(version: str) -> IndexFamily:
    """The vector indexes a server of `version` accepts: Milvus Lite only the exact ones."""
    return "flat" if version == MILVUS_LITE else "ivf"


def index_params(client: MilvusClient, meta: GalleryMeta, fields: list[str]):
    """The vector indexes of a collection holding `fields` (`meta.indexes` says which)."""
    params = client.prepare_index_params()
    ivf = meta.indexes == "ivf"
    if "hash" in fields:
        params.add_index(
            "hash", index_type="BIN_IVF_FLAT" if ivf else "BIN_FLAT", metric_type="HAMMING",
            params={"nlist": meta.nlist} if ivf else {},
        )  # fmt: skip
    if "head" in fields:
        pq = {"nlist": meta.nlist, "m": meta.M, "nbits": meta.K}
        params.add_index(
            "head", index_type="IVF_PQ" if ivf else "FLAT", metric_type="IP",
            params=pq if ivf else {},
        )  # fmt: skip
    if "dense" in fields:
        _add_dense_index(params, meta.dense_index if ivf else "FLAT")
    return params


def _add_dense_index(params, index_type: str) -> None:
    params.add_index("dense", index_type=index_type, metric_type="IP",
                     params=DENSE_HNSW if index_type == "HNSW" else {})  # fmt: skip


def check_dense_index(index_type: str) -> DenseIndex:
    """"HNSW" or "FLAT" (any case), else a one-line error."""
    found = str(index_type).upper()
    if found not in ("HNSW", "FLAT"):
        raise ParameterError(f"dense index {index_type!r}: use HNSW or FLAT")
    return found  # type: ignore[return-value]


def rebuild_dense_index(client: MilvusClient, gallery: Gallery, index_type: str) -> None:
    """Give a gallery's dense field another index ("HNSW" or "FLAT"): a gallery made before
    the dense field had HNSW gets the server-side ANN (`filter="ann"`, tier server). Its
    collections are released meanwhile (searches of them wait for the next load)."""
    index_type = check_dense_index(index_type)
    if index_type == "HNSW" and any(m.indexes == "flat" for m in gallery.meta.values()):
        raise ParameterError(
            f"collection '{gallery.name}': its server (Milvus Lite) takes exact indexes only"
        )
    for modality in MODALITIES:
        name = gallery.collection(modality, "dense")
        client.release_collection(name)
        gallery.loaded.discard(name)
        gallery.dense_indexes.pop(modality, None)
        client.drop_index(name, "dense")
        params = client.prepare_index_params()
        _add_dense_index(params, index_type)
        client.create_index(name, params)


def create(client: MilvusClient, meta: GalleryMeta) -> list[str]:
    """Create the missing collections of one modality with their indexes; all its names.

    Collections are not loaded here: `load_all` loads many at once (each load is a wait on the
    server).
    """
    layout = Layout(meta.layout)
    names = layout.collections(meta.gallery, meta.modality)
    for name in names:
        fields = layout.fields(meta.gallery, meta.modality, name, meta.meet_milvus)
        if not client.has_collection(name):
            client.create_collection(
                name, schema=schema(meta, fields), consistency_level="Bounded"
            )
        # A crash between the two calls leaves a collection without its index: finish it.
        if not client.list_indexes(name):
            client.create_index(name, index_params(client, meta, fields))
    return names


def each(fn: Callable[[str], T], names: list[str]) -> dict[str, T]:
    """`fn(name)` for every collection at once (Milvus calls mostly wait)."""
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
        return dict(zip(names, pool.map(fn, names), strict=True))


def load_all(client: MilvusClient, names: list[str]) -> None:
    """Load collections into memory (query nodes), concurrently."""
    each(client.load_collection, names)


def read_meta(client: MilvusClient, collection: str) -> GalleryMeta:
    """The metadata a collection's description holds; MeetError if it holds none."""
    description = client.describe_collection(collection).get("description", "")
    try:
        return GalleryMeta.model_validate(json.loads(description))
    except (ValueError, ValidationError):
        raise GalleryMismatchError(
            f"Milvus collection '{collection}' was not created by meet-milvus load "
            f"(no gallery metadata in its description)"
        ) from None


@dataclass(frozen=True)
class Gallery:
    """A loaded gallery: its layout and each modality's metadata."""

    name: str
    layout: Layout
    meta: dict[str, GalleryMeta]
    # Collections this process has loaded: a searcher that reads the local tier needs none of
    # them in Milvus memory, so each is loaded only when a stage first queries it.
    loaded: set[str] = field(default_factory=set, compare=False, repr=False)
    dense_indexes: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def collection(self, modality: Modality, field: str) -> str:
        return self.layout.collection(self.name, modality, field)

    def ensure_loaded(self, client: MilvusClient, name: str) -> None:
        """Load a collection into Milvus memory before the first query of it (idempotent)."""
        if name not in self.loaded:
            milvus_arrays.call(client.load_collection, name)  # a refusal: one line
            self.loaded.add(name)

    def collections(self) -> list[str]:
        return [n for m in MODALITIES for n in self.layout.collections(self.name, m)]

    def dense_index(self, client: MilvusClient, modality: Modality) -> str:
        """The index type of a modality's dense field ("FLAT": galleries from before HNSW, and
        Milvus Lite), asked once per process."""
        if modality not in self.dense_indexes:
            name = self.collection(modality, "dense")
            found = milvus_arrays.call(client.describe_index, name, "dense") or {}
            self.dense_indexes[modality] = str(found.get("index_type", "FLAT")).upper()
        return self.dense_indexes[modality]

    def release(self, client: MilvusClient) -> None:
        """Release every collection of the gallery from Milvus memory (the data stays)."""
        each(client.release_collection, self.collections())
        self.loaded.clear()

    def check_rows(
        self, client: MilvusClient, live: dict[str, int] | None = None
    ) -> None:
        """Refuse a gallery whose collections do not hold the rows its metadata records (a
        server crash before a flush loses rows; an interrupted repair may store some twice).
        Milvus's row statistics count every stored row and need no collection loaded.

        `live`: the items each modality holds after adds and deletes (its change log): Milvus
        counts a deleted row until compaction, so then the statistics must reach `live`.
        """
        for modality in MODALITIES:
            expected = self.meta[modality].rows if live is None else live[modality]
            for name in self.layout.collections(self.name, modality):
                held = int(client.get_collection_stats(name)["row_count"])
                if held != expected if live is None else held < expected:
                    raise GalleryMismatchError(
                        f"collection '{self.name}': {name} holds {held} rows, the gallery "
                        f"has {expected} (a server crash during a load?); run `meet-milvus "
                        f"load --collection {self.name}` to repair it"
                    )

    @property
    def fingerprint(self) -> str:
        return self.meta["image"].fingerprint

    def rows(self, modality: Modality) -> int:
        return self.meta[modality].rows


def find_layout(client: MilvusClient, gallery: str) -> Layout | None:
    """The layout a gallery was loaded with, or None when no collection of it exists."""
    for kind in ("split", "multi"):
        layout = Layout(kind)
        if client.has_collection(layout.collection(gallery, "image", "dense")):
            return layout
    return None


def list_galleries(client: MilvusClient) -> list[str]:
    """Names of the galleries in the database (those with a main image collection)."""
    found = set()
    for name in client.list_collections():
        for suffix in ("_image_dense", "_image"):
            if name.endswith(suffix):
                found.add(name[: -len(suffix)])
    return sorted(g for g in found if find_layout(client, g))


def open_gallery(
    client: MilvusClient, gallery: str, fingerprint: str | None = None, mapped: bool = False
) -> Gallery:
    """A loaded gallery, checked: every collection present, same model. Collections are loaded
    into Milvus memory on first use (`Gallery.ensure_loaded`), not here.

    With `fingerprint`, a gallery built by another model is refused (its codes mean nothing
    to this model's queries); with `mapped` (an embedded server that maps segments), one that
    server cannot load.
    """
    check_gallery_name(gallery)
    layout = find_layout(client, gallery)
    if layout is None:
        known = ", ".join(list_galleries(client)) or "none"
        raise GalleryNotFoundError(
            f"collection '{gallery}': not found in Milvus (loaded galleries: {known}); "
            f"run `meet-milvus load --collection {gallery}`"
        )
    meta: dict[str, GalleryMeta] = {}
    for modality in MODALITIES:
        for name in layout.collections(gallery, modality):
            if not client.has_collection(name):
                raise GalleryNotFoundError(
                    f"collection '{gallery}': part '{name}' is missing (an interrupted load?); "
                    f"run `meet-milvus load --collection {gallery}` to finish it"
                )
            found = read_meta(client, name)
            if modality in meta and found.fingerprint != meta[modality].fingerprint:
                raise GalleryMismatchError(
                    f"collection '{gallery}': '{name}' holds another model's codes"
                )
            meta[modality] = found
    if fingerprint is not None and meta["image"].fingerprint != fingerprint:
        raise GalleryMismatchError(
            f"collection '{gallery}' was loaded with model {meta['image'].fingerprint[:12]}, "
            f"not with this checkpoint's model {fingerprint[:12]}; search with that checkpoint "
            f"or rebuild: `meet-milvus load --collection {gallery} --drop`"
        )
    # Before format 3 a gallery's digests and its log's `deleted` arrays could be all empty,
    # which Milvus 2.3's mmap cannot map: loading it would be retried for ever.
    if mapped and any(m.meet_milvus < 3 for m in meta.values()):
        raise GalleryMismatchError(
            f"collection '{gallery}': made by an earlier meet-milvus, which the embedded "
            f"server's mmap (embedded_mmap) cannot load; rebuild it (`meet-milvus load "
            f"--collection {gallery} --drop`, or index its files into a new collection), or "
            f"turn embedded_mmap off"
        )
    return Gallery(gallery, layout, meta)


def side_collections(gallery: str) -> list[str]:
    """The gallery's collections beside its modalities': the change log, the reference pool."""
    return [f"{gallery}_log", f"{gallery}_pool"]


def drop(client: MilvusClient, gallery: str) -> list[str]:
    """Drop every collection of a gallery (both layouts, log and pool); the names dropped."""
    names = [n for kind in ("split", "multi") for m in MODALITIES
             for n in Layout(kind).collections(gallery, m)]  # fmt: skip
    dropped = []
    for name in [*names, *side_collections(gallery)]:
        if client.has_collection(name):
            client.drop_collection(name)
            dropped.append(name)
    return dropped
