"""`meet-milvus load | search | eval`: codes into Milvus and queries through the cascade."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click

from meet_milvus.context import current_settings as _settings
from meet_milvus.errors import GalleryMismatchError, ParameterError
from meet_milvus.evaluation import format_table


@click.command("load")
@click.option("--collection", required=True, help="gallery name in Milvus, e.g. coco")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="trained MEET checkpoint dir")
@click.option("--data", help="data set name under the data dir [the collection name]")
@click.option("--split", default="test", show_default=True, help="split loaded as the gallery")
@click.option("--drop", is_flag=True, help="drop the gallery's collections and rebuild them")
@click.option("--neighbours", default=32, show_default=True, help="k of the re-ranking statistics")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1),
              help="encoding batch size")  # fmt: skip
@click.option("--stats", type=click.Choice(["pool", "split"]), default="pool", show_default=True,
              help="re-ranking statistics against a reference pool (the gallery can grow) or "
                   "the split itself (the paper's protocol)")  # fmt: skip
@click.option("--pool", help="reference pool, a data set split DATA/SPLIT [the checkpoint's "
                             "training split]")  # fmt: skip
@click.option("--quiet", is_flag=True, help="no progress bars")
def load(collection, checkpoint, data, split, drop, neighbours, batch_size, stats, pool,
         quiet) -> None:  # fmt: skip
    """Encode a data split and load its codes, embeddings and sources into Milvus."""
    from meet_milvus_loaders.milvus_loader import load as load_gallery

    report = load_gallery(
        _settings(), collection, checkpoint=checkpoint, data=data, split=split, drop=drop,
        neighbours=neighbours, batch_size=batch_size, progress=not quiet, echo=click.echo,
        stats=stats, pool=pool,
    )  # fmt: skip
    for line in report.lines():
        click.echo(line)


def _searcher(collection: str, checkpoint: Path | None, **overrides):
    from meet_milvus.gallery_layout import check_gallery_name
    from meet_milvus.searcher import MeetSearcher

    check_gallery_name(collection)  # before connecting and loading the model

    return MeetSearcher(collection, checkpoint=checkpoint, settings=_settings(), **overrides)


HASH_MODE = "--hash-mode"
HASH_MODE_HELP = "Hamming stage: a client-side scan (no topk cap) or Milvus BIN_IVF_FLAT [client]"
TIER = click.option(
    "--tier", type=click.Choice(["local", "server"]),
    help="read the gallery from its local tier (codes in RAM, vectors on disk) or from the "
    "Milvus collections [local]",
)  # fmt: skip
RERANK = click.option(
    "--rerank", type=click.Choice(["weighted", "reference"]),
    help="re-ranking: similarity + weighted consistency/complementarity over the top z, or "
    "MEET's reference rule (the top 15 / 12 by reverse rank alone) [weighted]",
)  # fmt: skip
FILTER = click.option(
    "--filter", "first_filter", type=click.Choice(["auto", "meet", "ann"]),
    help="first filter: MEET's codes (Hamming -> PQ) or the ANN index; auto: ANN from "
    "50,000 items on [auto]",
)  # fmt: skip


def _given(**options: object) -> dict:
    """The options the user set (None: keep the searcher's default)."""
    return {k: v for k, v in options.items() if v is not None}


@click.command("search")
@click.argument("text", required=False)
@click.option("--image", type=click.Path(path_type=Path), help="find captions for this image")
@click.option("--collection", required=True, help="gallery name in Milvus")
@click.option("-k", "k", default=10, show_default=True, help="results")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="[the gallery's]")
@click.option("--no-rerank", is_flag=True, help="skip consistency/complementarity re-ranking")
@RERANK
@click.option("--diagnostics", is_flag=True, help="show each result's rank after every stage")
@click.option(HASH_MODE, type=click.Choice(["milvus", "client"]), help=HASH_MODE_HELP)
@TIER
@FILTER
@click.option(
    "--sheet",
    type=click.Path(path_type=Path),
    help="also draw the results into this picture (.png/.jpg): a contact sheet",
)
def search(
    text, image, collection, k, checkpoint, no_rerank, rerank, diagnostics, hash_mode, tier,
    first_filter, sheet,
) -> None:  # fmt: skip
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
    given = _given(rerank=False if no_rerank else rerank, hash_mode=hash_mode, tier=tier,
                   filter=first_filter)  # fmt: skip
    searcher = _searcher(collection, checkpoint, **given)
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


