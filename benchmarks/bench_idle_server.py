"""The embedded Milvus's memory while nobody asks it anything: what bench_cascade charges its
client-side rows as "server growth" when none of them sends Milvus a request.

    python -m benchmarks.bench_idle_server --data-dir /tmp/e-bench --port 19587 --minutes 12 \\
        --out benchmarks/results/idle-server

Restarts the benchmark's server (nothing loaded, as bench_cascade leaves it for its client-side
rows), then reads its process tree's RSS and anonymous RSS once a minute. Writes OUT.json, OUT.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from benchmarks.bench_cascade import milvus, restart
from benchmarks.measure import load_avg, tree_rss


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("/tmp/meet-bench"),
              show_default=True, help="bench_cascade's data dir (its galleries)")  # fmt: skip
@click.option("--port", default=19571, show_default=True)
@click.option("--minutes", default=12, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="OUT.json, OUT.md")
def main(data_dir: Path, port: int, minutes: int, out: Path) -> None:
    _, server, settings = milvus(data_dir, port)
    restart(server, settings)
    pid = server.status().pid
    time.sleep(10)  # as bench_cascade settles before its first reading
    start, rows = time.monotonic(), []
    for i in range(minutes + 1):
        time.sleep(max(0.0, start + 60 * i - time.monotonic()))
        rows.append({"s": round(time.monotonic() - start), "rss_mb": tree_rss(pid) / 2**20,
                     "anon_mb": tree_rss(pid, "RssAnon") / 2**20})  # fmt: skip
        click.echo(rows[-1])
    result = {"command": " ".join(["python -m benchmarks.bench_idle_server", *sys.argv[1:]]),
              "load_avg_end": load_avg(), "samples": rows}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    first, last = rows[0], rows[-1]
    lines = ["## The embedded Milvus left alone (nothing loaded, no client)", "",
             f"`{result['command']}`", "", "| s | RSS MB | anonymous MB |", "|---:|---:|---:|",
             *(f"| {r['s']} | {r['rss_mb']:.1f} | {r['anon_mb']:.1f} |" for r in rows), "",
             f"Growth over {last['s']} s: RSS {last['rss_mb'] - first['rss_mb']:+.1f} MB, "
             f"anonymous {last['anon_mb'] - first['anon_mb']:+.1f} MB."]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
