"""The reference pool: fixed items of each modality that the re-ranking statistics are taken
against, stored with the gallery.

MEET's complementarity score asks how highly a candidate ranks the query among its own nearest
items of the query's modality. The paper takes those neighbours from the evaluated split itself;
a gallery that grows cannot: adding one caption would change every image's statistics, and an
image-only gallery has no captions at all. So each item's statistics are its top-k similarities
to a **pool** of the other modality, fixed when the gallery is made (by default a sample of the
checkpoint's training captions and images, or a pool the user names), and stored in the
collection `{gallery}_pool` (id, modality, dense; ids of images first, then of captions; the
counts and where the pool came from in the collection's description). Adding an item then
costs one pass over the pool and never touches another item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from meet_milvus import milvus_arrays
from meet_milvus.errors import GalleryMismatchError, ParameterError
from meet_milvus.gallery_layout import MODALITIES, Modality, side_collections

if TYPE_CHECKING:
    from pymilvus import MilvusClient

# Items of each modality kept in a pool (a seeded sample of larger sets). Chosen on the demo's
# dev split (benchmarks/bench_pool_stats.py --pool-sizes): re-ranking gained most over the
# cascade with 1,000 (README "Your photo collection"); it also keeps an add's pass cheap.
POOL_MAX = 1_000
FETCH_ROWS = 4096


def neighbour_stats(items: np.ndarray, others: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Each item's k highest similarities to `others` (both l2-normalised), descending; width
    k even when `others` has fewer items (the missing ones as -1, below any similarity)."""
    out = np.full((len(items), max(1, k)), -1.0, dtype=np.float32)
    kk = max(0, min(k, len(others)))
    if kk == 0 or not len(items):
        return out
    others = np.ascontiguousarray(others, dtype=np.float32)
    for s in range(0, len(items), chunk):
        sims = items[s : s + chunk].astype(np.float32) @ others.T
        if kk < sims.shape[1]:
            sims = np.partition(sims, sims.shape[1] - kk, axis=1)[:, -kk:]
        top = sims
        out[s : s + chunk, :kk] = -np.sort(-top, axis=1)
    return out


def other(modality: Modality) -> Modality:
    return "text" if modality == "image" else "image"


@dataclass(frozen=True)
class Pool:
    """Dense vectors of each modality (l2-normalised) and where they came from."""

    vectors: dict[str, np.ndarray]
    source: str

    def stats(self, modality: Modality, dense: np.ndarray, k: int) -> np.ndarray:
        """Re-ranking statistics of items of `modality`: top-k similarities to the pool's
        items of the other modality."""
        return neighbour_stats(dense, self.vectors[other(modality)], k)

    @classmethod
    def sample(
        cls, vectors: dict[str, np.ndarray], source: str, size: int = POOL_MAX, seed: int = 0
    ) -> Pool:
        """A pool of at most `size` items of each modality (a seeded sample)."""
        rng = np.random.default_rng(seed)
        kept = {}
        for m in MODALITIES:
            v = np.asarray(vectors.get(m, np.zeros((0, 1))), dtype=np.float32)
            if len(v) > size:
                v = v[np.sort(rng.choice(len(v), size, replace=False))]
            kept[m] = v
        if not any(len(v) for v in kept.values()):
            raise ParameterError(f"reference pool '{source}': holds no items")
        return cls(kept, source)


def pool_name(gallery: str) -> str:
    return side_collections(gallery)[1]


def write_pool(client: MilvusClient, gallery: str, pool: Pool) -> None:
    """Store a gallery's pool (once: a gallery keeps its pool, or its statistics would mix)."""
    from pymilvus import DataType, MilvusClient

    name = pool_name(gallery)
    if client.has_collection(name):
        client.drop_collection(name)  # an earlier write that did not finish
    dim = max(v.shape[1] for v in pool.vectors.values() if len(v))
    counts = {m: len(pool.vectors[m]) for m in MODALITIES}
    s = MilvusClient.create_schema(
        auto_id=False, enable_dynamic_field=False,
        description=json.dumps({"counts": counts, "source": pool.source}),
    )  # fmt: skip
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
    client.create_collection(name, schema=s, consistency_level="Bounded")
    params = client.prepare_index_params()
    params.add_index("dense", index_type="FLAT", metric_type="IP")
    client.create_index(name, params)
    client.load_collection(name)
    start = 0
    for m in MODALITIES:
        v = pool.vectors[m]
        for lo in range(0, len(v), FETCH_ROWS):
            part = v[lo : lo + FETCH_ROWS]
            client.insert(name, [{"id": start + lo + i, "dense": row} for i, row in
                                 enumerate(part)])  # fmt: skip
        start += len(v)
    client.flush(name)


def read_pool(client: MilvusClient, gallery: str) -> Pool | None:
    """The gallery's pool, or None when it has none (a gallery loaded with split statistics)."""
    name = pool_name(gallery)
    if not client.has_collection(name):
        return None
    try:
        info = json.loads(client.describe_collection(name).get("description", ""))
        counts = {m: int(info["counts"][m]) for m in MODALITIES}
    except (ValueError, KeyError, TypeError):
        raise GalleryMismatchError(f"Milvus collection {name}: not a meet-milvus pool") from None
    client.load_collection(name)
    vectors, start = {}, 0
    for m in MODALITIES:
        parts = [np.zeros((0, 1), np.float32)]
        for lo in range(start, start + counts[m], FETCH_ROWS):
            hi = min(start + counts[m], lo + FETCH_ROWS)
            got = milvus_arrays.rows_in_range(client, name, lo, hi, ["dense"])["dense"]
            parts.append(np.asarray(got, np.float32))
        vectors[m] = np.concatenate(parts[1:]) if counts[m] else parts[0]
        start += counts[m]
    return Pool(vectors, str(info.get("source", "")))
