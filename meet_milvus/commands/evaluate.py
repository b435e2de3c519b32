"""`meet-milvus eval run | tune-rerank | tune-pq | pq-agreement`: a gallery's whole split sent
through Milvus as queries, scored against the split's pairs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from meet_milvus.commands.options import (
    CHECKPOINT,
    COLLECTION,
    FILTER,
    HASH_MODE,
    PQ_MODE,
    RERANK,
    TIER,
    given,
    open_searcher,
)
from meet_milvus.context import current_settings
from meet_milvus.errors import GalleryMismatchError, ParameterError

if TYPE_CHECKING:  # imported when a command runs: `--help` stays fast
    from meet_milvus.model.meet_model import Encoded
    from meet_milvus.searcher import MeetSearcher
    from meet_milvus_loaders.precomp import Split

METHODS = ["dense exact", "hash only", "PQ only", "cascade", "cascade + re-ranking",
           "cascade + reference re-ranking"]  # fmt: skip


@click.group("eval")
def evaluate() -> None:
    """Score a gallery on the data split it holds, every query through Milvus."""


def _gallery_options(command):
    """The options of every `eval` subcommand: the gallery, its split and the search's tier."""
    for option in reversed([
        COLLECTION, CHECKPOINT,
        click.option("--split", "split_spec",
                     help="the data set split DATA/SPLIT the gallery holds, in order [the one "
                          "it was loaded from; needed for a gallery made by `index`]"),
        click.option("--batch-size", default=256, show_default=True, type=click.IntRange(min=1),
                     help="queries per request"),
        HASH_MODE, TIER, FILTER,
    ]):  # fmt: skip
        command = option(command)
    return command


@dataclass(frozen=True)
class Evaluation:
    """A gallery opened for evaluation, with its split encoded as queries both ways."""

    searcher: MeetSearcher
    split: Split  # the data split the gallery holds
    source: str  # DATA/SPLIT
    queries: dict[str, Encoded]  # direction (i2t, t2i) -> the split's encoded queries


def _open(collection: str, checkpoint: Path | None, split_spec: str | None, *,
          tuning: bool = False, **settings: Any) -> Evaluation:  # fmt: skip
    """The gallery's searcher and its split; refused unless the gallery holds the whole split,
    in order (its item ids are the split's positions)."""
    from meet_milvus_loaders.milvus_loader import encode_split
    from meet_milvus_loaders.precomp import load_split

    searcher = open_searcher(collection, checkpoint, **given(**settings))
    meta = searcher.gallery.meta["image"]
    source = split_spec or meta.source
    if "/" not in source:
        raise ParameterError(
            f"collection '{collection}' was not loaded from a data split: name the split it "
            f"holds, --split DATA/SPLIT"
        )
    data, split_name = source.rsplit("/", 1)
    split = load_split(current_settings().data_dir, data, split_name)
    state = searcher.state
    rows = (state.bound["image"], state.bound["text"])
    if rows != (split.n_images, split.n_captions) or any(state.deleted.values()):
        raise GalleryMismatchError(
            f"collection '{collection}': holds {state.live('image')} images and "
            f"{state.live('text')} captions but {source} has {split.n_images} and "
            f"{split.n_captions}; reload it"
        )
    images, texts = encode_split(searcher.model, split, current_settings().cache_dir, 128, False)
    click.echo(
        f"{source}: {split.n_images} images, {split.n_captions} captions; "
        f"gallery '{collection}', model {meta.fingerprint[:12]}"
    )
    if tuning and split_name.startswith("test"):
        click.echo("warning: tuning on a test split; tune on dev and report test", err=True)
    return Evaluation(searcher, split, source, {"i2t": images, "t2i": texts})


@evaluate.command("run")
@_gallery_options
@click.option("--method", "methods", multiple=True, type=click.Choice(METHODS),
              help="methods to run [all]")  # fmt: skip
