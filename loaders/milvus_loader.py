"""A data split into a gallery: encode it with a trained model, compute the re-ranking
statistics (against the gallery's reference pool, or the paper's protocol: the split itself),
and write it through meet_milvus.gallery_rows; then the gallery's local tiers.

The reference pool (meet_milvus.pool) defaults to a sample of the checkpoint's training split
(`training_pool`), so a gallery loaded from a split and one grown by `meet-milvus index` with
the same checkpoint score the same items alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pymilvus.exceptions import MilvusException

from meet_milvus import gallery_layout as cols
from meet_milvus.config import Settings
from meet_milvus.errors import (
    CheckpointError,
    DataSetError,
    ParameterError,
    ServerUnavailableError,
)
from meet_milvus.files import replacing
from meet_milvus.gallery_layout import MODALITIES, DenseIndex, Modality
from meet_milvus.gallery_log import gallery_state
from meet_milvus.gallery_rows import Items, LoadReport, Origin, write_gallery
from meet_milvus.inputs import check_count, check_data_name
from meet_milvus.model.checkpoint import load_checkpoint
from meet_milvus.model.meet_model import Encoded, MeetModel
from meet_milvus.pool import POOL_MAX, Pool, neighbour_stats, read_pool
from meet_milvus.reader import open_tier
from meet_milvus.server import connect, describe
from meet_milvus.tier import tier_dir
from meet_milvus.tier_write import write_tier
from meet_milvus.writer import DEFAULT_NEIGHBOURS  # k of the stored reverse-neighbour statistics
from meet_milvus_loaders.precomp import Split, load_split

if TYPE_CHECKING:
    from pymilvus import MilvusClient

log = logging.getLogger(__name__)

MAX_NEIGHBOURS = 4096  # Milvus caps an ARRAY field's max_capacity at 4096
Stats = Literal["pool", "split"]


def split_items(
    split: Split,
    images: Encoded,
    texts: Encoded,
    neighbours: int = DEFAULT_NEIGHBOURS,
    pool: Pool | None = None,
) -> dict[Modality, Items]:
    """The rows of both modalities of a data split, with their re-ranking statistics: against
    `pool`, or (None: the paper's protocol) against the split's other modality."""
    where = f"{split.name}/{split.split}"
    if pool is not None:
        stats = {"image": pool.stats("image", images.dense, neighbours),
                 "text": pool.stats("text", texts.dense, neighbours)}  # fmt: skip
    else:
        stats = {"image": neighbour_stats(images.dense, texts.dense, neighbours),
                 "text": neighbour_stats(texts.dense, images.dense, neighbours)}  # fmt: skip
    paths = split.image_paths
    image_names = [Path(p).name for p in paths] if paths else None
    return {
        "image": Items(
            encoded=images,
            source=list(paths) if paths else [f"{where} image {i}" for i in range(split.n_images)],
            external_id=image_names or [f"{where}/image/{i}" for i in range(split.n_images)],
            image=np.arange(split.n_images, dtype=np.int64),
            neighbours=stats["image"],
        ),
        "text": Items(
            encoded=texts,
            source=list(split.captions),
            external_id=[f"{where}/caption/{c}" for c in range(split.n_captions)],
            image=np.asarray(split.caption_image, dtype=np.int64),
            neighbours=stats["text"],
        ),
    }


# ---------------------------------------------------------------------------------------------
# The command's job: a data split and a checkpoint into a gallery


def check_neighbours(neighbours: int) -> int:
    """--neighbours: checked before anything slow runs."""
    if isinstance(neighbours, bool) or not isinstance(neighbours, int):
        raise ParameterError(f"--neighbours {neighbours!r}: must be a whole number")
    if not 1 <= neighbours <= MAX_NEIGHBOURS:
        raise ParameterError(
            f"--neighbours {neighbours}: must be between 1 and {MAX_NEIGHBOURS} (Milvus's "
            f"longest array)"
        )
    return neighbours


def training_pool(
    settings: Settings,
    model: MeetModel,
    spec: str | None = None,
    batch_size: int = 128,
    progress: bool = True,
    size: int = POOL_MAX,
) -> Pool:
    """The reference pool named `spec` ("data set/split", or a data set's `train`), else the
    checkpoint's training split; encoded with `model` (cached) and sampled to `size` items of
    each modality."""
    if spec is None:
        name = str(model.config.train.get("data_name") or "")
        if not name:
            raise DataSetError(
                "reference pool: the checkpoint records no training data set; name one with "
                "--pool DATA/SPLIT (a data set in the data dir)"
            )
        spec = f"{name}/train"
    name, _, split = spec.partition("/")
    check_data_name(name, "data set")
    split = check_data_name(split or "train", "split")
    try:
        source = load_split(settings.data_dir, name, split)
    except DataSetError as e:
        hint = "build it, or name another: --pool"
        raise DataSetError(f"reference pool {spec}: {e} ({hint})") from None
    images, texts = encode_split(model, source, settings.cache_dir, batch_size, progress)
    return Pool.sample({"image": images.dense, "text": texts.dense}, f"{name}/{split}", size)


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
        with replacing(cache) as tmp, tmp.open("wb") as fh:  # a path would get ".npz" appended
            np.savez(fh, **arrays)
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
    stats: Stats = "pool",
    pool: str | None = None,
    pool_size: int = POOL_MAX,
    dense_index: DenseIndex = "HNSW",
) -> LoadReport:
    """`meet-milvus load`: encode a data split with a checkpoint and write it to Milvus.

    `stats`: the re-ranking statistics against the gallery's reference pool (`pool`: a data
    set split "name/split"; default the checkpoint's training split), or `split`, the paper's
    protocol (against the split's other modality: a gallery that cannot grow consistently).
    `dense_index`: a new gallery's dense field in Milvus, "HNSW" (the server-side ANN) or
    "FLAT" (no HNSW build: the gallery is searched through its local tier).
    """
    cols.check_gallery_name(collection)
    check_neighbours(neighbours)
    dense_index = cols.check_dense_index(dense_index)
    if stats not in ("pool", "split"):
        raise ParameterError(f"--stats {stats!r}: use 'pool' or 'split'")
    data = check_data_name(data or collection, "data set")  # it names folders under the data dir
    path = resolve_checkpoint(settings, checkpoint, data)
    source = load_split(settings.data_dir, data, split)
    client = connect(settings)  # before the slow encoding: a dead server fails fast
    if settings.maps_segments and not drop and cols.find_layout(client, collection):
        cols.open_gallery(client, collection, mapped=True)  # one this server can load
    model = load_checkpoint(path, settings.device, settings.cache_dir)
    echo(
        f"encoding {data}/{split}: {source.n_images} images, {source.n_captions} captions "
        f"with model {model.config.fingerprint[:12]} ({path})"
    )
    long = sum(n > model.max_text_len for n in model.count_tokens(source.captions))
    if long:
        echo(f"note: {long} captions exceed {model.max_text_len} tokens and are truncated")
    images, texts = encode_split(model, source, settings.cache_dir, batch_size, progress)
    reference = None
    if stats == "pool":
        reference = (None if drop else read_pool(client, collection)) or training_pool(
            settings, model, pool, batch_size, progress, pool_size
        )
        echo(f"re-ranking statistics against the reference pool {reference.source} "
             f"({len(reference.vectors['image'])} images, {len(reference.vectors['text'])} "
             f"captions)")  # fmt: skip
    items = split_items(source, images, texts, neighbours, reference)
    origin = Origin.of(model, f"{data}/{split}", str(path.resolve()))
    try:
        report = write_gallery(
            client, collection, items, origin, drop=drop, pool=reference, progress=progress,
            echo=echo, dense_index=dense_index,
        )  # fmt: skip
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
    state = gallery_state(client, gallery)
    for modality in MODALITIES:
        if items is None:
            open_tier(client, gallery, modality, settings, echo, state)
        else:
            path = tier_dir(settings, collection, modality)
            write_tier(path, gallery.meta[modality], items[modality].chunks(), echo,
                       state.generation, rows=len(items[modality]))  # fmt: skip
    gallery.release(client)
    echo(f"gallery '{collection}': local tiers ready; its collections released from Milvus memory")
