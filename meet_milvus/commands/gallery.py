"""`meet-milvus index | delete`: galleries people own, grown and pruned item by item."""

from __future__ import annotations

import time
from pathlib import Path

import click

from meet_milvus.commands.options import (
    COLLECTION,
    DENSE_INDEX,
    DENSE_INDEXES,
    given,
    neighbours_option,
)
from meet_milvus.context import current_settings as _settings


@click.command("index")
@click.argument("paths", nargs=-1, required=True)
@click.option("--collection", required=True, help="gallery name in Milvus (made when new)")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="trained MEET checkpoint dir [a new gallery: the settings' checkpoint, else "
                   "{data_dir}/checkpoints/demo; an existing one: the one it was made with]")
@click.option("--pool", help="a new gallery's reference pool for re-ranking statistics, a data "
                             "set split DATA/SPLIT [the checkpoint's training split]")
@neighbours_option("k of a new gallery's re-ranking statistics")
@click.option("--batch", default=1000, show_default=True, type=click.IntRange(min=1),
              help="items written as one change")
@click.option("--allow-outside-images", is_flag=True,
              help="let a manifest name images outside its folder")
@DENSE_INDEX
@click.option("--quiet", is_flag=True, help="no progress bars")
def index(paths, collection, checkpoint, pool, neighbours, batch, allow_outside_images,
          dense_index, quiet) -> None:  # fmt: skip
    """Add photos (folders, files, globs) or manifest rows to a gallery: new items are added,
    changed files encoded again, unchanged ones left; no captions needed."""
    from meet_milvus.gallery_layout import check_gallery_name
    from meet_milvus.writer import GalleryWriter
    from meet_milvus_loaders.milvus_loader import check_neighbours, training_pool
    from meet_milvus_loaders.photos import collect

    settings = _settings()
    check_gallery_name(collection)
    if neighbours is not None:
        check_neighbours(neighbours)
    items = collect(paths, allow_outside=allow_outside_images)  # bad paths fail before the model
    if checkpoint is None and settings.checkpoint is None:
        default = settings.data_dir / "checkpoints" / "demo"
        checkpoint = default if default.is_dir() else None
    writer = GalleryWriter(collection, checkpoint, settings, dense_index=dense_index,
                           **given(neighbours=neighbours))  # fmt: skip
    if writer.gallery is None:
        writer.pool = training_pool(settings, writer.model, pool, progress=not quiet)
        click.echo(f"new gallery '{collection}': re-ranking statistics against the reference "
                   f"pool {writer.pool.source}")  # fmt: skip
    elif pool is not None:
        click.echo(f"note: '{collection}' keeps its own reference pool; --pool is ignored")
    click.echo(f"indexing {len(items)} items into '{collection}'")
    report = writer.add(items, batch=batch, progress=not quiet)
    for line in report.lines():
        click.echo(line)


@click.command("delete")
@click.argument("ids", nargs=-1)
@COLLECTION
@click.option("--missing", is_flag=True, help="delete every image whose file is gone")
def delete(ids, collection, missing) -> None:
    """Delete items from a gallery by external id (an image with its captions; ID#n: one
    caption), or those whose image file is gone (--missing)."""
    from meet_milvus.errors import ParameterError
    from meet_milvus.gallery_layout import check_gallery_name
    from meet_milvus.writer import GalleryWriter

    check_gallery_name(collection)
    if not ids and not missing:
        raise ParameterError("delete: name the items' ids, or --missing")
    report = GalleryWriter(collection, settings=_settings()).delete(ids, missing=missing)
    for line in report.lines():
        click.echo(line)


@click.command("reindex")
@COLLECTION
@click.option("--dense-index", required=True, type=DENSE_INDEXES,
              help="the dense field's new index: hnsw for the server-side ANN, flat to free the "
                   "server of the graph")  # fmt: skip
def reindex(collection, dense_index) -> None:
    """Give a gallery's dense field in Milvus another index (its items stay; searches wait for
    the build)."""
    from meet_milvus.gallery_layout import check_gallery_name, open_gallery, rebuild_dense_index
    from meet_milvus.server import connect

    check_gallery_name(collection)
    client = connect(_settings())
    gallery = open_gallery(client, collection)
    start = time.perf_counter()
    rebuild_dense_index(client, gallery, dense_index)
    click.echo(f"'{collection}': dense field indexed {dense_index.upper()} in "
               f"{time.perf_counter() - start:.1f} s")  # fmt: skip


COMMANDS = (index, delete, reindex)