@RERANK
@PQ_MODE
@click.option(
    "--plot", type=click.Path(path_type=Path),
    help="also draw R@K per method and R@10 against ms/query into this .png",
)  # fmt: skip
def run(collection, checkpoint, split_spec, batch_size, methods, rerank, plot, **settings) -> None:
    """R@1/5/10 and rSum per method, then each stage's latency and keep. Both re-ranking modes
    are reported unless --rerank names one."""
    from meet_milvus import milvus_eval
    from meet_milvus.charts import check_plot_path
    from meet_milvus.evaluation import TIE_POLICY, format_table

    if plot is not None:
        check_plot_path(plot)  # refused before the evaluation, not after it
    ev = _open(collection, checkpoint, split_spec, **settings)
    names = list(methods) or list(milvus_eval.METHODS)
    if rerank:  # re-ranking rows in the named mode only
        modes = milvus_eval.RERANK_METHODS
        names = list(dict.fromkeys(modes[rerank] if n in modes.values() else n for n in names))
    results = [milvus_eval.run_method(ev.searcher, name, ev.split, ev.queries, batch_size)
               for name in names]  # fmt: skip
    click.echo(format_table({r.name: r.recall for r in results}))
    click.echo(f"({TIE_POLICY})")
    if plot is not None:
        _plot(plot, ev, collection, results)
    click.echo("")
    click.echo(stages_header(ev.searcher, batch_size))
    click.echo(milvus_eval.format_stages(results))


def _plot(path: Path, ev: Evaluation, collection: str, results: list) -> None:
    from meet_milvus.charts import total_ms, write_recall_chart
    from meet_milvus.evaluation import TIE_POLICY

    split = ev.split
    write_recall_chart(
        path,
        {r.name: r.recall for r in results},
        {r.name: total_ms(r.stages) for r in results},
        title=f"{ev.source}: {split.n_images} images, {split.n_captions} captions "
        f"(gallery '{collection}')",
        note=TIE_POLICY,
    )
    click.echo(f"(plot: {path})", err=True)


def stages_header(searcher: MeetSearcher, batch_size: int) -> str:
    """The line above the stage table: the cascade's sizes and re-ranking settings."""
    c = searcher.config
    return (
        f"stages (batches of {batch_size} queries; hash ({c.hash_mode}) keeps "
        f"{c.hash_keep_images} of images / "
        f"{c.hash_keep_texts} of texts, PQ ({c.pq_mode}) keeps {c.pq_keep_images} / "
        f"{c.pq_keep_texts} of those; re-ranking weighted alpha={c.alpha} beta={c.beta} "
        f"z={c.z}, reference K1 {c.reference_k_texts} (i2t) / {c.reference_k_images} (t2i)):"
    )


@evaluate.command("tune-rerank")
@_gallery_options
@PQ_MODE
def tune_rerank(collection, checkpoint, split_spec, batch_size, **settings) -> None:
    """rSum of the cascade + weighted re-ranking over a grid of alpha, beta and z, best ten
    first (tune on a dev gallery)."""
    from meet_milvus import milvus_eval

    ev = _open(collection, checkpoint, split_spec, tuning=True, **settings)
    results = milvus_eval.tune_rerank(ev.searcher, ev.split, ev.queries, batch=batch_size)
    baseline = next(r for r in results if r.alpha == 0 and r.beta == 0)
    click.echo(f"re-ranking off: rSum {baseline.rsum:.1f}")
    click.echo("| alpha | beta | z | rSum |\n|---:|---:|---:|---:|")
    for r in results[:10]:
        click.echo(f"| {r.alpha:g} | {r.beta:g} | {r.z} | {r.rsum:.1f} |")


@evaluate.command("tune-pq")
@_gallery_options
@PQ_MODE
def tune_pq(collection, checkpoint, split_spec, batch_size, **settings) -> None:
    """Each direction's R@1+5+10 against the share of Hamming survivors the PQ stage keeps
    (tune on a dev gallery)."""
    from meet_milvus import milvus_eval

    ev = _open(collection, checkpoint, split_spec, tuning=True, **settings)
    results = milvus_eval.tune_pq_keep(ev.searcher, ev.split, ev.queries, batch=batch_size)
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


@evaluate.command("pq-agreement")
@_gallery_options
def pq_agreement(collection, checkpoint, split_spec, batch_size, **settings) -> None:
    """How well each quantized-stage mode (ADC, Milvus IVF_PQ) returns the model's own PQ
    top-10."""
    from meet_milvus import milvus_eval

    ev = _open(collection, checkpoint, split_spec, **settings)
    click.echo("| PQ stage | direction | model's PQ top-10 returned % | ms/query |")
    click.echo("|---|---|---:|---:|")
    for r in milvus_eval.pq_agreement(ev.searcher, ev.queries, batch=batch_size):
        click.echo(f"| {r.mode} | {r.direction} | {r.agreement:.1f} | {r.ms_per_query:.2f} |")
