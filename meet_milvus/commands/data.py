"""`meet-milvus data demo | folds | import`: build and prepare data sets."""

from __future__ import annotations

from pathlib import Path

import click

from meet_milvus.commands.options import LazyHelpOption
from meet_milvus.context import pass_ctx


@click.group()
def data() -> None:
    """Build and prepare data sets."""


COUNT = click.IntRange(min=1)


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    lines = [
        "  ".join(
            c.ljust(widths[c]) if i == 0 else c.rjust(widths[c]) for i, c in enumerate(columns)
        )
    ]
    for r in rows:
        lines.append(
            "  ".join(
                str(r[c]).ljust(widths[c]) if i == 0 else str(r[c]).rjust(widths[c])
                for i, c in enumerate(columns)
            )
        )
    return "\n".join(lines)


def _split_row(split) -> dict:
    return {"split": split.split, "images": split.n_images, "captions": split.n_captions}


@data.command()
@click.option("--seed", default=0, show_default=True, help="same seed, same data set")
@click.option(
    "--train", "n_train", type=COUNT, default=4000, show_default=True, help="training images"
)
@click.option(
    "--dev", "n_dev", type=COUNT, default=500, show_default=True, help="validation images"
)
@click.option("--test", "n_test", type=COUNT, default=1000, show_default=True, help="test images")
@click.option(
    "--test-seen", "n_seen", type=COUNT, help="test_seen images: training stamps in new scenes "
    "[as --test]",
)  # fmt: skip
@click.option("--batch-size", default=32, show_default=True, type=COUNT,
              help="feature extraction batch")  # fmt: skip
@pass_ctx
def demo(
    ctx, seed: int, n_train: int, n_dev: int, n_test: int, n_seen: int | None, batch_size: int
) -> None:
    """Build the demo set from real Tux Paint stamps (downloaded once, cached).

    Written as data set "demo" (splits train/dev/test, five captions per image) in the data
    dir, with the rendered images beside the features. Dev and test stamps are never seen in
    training (zero-shot transfer); test_seen shows training stamps in new scenes (COCO-like)."""
    from meet_milvus_loaders.demo import build_demo

    s = ctx.settings
    report = build_demo(
        s.data_dir,
        s.cache_dir,
        seed=seed,
        sizes={"train": n_train, "dev": n_dev, "test": n_test, "test_seen": n_seen or n_test},
        device=s.device,
        batch_size=batch_size,
        progress=True,  # a bar on a terminal, else a line every few seconds
        log=lambda msg: click.echo(msg, err=True),
    )
    click.echo(
        f"demo data set in {report.root} (seed {seed}, {report.n_stamps} stamps, "
        f"{report.seconds:.0f} s)"
    )
    click.echo(_table(report.rows, ["split", "images", "captions", "singles", "stamps"]))


@data.command()
@click.option("--name", default="coco", show_default=True, help="data set name")
@click.option("--source", default="testall", show_default=True, help="split to cut into folds")
@click.option(
    "--folds",
    "n_folds",
    default=5,
    type=click.IntRange(min=1),
    show_default=True,
    help="number of folds",
)
@pass_ctx
def folds(ctx, name: str, source: str, n_folds: int) -> None:
    """Write the COCO 1K five-fold splits (1k_fold0..) from the 5K test split."""
    from meet_milvus_loaders.precomp import precomp_dir, write_folds

    written = write_folds(ctx.settings.data_dir, name=name, source=source, n_folds=n_folds)
    click.echo(f"{len(written)} folds of '{source}' in {precomp_dir(ctx.settings.data_dir, name)}")
    click.echo(_table([_split_row(f) for f in written], ["split", "images", "captions"]))


def _ratios(ctx, param, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        ratios = tuple(float(v) for v in value.split(","))
    except ValueError:
        ratios = ()
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise click.BadParameter(f"{value!r}: three shares for train,dev,test, e.g. 0.8,0.1,0.1")
    return ratios


def _defaults_help(option: str) -> str:
    from meet_milvus_loaders.importer import KARPATHY_DEFAULT
    from meet_milvus_loaders.raw import SPLIT_RATIOS

    if option == "split":
        return f"split(s) to write [Karpathy: {' '.join(KARPATHY_DEFAULT)}; manifest: all of its "\
               "splits]"  # fmt: skip
    ratios = ",".join(f"{r:g}" for r in SPLIT_RATIOS)
    return f"manifest without a split column: train,dev,test shares of its images [{ratios}]; " \
           "a 0 skips a split"  # fmt: skip


@data.command(name="import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", help="data set name [the file's name without its extension]")
@click.option(
    "--images",
    "image_root",
    type=click.Path(path_type=Path),
    help="image folder (Karpathy: required; manifest: default its folder)",
)
@click.option("--split", "splits", multiple=True, cls=LazyHelpOption,
              lazy_help=lambda: _defaults_help("split"))  # fmt: skip
@click.option("--split-ratios", "ratios", callback=_ratios, cls=LazyHelpOption,
              lazy_help=lambda: _defaults_help("split-ratios"))  # fmt: skip
@click.option("--seed", default=0, show_default=True, help="manifest: seed of the split by ratios")
@click.option(
    "--allow-outside-images",
    "allow_outside",
    is_flag=True,
    help="accept image paths in SOURCE that lead outside the image folder (absolute or ../)",
)
@click.option(
    "--max-captions",
    default=5,
    show_default=True,
    type=click.IntRange(min=0),
    help="Karpathy: captions kept per image (0 = all)",
)
@click.option("--batch-size", default=32, show_default=True, type=COUNT,
              help="feature extraction batch")  # fmt: skip
@pass_ctx
def import_(
    ctx,
    source: Path,
    name: str | None,
    image_root: Path | None,
    splits: tuple,
    ratios: tuple[float, ...] | None,
    seed: int,
    allow_outside: bool,
    max_captions: int,
    batch_size: int,
) -> None:
    """Import images with captions as precomp features (EfficientNet-Lite0 grid, 49x1280).

    SOURCE is a Karpathy split file (dataset_coco.json, dataset_flickr30k.json: any .json) or a
    JSONL/CSV manifest; the splits are written into the data dir. A manifest's `split` field or
    column decides where each image goes; without one, its images are cut into train/dev/test
    by --split-ratios (from --seed; an image's captions stay together)."""
    from meet_milvus_loaders.importer import import_data_set

    report = import_data_set(
        ctx.settings, source, name=name, image_root=image_root, splits=splits, ratios=ratios,
        seed=seed, allow_outside=allow_outside, max_captions=max_captions or None,
        batch_size=batch_size, progress=True, log=lambda msg: click.echo(msg, err=True),
    )  # fmt: skip
    click.echo(f"data set '{report.name}' in {report.root}")
    click.echo(_table(report.rows, ["split", "images", "captions"]))
    if not report.has_dev:
        click.echo(
            f"note: data set '{report.name}' has no dev split; meet-train needs one (it keeps "
            "the epoch that scores best on dev)",
            err=True,
        )
