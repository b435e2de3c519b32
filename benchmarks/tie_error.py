"""The float error the re-ranker's tie tolerance (`meet_milvus.rerank.TIE`) must absorb.

    python -m benchmarks.tie_error --items 100000

The loader stores each item's neighbour similarities from a float32 matrix product
(`neighbour_stats`); at query time the re-ranker scores the same pairs with an einsum. For an
item queried again the two should be equal and differ only by summation order. This prints the
largest difference over `--queries` items of a synthetic gallery (benchmarks/synthetic.py)
queried again against `--others` items, beside float32's spacing at 1.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from benchmarks.synthetic import SyntheticSpec, generate
from meet_milvus_loaders.milvus_loader import neighbour_stats


@click.command()
@click.option("--items", default=100_000, show_default=True)
@click.option("--queries", default=1_000, show_default=True)
@click.option("--others", default=10_000, show_default=True)
@click.option("--cache", type=click.Path(path_type=Path), show_default=True,
              default=Path.home() / ".meet-milvus" / "cache" / "bench", help="synthetic galleries")
def main(items: int, queries: int, others: int, cache: Path) -> None:
    g = generate(SyntheticSpec(n_items=items), cache)
    query = np.asarray(g.dense[:queries], np.float32)
    gallery = np.asarray(g.dense[queries : queries + others], np.float32)
    # neighbour_stats's product, chunk by chunk as it runs it (it then only sorts the values).
    stored = np.concatenate([gallery[s : s + 2048] @ query.T for s in range(0, others, 2048)])
    assert np.array_equal(np.sort(stored, axis=1)[:, ::-1][:, :5],
                          neighbour_stats(gallery, query, k=5))  # fmt: skip
    again = np.stack([np.einsum("zd,d->z", gallery, q) for q in query], axis=1)  # the re-ranker's
    worst = float(np.abs(stored - again).max())
    click.echo(f"dim {query.shape[1]}, {queries} items queried again against {others}: "
               f"max |einsum - stored| = {worst:.3g} (float32 spacing at 1: "
               f"{np.spacing(np.float32(1)):.3g})")  # fmt: skip


if __name__ == "__main__":
    main()
