"""What a user waits for: `MeetSearcher.search(text)` one query at a time, end to end.

    python -m benchmarks.bench_latency --collection demo --out benchmarks/results/latency-demo

Opens the searcher as a user would (default settings: the embedded server, the gallery's
checkpoint and local tier), then sends the gallery split's own captions as text queries:
- one caller: p50/p95 of `search(text, k=10)` and the time split into text encoding, each
  cascade stage and the hits' look-up (sources);
- several callers at once (threads sharing the searcher): p50 and queries per second.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks.measure import load_avg
from meet_milvus.searcher import MeetSearcher
from meet_milvus_loaders.precomp import load_split


def breakdown(searcher: MeetSearcher, texts: list[str], k: int) -> dict:
    """Per query: encode, each stage, hits; and the whole call, timed separately."""
    parts: dict[str, list[float]] = {}
    for text in texts:
        start = time.perf_counter()
        queries = searcher.encode_texts([text])
        parts.setdefault("encode", []).append(time.perf_counter() - start)
        cascade = searcher.cascade("image", k)
        traces = cascade.trace(queries)
        for t in traces:
            parts.setdefault(f"stage {t.name}", []).append(t.seconds)
        start = time.perf_counter()
        searcher._hits(traces[-1].candidates.head(k), cascade.stages[0].store, "image", None)
        parts.setdefault("hits", []).append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(v)) for name, v in parts.items()}


def callers(searcher: MeetSearcher, texts: list[str], k: int, n: int) -> dict:
    """`n` threads share the searcher, each sending its share of `texts` one at a time."""
    lat: list[float] = []
    lock = threading.Lock()

    def work(mine: list[str]) -> None:
        for text in mine:
            start = time.perf_counter()
            searcher.search(text, k=k)
            with lock:
                lat.append(time.perf_counter() - start)

    pool = [threading.Thread(target=work, args=(texts[i::n],)) for i in range(n)]
    start = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - start
    return {
        "callers": n,
        "p50_ms": 1e3 * float(np.median(lat)),
        "p95_ms": 1e3 * float(np.percentile(lat, 95)),
        "qps": len(texts) / seconds,
    }


@click.command()
@click.option("--collection", default="demo", show_default=True)
@click.option("--queries", default=200, show_default=True)
@click.option("-k", "k", default=10, show_default=True)
@click.option("--callers", "n_callers", default="1,4", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def main(collection: str, queries: int, k: int, n_callers: str, out: Path) -> None:
    """Single-query latency of the searcher, end to end, with its breakdown."""
    start = time.perf_counter()
    searcher = MeetSearcher(collection)
    searcher.search("warm-up", k=k)  # the local tier's codes, the model's first call
    open_s = time.perf_counter() - start
    meta = searcher.gallery.meta["image"]
    data, split = meta.source.rsplit("/", 1)
    texts = load_split(searcher.settings.data_dir, data, split).captions[:queries]
    res = {
        "command": f"python -m benchmarks.bench_latency --collection {collection} "
        f"--queries {queries} -k {k} --callers {n_callers} --out {out}",
        "gallery": {"name": collection, "source": meta.source, "images": meta.rows},
        "torch_threads": torch.get_num_threads(),
        "open_and_first_query_s": open_s,
        "config": searcher.config.model_dump(),
        "load_start": load_avg(),
        "breakdown_p50_ms": breakdown(searcher, texts, k),
        "callers": [callers(searcher, texts, k, int(n)) for n in n_callers.split(",")],
        "load_end": load_avg(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))
    lines = [
        f"## `MeetSearcher.search(text)` on '{collection}' ({meta.source}, {meta.rows} images)",
        "",
        f"{queries} of the split's captions, k={k}, torch threads {res['torch_threads']}; "
        f"load average {res['load_start']} -> {res['load_end']}.",
        "",
        "| callers | p50 ms | p95 ms | QPS |",
        "|---:|---:|---:|---:|",
        *(f"| {c['callers']} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | {c['qps']:.1f} |"
          for c in res["callers"]),
        "",
        "One caller, p50 ms per part: "
        + ", ".join(f"{n} {v:.2f}" for n, v in res["breakdown_p50_ms"].items()),
    ]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
