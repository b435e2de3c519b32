"""`meet-milvus load | search`: codes into Milvus and queries through the cascade."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click

from meet_milvus.commands.options import (
    CHECKPOINT,
    COLLECTION,
    DENSE_INDEX,
    FILTER,
    HASH_MODE,
    RERANK,
    TIER,
    given,
    neighbours_option,
    open_searcher,
)
from meet_milvus.context import current_settings as _settings
from meet_milvus.errors import ParameterError


@click.command("load")
@click.option("--collection", required=True, help="gallery name in Milvus, e.g. coco")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="trained MEET checkpoint dir")
@click.option("--data", help="data set name under the data dir [the collection name]")
@click.option("--split", default="test", show_default=True, help="split loaded as the gallery")
@click.option("--drop", is_flag=True, help="drop the gallery's collections and rebuild them")
@neighbours_option("k of the re-ranking statistics")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1),
              help="encoding batch size")  # fmt: skip
@click.option("--stats", type=click.Choice(["pool", "split"]), default="pool", show_default=True,
              help="re-ranking statistics against a reference pool (the gallery can grow) or "
                   "the split itself (the paper's protocol)")  # fmt: skip
@click.option("--pool", help="reference pool, a data set split DATA/SPLIT [the checkpoint's "
                             "training split]")  # fmt: skip
@DENSE_INDEX
@click.option("--quiet", is_flag=True, help="no progress bars")
def load(collection, checkpoint, data, split, drop, neighbours, batch_size, stats, pool,
         dense_index, quiet) -> None:  # fmt: skip
    """Encode a data split and load its codes, embeddings and sources into Milvus."""
    from meet_milvus_loaders.milvus_loader import load as load_gallery

    report = load_gallery(
        _settings(), collection, checkpoint=checkpoint, data=data, split=split, drop=drop,
        batch_size=batch_size, progress=not quiet, echo=click.echo, stats=stats, pool=pool,
        dense_index=dense_index, **given(neighbours=neighbours),
    )  # fmt: skip
    for line in report.lines():
        click.echo(line)


@click.command("search")
@click.argument("text", required=False)
@click.option("--image", type=click.Path(path_type=Path), help="find captions for this image")
@COLLECTION
@click.option("-k", "k", default=10, show_default=True, help="results")
@CHECKPOINT
@click.option("--no-rerank", is_flag=True, help="skip consistency/complementarity re-ranking")
@RERANK
@click.option("--diagnostics", is_flag=True, help="show each result's rank after every stage")
@HASH_MODE
@TIER
@FILTER
@click.option(
    "--sheet",
    type=click.Path(path_type=Path),
    help="also draw the results into this picture (.png/.jpg): a contact sheet",
)
def search(text, image, collection, k, checkpoint, no_rerank, rerank, diagnostics, sheet,
           **settings) -> None:  # fmt: skip
    """Images for TEXT, or captions for --image, as a table (rank, score, source; for captions
    also the image each describes and the caption's external id)."""
    from meet_milvus.inputs import check_text
    from meet_milvus.model.features import load_image
    from meet_milvus.searcher import check_k

    if (text is None) == (image is None):
        raise ParameterError("search: give a TEXT or --image PATH (one of them)")
    check_k(k)
    # Checked before the slow model load, as the searcher checks them.
    if text is not None:
        check_text(text, "query 0")
    if image is not None:
        load_image(image)  # not found, not an image, too many pixels
    if no_rerank and rerank:
        raise ParameterError(f"search: --no-rerank and --rerank {rerank} contradict each other")
    if sheet is not None:
        from meet_milvus.sheet import check_path

        check_path(sheet)  # a bad path is refused before the search, not after it
    searcher = open_searcher(collection, checkpoint,
                             **given(rerank=False if no_rerank else rerank, **settings))
    if text is not None:
        searcher.model.load_text_model()  # the query's time, not the text model's load
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if text is not None:
            hits = searcher.search(text, k=k, diagnostics=diagnostics)
        else:
            hits = searcher.search_image(image, k=k, diagnostics=diagnostics)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    ms = 1000 * (time.perf_counter() - start)
    stages = list(hits[0].stages) if diagnostics and hits else []
    # A caption names the image it describes (gallery id) and itself (external id), so a hit
    # can be traced back to the data set.
    where = ["image", "external id", "caption"] if image is not None else ["source"]
    click.echo(" | ".join(["rank", "score", *(f"{s} rank" for s in stages), *where]))
    for rank, hit in enumerate(hits, 1):
        ranks = [str(hit.stages[s].rank or "-") for s in stages] if stages else []
        ids = [str(hit.image), hit.external_id] if image is not None else []
        click.echo(" | ".join([f"{rank:>4}", f"{hit.score:.4f}", *ranks, *ids, hit.source]))
    click.echo(f"({len(hits)} results from '{collection}' in {ms:.0f} ms)", err=True)
    if sheet is not None:
        from meet_milvus.sheet import write_sheet

        write_sheet(sheet, hits, text=text, image=image)
        click.echo(f"(contact sheet: {sheet})", err=True)


COMMANDS = [load, search]
