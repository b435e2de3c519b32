"""What reading Milvus through pymilvus's public API costs: the calls `meet_milvus.milvus_arrays`
makes, timed on a synthetic gallery in the benchmark's own embedded Milvus.

    python -m benchmarks.bench_client --items 100000 --out benchmarks/results/client-100k.json

For a gallery of `--items` items (benchmarks/synthetic.py; loaded once through the product's
loader, then reused), it times, each `--repeat` times (the median is reported):

- `hash search`: one Hamming search in Milvus of `--nq` queries, `--limit` hits each (the
  server tier's first stage; its default keep is 30-60% of the gallery, capped at 16384);
- `fetch dense`: the dense vectors of `--fetch` ids a query for the `--nq` queries (what exact
  rescoring in the server tier reads);
- `read rows`: every row's hash, PQ codes, dense vector and statistics by id range (what
  building the local tier reads);
- `server-tier cascade`: one query per call through Hamming -> ADC -> exact, all in Milvus (p50).

Run it under two versions of `meet_milvus` to compare them (the version measured is whatever
`meet_milvus` imports: a `git archive` of another commit, put first on PYTHONPATH and run from
that folder). Nothing here is a test.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

import click
import numpy as np
import pymilvus

from benchmarks.bench_cascade import load_synthetic, meet_cascade, milvus, wait_indexed
from benchmarks.measure import per_query
from benchmarks.synthetic import SyntheticSpec, generate
from meet_milvus import gallery_layout as cols
from meet_milvus import milvus_arrays
from meet_milvus.model.meet_model import Encoded
from meet_milvus.reader import milvus_chunks


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of `repeat` calls of fn() (after one warm-up) and its last result."""
    result, times = fn(), []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


@click.command()
@click.option("--items", default=100_000, show_default=True)
@click.option("--nq", default=20, show_default=True, help="queries a search")
@click.option("--limit", default=16384, show_default=True, help="hits a query")
@click.option("--fetch", default=300, show_default=True, help="ids fetched a query")
@click.option("--repeat", default=3, show_default=True)
@click.option("--cascade-queries", default=20, show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("/tmp/meet-bench-client"),
              show_default=True, help="the benchmark's own Milvus and tiers")
@click.option("--cache", type=click.Path(path_type=Path), show_default=True,
              default=Path.home() / ".meet-milvus" / "cache" / "bench", help="synthetic galleries")
@click.option("--port", default=19561, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None)
def main(items, nq, limit, fetch, repeat, cascade_queries, data_dir, cache, port, out) -> None:
    g = generate(SyntheticSpec(n_items=items, n_queries=max(nq, cascade_queries)), cache)
    client, _server, settings = milvus(data_dir.resolve(), port)
    name = f"client_{items}"
    load_synthetic(client, settings, name, g)
    gallery = cols.open_gallery(client, name)
    wait_indexed(client, gallery.collections())
    hash_name = gallery.collection("image", "hash")
    dense_name = gallery.collection("image", "dense")
    for c in gallery.collections():
        gallery.ensure_loaded(client, c)
    limit = min(limit, items)
    codes = [row.tobytes() for row in g.q_hash_codes[:nq]]
    meta = gallery.meta["image"]

    def search():
        return milvus_arrays.search(client, hash_name, "hash", codes, limit, "HAMMING",
                                    {"nprobe": meta.nlist}, consistency="Eventually")  # fmt: skip

    res: dict = {"items": items, "nq": nq, "limit": limit, "pymilvus": pymilvus.__version__,
                 "meet_milvus": milvus_arrays.__file__, "python": platform.python_version()}
    res["hash_search_s"], (ids, dist) = timed(search, repeat)
    res["hash_search_hits"] = int((ids >= 0).sum())
    res["hash_search_digest"] = hashlib.sha1(ids.tobytes() + dist.tobytes()).hexdigest()[:12]
    wanted = np.where(ids[:, :fetch] >= 0, ids[:, :fetch], 0).reshape(-1)
    res["fetch_dense_s"], got = timed(
        lambda: milvus_arrays.fetch(client, dense_name, wanted, ["dense"], 4 * meta.embed_dim,
                                    "Eventually"), repeat)  # fmt: skip
    res["fetch_rows"] = len(wanted)
    res["fetch_digest"] = hashlib.sha1(np.asarray(got["dense"]).tobytes()).hexdigest()[:12]

    def read_rows():
        return sum(len(chunk["dense"]) for chunk in milvus_chunks(client, gallery, "image"))

    res["read_rows_s"], res["read_rows"] = timed(read_rows, 1)

    cascade = meet_cascade(client, gallery, None, g, r=min(16384, int(0.6 * items)),
                           q=min(1000, items))  # fmt: skip
    queries = Encoded(g.q_dense, g.q_head, g.q_hash_codes, g.encode_pq(g.q_head))
    lat = per_query(lambda rows: cascade(queries[rows]), cascade_queries)
    res["server_cascade_p50_ms"] = lat["p50_ms"]
    res["server_cascade_mean_ms"] = lat["mean_ms"]
    line = json.dumps(res)
    click.echo(line)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")


if __name__ == "__main__":
    main()
