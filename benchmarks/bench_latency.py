"""What a user waits for: `MeetSearcher.search(text)` one query at a time, end to end.

    python -m benchmarks.bench_latency --collection demo --out benchmarks/results/latency-demo

Opens the searcher as a user would (default settings: the embedded server, the gallery's
checkpoint and local tier), then sends the gallery split's own captions as text queries:
- one caller: p50/p95 of `search(text, k=10)` and the time split into text encoding, each
  cascade stage and the hits' look-up (sources);
- several callers at once (threads sharing the searcher, which batches them): p50, p95 and
  queries per second;
- `meet-milvus serve` (its own process) over HTTP on loopback with several concurrent
  clients: the same figures.
Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import httpx
import numpy as np
import torch

from benchmarks.measure import load_avg
from meet_milvus.searcher import MeetSearcher
from meet_milvus.web.auth import access_token
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


def concurrent(sender: Callable[[], Callable[[str], object]], texts: list[str], n: int) -> dict:
    """`n` threads, each with its own `sender()`, sending its share of `texts` one at a time."""
    lat: list[float] = []
    lock = threading.Lock()

    def work(mine: list[str]) -> None:
        send = sender()
        for text in mine:
            start = time.perf_counter()
            send(text)
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


def http_clients(searcher: MeetSearcher, texts: list[str], k: int, counts: list[int]) -> list:
    """`meet-milvus serve` as its own process on loopback, asked by `n` HTTP clients at once
    (threads of this process), each on its own keep-alive connection."""
    if not counts:
        return []
    name = searcher.gallery.name
    proc = subprocess.Popen([sys.executable, "-m", "meet_milvus", "serve", "--collection", name,
                             "--port", "0"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = None
        for line in proc.stderr:  # "serving 'demo' at http://127.0.0.1:PORT (ready in ...)"
            if line.startswith("serving "):
                url = line.split(" at ", 1)[1].split()[0]
                break
        if url is None:
            raise SystemExit(f"meet-milvus serve did not start (exit {proc.wait()})")
        token, _ = access_token(searcher.settings.data_dir)

        def sender() -> Callable[[str], object]:
            client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                                  timeout=120)  # fmt: skip

            def send(text: str) -> object:
                r = client.post("/api/search", json={"text": text, "k": k})
                r.raise_for_status()
                return r

            return send

        return [concurrent(sender, texts, n) for n in counts]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


@click.command()
@click.option("--collection", default="demo", show_default=True)
@click.option("--queries", default=200, show_default=True)
@click.option("-k", "k", default=10, show_default=True)
@click.option("--callers", "n_callers", default="1,4", show_default=True)
@click.option("--http-clients", "n_http", default="1,4,8", show_default=True,
              help="concurrent HTTP clients of the serve app; '' for none")
@click.option("--out", type=click.Path(path_type=Path), required=True)
def main(collection: str, queries: int, k: int, n_callers: str, n_http: str,
         out: Path) -> None:  # fmt: skip
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
        f"--queries {queries} -k {k} --callers {n_callers} --http-clients '{n_http}' "
        f"--out {out}",
        "gallery": {"name": collection, "source": meta.source, "images": meta.rows},
        "torch_threads": torch.get_num_threads(),
        "open_and_first_query_s": open_s,
        "config": searcher.config.model_dump(),
        "load_start": load_avg(),
        "breakdown_p50_ms": breakdown(searcher, texts, k),
        "callers": [concurrent(lambda: lambda t: searcher.search(t, k=k), texts, int(n))
                    for n in n_callers.split(",")],
        "http": http_clients(searcher, texts, k, [int(n) for n in n_http.split(",") if n]),
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
        "`meet-milvus serve` (own process) over HTTP on loopback, concurrent clients:",
        "",
        "| HTTP clients | p50 ms | p95 ms | QPS |",
        "|---:|---:|---:|---:|",
        *(f"| {c['callers']} | {c['p50_ms']:.1f} | {c['p95_ms']:.1f} | {c['qps']:.1f} |"
          for c in res["http"]),
        "",
        "One caller, p50 ms per part: "
        + ", ".join(f"{n} {v:.2f}" for n, v in res["breakdown_p50_ms"].items()),
    ]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
