"""`meet-milvus data demo | folds | import`: build and prepare data sets."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meet_milvus.context import pass_ctx
from meet_milvus.errors import ParameterError


@click.group()
def data() -> None:
    """Build and prepare data sets."""


COUNT = click.IntRange(min=1)


def _progress() -> bool:
    return sys.stderr.isatty()


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
@click.option("--batch-size", default=32, show_default=True, help="feature extraction batch")
@pass_ctx
def demo(ctx, seed: int, n_train: int, n_dev: int, n_test: int, batch_size: int) -> None:
    """Build the demo set from real Tux Paint stamps (downloaded once, cached).

    Written as data set "demo" (splits train/dev/test, five captions per image) in the data
    dir, with the rendered images beside the features."""
    from meet_milvus_loaders.demo import build_demo

    s = ctx.settings
    report = build_demo(
        s.data_dir,
        s.cache_dir,
        seed=seed,
        sizes={"train": n_train, "dev": n_dev, "test": n_test},
        device=s.device,
        batch_size=batch_size,
        progress=_progress(),
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


@data.command(name="import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--name", help="data set name (default: from the file)")
@click.option(
    "--images",
    "image_root",
    type=click.Path(path_type=Path),
    help="image folder (Karpathy: required; manifest: default its folder)",
)
@click.option(
    "--split",
    "splits",
    multiple=True,
    help="split(s) to write; Karpathy default: train dev test, manifest: train",
)
@click.option(
    "--max-captions",
    default=5,
    show_default=True,
    help="Karpathy: captions kept per image (0 = all)",
)
@click.option("--batch-size", default=32, show_default=True, help="feature extraction batch")
@pass_ctx
def import_(
    ctx,
    source: Path,
    name: str | None,
    image_root: Path | None,
    splits: tuple,
    max_captions: int,
    batch_size: int,
) -> None:
    """Import images with captions as precomp features (EfficientNet-Lite0 grid, 49x1280).

    SOURCE is a Karpathy split file (dataset_coco.json, dataset_flickr30k.json: any .json) or a
    JSONL/CSV manifest; the splits are written into the data dir."""
    from meet_milvus.model.features import GridFeatureExtractor
    from meet_milvus_loaders.precomp import write_split
    from meet_milvus_loaders.raw import read_karpathy, read_manifest, to_split

    s = ctx.settings
    karpathy = source.suffix.lower() == ".json"
    if karpathy:
        if image_root is None:
            raise ParameterError(
                f"{source}: a Karpathy split file needs --images (the image folder)"
            )
        raws = [
            read_karpathy(source, image_root, sp, name=name, max_captions=max_captions or None)
            for sp in (splits or ("train", "dev", "test"))
        ]
    else:
        raws = [
            read_manifest(source, split=sp, name=name, image_root=image_root)
            for sp in (splits or ("train",))
        ]
    extractor = GridFeatureExtractor(device=s.device, cache_dir=s.cache_dir)
    rows = []
    for raw in raws:
        click.echo(f"{raw.name}/{raw.split}: {raw.n_images} images", err=True)
        split = to_split(raw, extractor, batch_size=batch_size, progress=_progress())
        root = write_split(s.data_dir, split)
        rows.append(_split_row(split))
    click.echo(f"data set '{raws[0].name}' in {root}")
    click.echo(_table(rows, ["split", "images", "captions"]))
