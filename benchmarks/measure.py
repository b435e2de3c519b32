"""Measuring helpers shared by the benchmarks: latency, throughput, recall, resident memory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from meet_milvus.evaluation import topk_overlap as recall_at_k  # noqa: F401 (the benchmarks' name)


def kept(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-k still among a stage's candidates (any depth)."""
    return float(np.mean([np.isin(t, f).mean() for f, t in zip(found, truth, strict=True)]))


def needed(ranked: np.ndarray, truth: np.ndarray, share: float = 0.95) -> int:
    """Candidates (a prefix of each query's ranked list) that hold `share` of the exact top-k,
    pooled over the queries: the smallest depth d with kept(ranked[:, :d]) >= share; -1 when
    even the whole list does not."""
    missing = np.iinfo(np.int64).max
    pos = np.full(truth.shape, missing, dtype=np.int64)
    for q, (row, t) in enumerate(zip(ranked, truth, strict=True)):
        where = {int(i): p for p, i in enumerate(row.tolist())}
        pos[q] = [where.get(int(i), missing) for i in t]
    depths = np.sort(pos.reshape(-1))
    depth = depths[int(np.ceil(share * len(depths))) - 1]
    return -1 if depth == missing else int(depth) + 1


def per_query(fn: Callable[[np.ndarray], object], n: int) -> dict:
    """p50/p95/mean latency in ms of `fn` called with one query index at a time."""
    fn(np.arange(1))  # warm-up (caches, connections)
    lat = []
    for i in range(n):
        start = time.perf_counter()
        fn(np.array([i]))
        lat.append(time.perf_counter() - start)
    return {
        "p50_ms": 1e3 * float(np.percentile(lat, 50)),
        "p95_ms": 1e3 * float(np.percentile(lat, 95)),
        "mean_ms": 1e3 * float(np.mean(lat)),
        "latency_queries": n,
    }


def batched(fn: Callable[[np.ndarray], np.ndarray], n: int, batch: int) -> tuple[np.ndarray, dict]:
    """All `n` queries in calls of `batch`: the concatenated result and queries per second."""
    parts, start = [], time.perf_counter()
    for lo in range(0, n, batch):
        parts.append(fn(np.arange(lo, min(n, lo + batch))))
    seconds = time.perf_counter() - start
    return np.concatenate(parts), {"qps": n / seconds, "batch": batch, "batch_seconds": seconds}


def rss_bytes(pid: int | None = None, field: str = "VmRSS") -> int:
    """Resident set size of a process (VmRSS: anonymous and file-backed pages it maps), or
    another field of /proc/PID/status (RssFile: the file-backed part, page cache it maps)."""
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def tree_rss(pid: int, field: str = "VmRSS") -> int:
    """RSS of a process and all its descendants (a server may run under a launcher); `field`
    as in `rss_bytes` (RssAnon: its own memory, no page cache)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += rss_bytes(p, field)
        except (OSError, RuntimeError):
            continue  # exited meanwhile
        todo += children.get(p, [])
    return total


def settle_rss(pid: int, seconds: float = 4.0, field: str = "VmRSS") -> int:
    """A server's RSS (its whole process tree) once it stops moving: Milvus frees load buffers
    a little after a load."""
    time.sleep(seconds)
    return tree_rss(pid, field)


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextmanager
def threads(n: int):
    """Run the block with `n` threads in faiss (OpenMP), torch and the BLAS numpy uses."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    before = (faiss.omp_get_max_threads(), torch.get_num_threads())
    faiss.omp_set_num_threads(n)
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        faiss.omp_set_num_threads(before[0])
        torch.set_num_threads(before[1])


def probe_rss(spec: dict, timeout: float = 1800) -> dict:
    """Run `benchmarks.rss_probe` with `spec` in a fresh process: what the method holds
    resident once opened and warmed up (its RSS growth over a process that imported the same
    modules), in bytes."""
    cmd = [sys.executable, "-m", "benchmarks.rss_probe", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"rss probe {spec.get('method')}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report(lines: list[str], result: dict, out: Path | None) -> None:
    """Prints the markdown and, with `out`, writes OUT.md and OUT.json (every figure)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(text)
