"""DiskANN in its own process and venv (diskannpy pins numpy 1.25): builds an index, or opens one
and answers queries, over two pipes from `benchmarks.peers.DiskAnn`.

    /work/venv-diskann/bin/python benchmarks/diskann_worker.py READ_FD WRITE_FD

Each request is one JSON line on READ_FD, followed by `nbytes` raw bytes when it carries an
array (float32 queries); each answer is one JSON line on WRITE_FD, followed by raw int64 ids
when it carries them. DiskANN's own log goes to stdout/stderr, apart from the protocol.
Per-query latency is timed here, around the library's search call alone (no pipe, no copy).
Imports nothing from the product: it runs under another numpy.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import time

import diskannpy
import numpy as np


def resident() -> tuple[int, int]:
    """(VmRSS, RssFile) after returning freed heap to the OS (as benchmarks.rss_probe
    measures)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return tuple(int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssFile"))


def evict(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def build(req: dict) -> dict:
    start = time.perf_counter()
    diskannpy.build_disk_index(
        data=req["data"], distance_metric="l2", index_directory=req["dir"],
        complexity=req["L"], graph_degree=req["R"],
        search_memory_maximum=req["search_gb"], build_memory_maximum=req["build_gb"],
        num_threads=req["threads"], vector_dtype=np.float32,
    )  # fmt: skip
    return {"build_s": time.perf_counter() - start}


class Worker:
    def __init__(self, rfd: int, wfd: int) -> None:
        self.inp = os.fdopen(rfd, "rb")
        self.out = os.fdopen(wfd, "wb")
        self.index = None
        np.argsort(np.random.default_rng(0).standard_normal((64, 4096)), axis=1)  # warm numpy
        self.base = resident()  # before the index: the growth is the index's own

    def answer(self, head: dict, ids: np.ndarray | None = None) -> None:
        if ids is not None:
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            head = head | {"shape": list(ids.shape), "nbytes": ids.nbytes}
        self.out.write(json.dumps(head).encode() + b"\n")
        if ids is not None:
            self.out.write(ids.tobytes())
        self.out.flush()

    def queries(self, req: dict) -> np.ndarray:
        data = self.inp.read(req["nbytes"])
        return np.frombuffer(data, dtype=np.float32).reshape(req["shape"])

    def search(self, req: dict, q: np.ndarray) -> np.ndarray:
        if len(q) == 1:
            return self.index.search(q[0], req["k"], req["L"], req["W"]).identifiers[None]
        found = self.index.batch_search(q, req["k"], req["L"], req["threads"], req["W"])
        return found.identifiers

    def serve(self) -> None:
        for line in self.inp:
            req = json.loads(line)
            op = req["op"]
            if op == "quit":
                return
            if op == "build":
                self.answer(build(req))
            elif op == "open":
                self.index = diskannpy.StaticDiskIndex(
                    index_directory=req["dir"], num_threads=req["threads"],
                    num_nodes_to_cache=req["cache_nodes"])  # fmt: skip
                self.answer({"ok": True})
            elif op == "rss":
                rss, file = resident()
                self.answer({"rss_bytes": rss - self.base[0], "file_bytes": file - self.base[1]})
            elif op == "search":
                self.answer({}, self.search(req, self.queries(req)))
            elif op == "latency":
                self.answer({"seconds": self.latency(req, self.queries(req))})
            else:
                self.answer({"error": f"unknown op {op}"})

    def latency(self, req: dict, q: np.ndarray) -> list[float]:
        """Seconds of each single-query search; the files evicted before each when asked."""
        self.index.search(q[0], req["k"], req["L"], req["W"])  # warm-up, as per_query does
        out = []
        for row in q:
            if req["evict"]:
                evict(req["evict"])
            start = time.perf_counter()
            self.index.search(row, req["k"], req["L"], req["W"])
            out.append(time.perf_counter() - start)
        return out


if __name__ == "__main__":
    Worker(int(sys.argv[1]), int(sys.argv[2])).serve()