@click.command("eval")
@click.option("--collection", required=True, help="gallery name in Milvus")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="[the gallery's]")
@click.option(
    "--method",
    "methods",
    multiple=True,
    type=click.Choice(
        ["dense exact", "hash only", "PQ only", "cascade", "cascade + re-ranking",
         "cascade + reference re-ranking"]
    ),  # fmt: skip
    help="methods to run [all]",
)
@RERANK
@click.option("--pq-mode", type=click.Choice(["adc", "milvus"]), help="quantized stage [adc]")
@click.option(HASH_MODE, type=click.Choice(["milvus", "client"]), help=HASH_MODE_HELP)
@click.option("--tune", is_flag=True, help="grid-search alpha, beta, z (on a dev gallery)")
@click.option(
    "--tune-pq", is_flag=True,
    help="each direction's R@1+5+10 against the PQ stage's keep (on a dev gallery)",
)  # fmt: skip
@click.option(
    "--pq-agreement",
    is_flag=True,
    help="how well each quantized-stage mode reproduces the model's own PQ top-10",
)
@TIER
@FILTER
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="queries per request")  # fmt: skip
@click.option(
    "--plot", type=click.Path(path_type=Path),
    help="also draw R@K per method and R@10 against ms/query into this .png",
)  # fmt: skip
@click.option("--split", "split_spec",
              help="the data set split DATA/SPLIT the gallery holds, in order [the one it was "
                   "loaded from; needed for a gallery made by `index`]")  # fmt: skip
