"""Caption encoding on the CPU, torch against ONNX Runtime, in one process and one run.

    python -m benchmarks.bench_encode --collection demo --out benchmarks/results/encode-demo

Encodes the gallery split's own captions one call at a time with each batch size, each runtime
(text_runtime "torch", "onnx") in a process of its own that loads only its model, as a searcher
would: torch, ONNX Runtime, torch, ONNX Runtime, so drift in the machine's load falls on both.
Reports p50/p95 per call over both rounds, and how far the ONNX Runtime encodings are from
torch's (dense vectors, hash-head outputs, sign bits). Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from benchmarks.measure import load_avg
from meet_milvus.config import load_settings
from meet_milvus.model import load_checkpoint
from meet_milvus.searcher import MeetSearcher
from meet_milvus_loaders.precomp import load_split

RUNTIMES = ("torch", "onnx")
# What `import meet_milvus` sets before torch loads (meet_milvus/__init__.py); a worker imports
# torch first, and OpenMP reads the variable when it loads.
WORKER_ENV = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def timed(model, texts: list[str]) -> float:
    start = time.perf_counter()
    model.encode_texts(texts)
    return time.perf_counter() - start


def captions(collection: str) -> tuple[Path, list[str]]:
    """The gallery's checkpoint and its split's captions."""
    settings = load_settings()
    meta = MeetSearcher(collection, settings=settings).gallery.meta["text"]
    data, split = meta.source.split("/", 1)
    return Path(meta.checkpoint), load_split(settings.data_dir, data, split).captions


def worker(collection: str, runtime: str, calls: int, sizes: list[int]) -> dict:
    """Seconds per call for each batch size, one runtime, this process."""
    checkpoint, texts = captions(collection)
    model = load_checkpoint(checkpoint, "cpu", load_settings().cache_dir, text_runtime=runtime)
    model.encode_texts(texts[:64])  # warm: graph loaded, thread pools started
    out = {}
    for bs in sizes:
        batches = [[texts[(i * bs + j) % len(texts)] for j in range(bs)] for i in range(calls)]
        out[bs] = [timed(model, b) for b in batches]
    return out


@click.command()
@click.option("--collection", default="demo", show_default=True)
@click.option("--calls", default=200, show_default=True, help="timed calls per batch size")
@click.option("--batch-sizes", default="1,4", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="OUT.json, OUT.md")
@click.option("--worker", "worker_runtime", type=click.Choice(RUNTIMES), hidden=True)
def main(
    collection: str, calls: int, batch_sizes: str, out: Path | None, worker_runtime: str | None
) -> None:
    sizes = [int(b) for b in batch_sizes.split(",")]
    if worker_runtime:
        click.echo(json.dumps(worker(collection, worker_runtime, calls, sizes)))
        return
    if out is None:
        raise click.UsageError("--out is required")
    checkpoint, texts = captions(collection)
    settings = load_settings()
    models = {r: load_checkpoint(checkpoint, "cpu", settings.cache_dir, text_runtime=r)
              for r in RUNTIMES}  # fmt: skip
    sample = texts[:500]
    enc = {r: m.encode_texts(sample) for r, m in models.items()}
    del models
    dense_err = float(np.abs(enc["onnx"].dense - enc["torch"].dense).max())
    head_err = float(np.abs(enc["onnx"].head - enc["torch"].head).max())
    clear = np.abs(enc["torch"].head) > 1e-4
    flips = int(((enc["onnx"].head > 0) != (enc["torch"].head > 0))[clear].sum())
    result: dict = {
        "command": " ".join(["python -m benchmarks.bench_encode", *sys.argv[1:]]),
        "machine": f"{torch.get_num_threads()} torch threads, {platform.machine()}",
        "load_start": load_avg(), "checkpoint": str(checkpoint),
        "agreement": {"captions": len(sample), "max_abs_dense": dense_err,
                      "max_abs_head": head_err, "sign_flips_where_head_above_1e-4": flips},
        "calls": {},
    }  # fmt: skip
    times: dict[str, dict[int, list[float]]] = {r: {bs: [] for bs in sizes} for r in RUNTIMES}
    for runtime in RUNTIMES * 2:
        cmd = [sys.executable, "-m", "benchmarks.bench_encode", "--collection", collection,
               "--calls", str(calls), "--batch-sizes", batch_sizes,
               "--worker", runtime]  # fmt: skip
        got = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=WORKER_ENV,
                                        check=True).stdout.strip().splitlines()[-1])  # fmt: skip
        for bs in sizes:
            times[runtime][bs] += got[str(bs)]
    for bs in sizes:
        result["calls"][bs] = {r: {"p50_ms": 1e3 * float(np.percentile(times[r][bs], 50)),
                                   "p95_ms": 1e3 * float(np.percentile(times[r][bs], 95))}
                               for r in RUNTIMES}  # fmt: skip
    result["load_end"] = load_avg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [f"## Caption encoding on the CPU: torch against ONNX Runtime ('{collection}')", "",
             f"{result['machine']}; load average {result['load_start']} -> "
             f"{result['load_end']}; 2 × {calls} calls per batch size and runtime, each "
             "runtime in its own process (torch, ONNX Runtime, torch, ONNX Runtime).", "",
             "| captions per call | torch p50 ms | p95 | ONNX Runtime p50 ms | p95 | × |",
             "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for bs, row in result["calls"].items():
        t, o = row["torch"], row["onnx"]
        lines.append(f"| {bs} | {t['p50_ms']:.2f} | {t['p95_ms']:.2f} | {o['p50_ms']:.2f} | "
                     f"{o['p95_ms']:.2f} | {t['p50_ms'] / o['p50_ms']:.1f} |")  # fmt: skip
    a = result["agreement"]
    lines += [
        "",
        f"Over {a['captions']} captions: dense vectors within {a['max_abs_dense']:.1e} "
        f"of torch's, hash-head outputs within {a['max_abs_head']:.1e}, "
        f"{a['sign_flips_where_head_above_1e-4']} sign bits flipped where |head| > 1e-4.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
