"""Re-ranking statistics from a reference pool against the paper's protocol (from the evaluated
split itself), and a gallery built by `index` in batches against one `load`ed at once.

    python -m benchmarks.bench_pool_stats --splits test,test_seen,dev \
        --out benchmarks/results/pool-stats
    python -m benchmarks.bench_pool_stats --splits dev --pool-sizes 1000,2500,5000,20000 \
        --out benchmarks/results/pool-sizes

For each demo split, three galleries of the same items with the same checkpoint (the demo's):
`load --stats split` (the paper's protocol), `load --stats pool` (the default: statistics
against a sample of the checkpoint's training split), and the split's images with their
captions added by the gallery writer (`meet-milvus index`'s path) in batches of `--batch`
items. Each is evaluated with the cascade and the cascade + re-ranking (R@1/5/10 both ways,
rSum; the product's defaults). With `--pool-sizes`, instead: `load --stats pool` with pools of
each size (items of each modality), to choose the default (on dev). Needs `bash
examples/demo.sh` (data and checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import click

from benchmarks.measure import load_avg, report
from meet_milvus import MeetSearcher, load_settings
from meet_milvus.gallery_layout import drop
from meet_milvus.milvus_eval import run_method
from meet_milvus.pool import POOL_MAX
from meet_milvus.server import connect
from meet_milvus.writer import GalleryWriter, NewItem
from meet_milvus_loaders.milvus_loader import encode_split, load, training_pool
from meet_milvus_loaders.precomp import load_split

METHODS = ("cascade", "cascade + re-ranking")


def _indexed(settings, name: str, split, checkpoint: Path, batch: int) -> None:
    drop(connect(settings), name)
    writer = GalleryWriter(name, checkpoint, settings)
    writer.pool = training_pool(settings, writer.model, progress=False)  # the default size
    caps: list[list[str]] = [[] for _ in range(split.n_images)]
    for caption, image in zip(split.captions, split.caption_image, strict=True):
        caps[int(image)].append(caption)
    items = [NewItem(Path(p).name, image=p, captions=tuple(c))
             for p, c in zip(split.image_paths, caps, strict=True)]  # fmt: skip
    writer.add(items, batch=batch)


@click.command()
@click.option("--splits", default="test,test_seen,dev", show_default=True)
@click.option("--batch", default=250, show_default=True, help="items a change (index)")
@click.option("--pool-sizes", help="compare pools of these sizes instead, e.g. 1000,5000")
@click.option("--out", type=click.Path(path_type=Path), default=None)
def main(splits: str, batch: int, pool_sizes: str | None, out: Path | None) -> None:
    settings = load_settings()
    checkpoint = settings.data_dir / "checkpoints" / "demo"
    result: dict = {"load_avg_start": load_avg(), "batch": batch, "rows": []}
    lines = ["| split | gallery | statistics | cascade rSum | + re-ranking rSum | gain |",
             "|---|---|---|---:|---:|---:|"]  # fmt: skip
    if pool_sizes:
        ways = [("load", "pool", int(n)) for n in pool_sizes.split(",")]
    else:
        ways = [("load", "split", POOL_MAX), ("load", "pool", POOL_MAX),
                ("index", "pool", POOL_MAX)]  # fmt: skip
    for split_name in splits.split(","):
        split = load_split(settings.data_dir, "demo", split_name)
        for how, stats, size in ways:
            name = f"bps_{split_name}_{how}_{stats}"
            if how == "load":
                load(settings, name, checkpoint, "demo", split_name, drop=True, stats=stats,
                     progress=False, echo=lambda _m: None, pool_size=size)  # fmt: skip
            else:
                _indexed(settings, name, split, checkpoint, batch)
            if stats == "pool":
                stats = f"pool of {size:,}"
            searcher = MeetSearcher(name, settings=settings)
            images, texts = encode_split(searcher.model, split, settings.cache_dir, 128, False)
            queries = {"i2t": images, "t2i": texts}
            rsum = {m: run_method(searcher, m, split, queries, 256).recall.rsum for m in METHODS}
            gain = rsum[METHODS[1]] - rsum[METHODS[0]]
            result["rows"].append({"split": split_name, "gallery": how, "stats": stats,
                                   **rsum, "gain": gain})  # fmt: skip
            lines.append(f"| demo/{split_name} | {how} | {stats} | {rsum[METHODS[0]]:.1f} | "
                         f"{rsum[METHODS[1]]:.1f} | {gain:+.1f} |")  # fmt: skip
            drop(connect(settings), name)
    result["load_avg_end"] = load_avg()
    report(lines, result, out)


if __name__ == "__main__":
    main()