def evaluate(
    collection, checkpoint, methods, rerank, pq_mode, hash_mode, tune, tune_pq, pq_agreement,
    tier, first_filter, batch_size, plot, split_spec,
) -> None:  # fmt: skip
    """Send the gallery's whole split through Milvus: R@1/5/10, rSum, stage latency and keep.
    Both re-ranking modes are reported unless --rerank names one."""
    from meet_milvus import milvus_eval
    from meet_milvus.evaluation import TIE_POLICY
    from meet_milvus_loaders.milvus_loader import encode_split
    from meet_milvus_loaders.precomp import load_split

    settings = _settings()
    if plot is not None:
        from meet_milvus.charts import check_plot_path

        check_plot_path(plot)  # refused before the evaluation, not after it
    given = _given(pq_mode=pq_mode, hash_mode=hash_mode, tier=tier, filter=first_filter)
    searcher = _searcher(collection, checkpoint, **given)
    meta = searcher.gallery.meta["image"]
    source = split_spec or meta.source
    if "/" not in source:
        raise ParameterError(
            f"collection '{collection}' was not loaded from a data split: name the split it "
            f"holds, --split DATA/SPLIT"
        )
    data, split_name = source.rsplit("/", 1)
    split = load_split(settings.data_dir, data, split_name)
    # Item ids are the split's positions: every id there, none deleted.
    state = searcher.state
    rows = (state.bound["image"], state.bound["text"])
    if rows != (split.n_images, split.n_captions) or any(state.deleted.values()):
        raise GalleryMismatchError(
            f"collection '{collection}': holds {state.live('image')} images and "
            f"{state.live('text')} captions but {source} has {split.n_images} and "
            f"{split.n_captions}; reload it"
        )
    images, texts = encode_split(searcher.model, split, settings.cache_dir, 128, False)
    queries = {"i2t": images, "t2i": texts}
    click.echo(
        f"{source}: {split.n_images} images, {split.n_captions} captions; "
        f"gallery '{collection}', model {meta.fingerprint[:12]}"
    )
    if pq_agreement:
        click.echo("| PQ stage | direction | model's PQ top-10 returned % | ms/query |")
        click.echo("|---|---|---:|---:|")
        for r in milvus_eval.pq_agreement(searcher, queries, batch=batch_size):
            click.echo(f"| {r.mode} | {r.direction} | {r.agreement:.1f} | {r.ms_per_query:.2f} |")
        return
    if (tune or tune_pq) and split_name.startswith("test"):
        click.echo("warning: tuning on a test split; tune on dev and report test", err=True)
    if tune_pq:
        results = milvus_eval.tune_pq_keep(searcher, split, queries, batch=batch_size)
        got = {(r.keep, r.direction, r.method): r for r in results}
        click.echo("R@1+R@5+R@10 per direction; survivors: mean PQ survivors a query")
        click.echo("| PQ keep | i2t cascade | i2t + re-ranking | survivors (i2t) | t2i cascade | "
                   "t2i + re-ranking | survivors (t2i) |")  # fmt: skip
        click.echo("|---:|---:|---:|---:|---:|---:|---:|")
        for keep in dict.fromkeys(r.keep for r in results):
            cells = []
            for direction in milvus_eval.DIRECTIONS:
                plain, ranked = (got[keep, direction, m] for m in milvus_eval.PQ_KEEP_METHODS)
                cells += [f"{plain.recall_sum:.1f}", f"{ranked.recall_sum:.1f}",
                          f"{plain.candidates:.0f}"]  # fmt: skip
            click.echo(f"| {keep:g} | " + " | ".join(cells) + " |")
        return
    if tune:
        results = milvus_eval.tune_rerank(searcher, split, queries, batch=batch_size)
        baseline = next(r for r in results if r.alpha == 0 and r.beta == 0)
        click.echo(f"re-ranking off: rSum {baseline.rsum:.1f}")
        click.echo("| alpha | beta | z | rSum |\n|---:|---:|---:|---:|")
        for r in results[:10]:
            click.echo(f"| {r.alpha:g} | {r.beta:g} | {r.z} | {r.rsum:.1f} |")
        return
    names = list(methods) or list(milvus_eval.METHODS)
    if rerank:  # re-ranking rows in the named mode only
        modes = milvus_eval.RERANK_METHODS
        names = list(dict.fromkeys(modes[rerank] if n in modes.values() else n for n in names))
    results = [milvus_eval.run_method(searcher, name, split, queries, batch_size) for name in names]
    click.echo(format_table({r.name: r.recall for r in results}))
    click.echo(f"({TIE_POLICY})")
    if plot is not None:
        from meet_milvus.charts import total_ms, write_recall_chart

        write_recall_chart(
            plot,
            {r.name: r.recall for r in results},
            {r.name: total_ms(r.stages) for r in results},
            title=f"{source}: {split.n_images} images, {split.n_captions} captions "
            f"(gallery '{collection}')",
            note=TIE_POLICY,
        )
        click.echo(f"(plot: {plot})", err=True)
    click.echo("")
    click.echo(format_stages_header(searcher, batch_size))
    click.echo(milvus_eval.format_stages(results))


def format_stages_header(searcher, batch_size: int) -> str:
    c = searcher.config
    return (
        f"stages (batches of {batch_size} queries; hash ({c.hash_mode}) keeps "
        f"{c.hash_keep_images} of images / "
        f"{c.hash_keep_texts} of texts, PQ ({c.pq_mode}) keeps {c.pq_keep_images} / "
        f"{c.pq_keep_texts} of those; re-ranking weighted alpha={c.alpha} beta={c.beta} "
        f"z={c.z}, reference K1 {c.reference_k_texts} (i2t) / {c.reference_k_images} (t2i)):"
    )


COMMANDS = [load, search, evaluate]
